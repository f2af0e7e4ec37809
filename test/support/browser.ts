// Debian's Chromium driven by playwright-core (no browser download), for the console's tests:
// every console error and page error is collected, axe-core is injected into pages on demand.
import { mkdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { chromium, type Browser, type BrowserContext, type Page } from 'playwright-core';

export const CHROMIUM = process.env.HAVEN_CHROMIUM ?? '/usr/bin/chromium';
const AXE = createRequire(import.meta.url).resolve('axe-core/axe.min.js');

/** Where tests write what a person looks at afterwards (screenshots). */
export function testOutput(name: string): string {
  const dir = join(process.env.HAVEN_TEST_OUTPUT ?? 'test-results', name);
  mkdirSync(dir, { recursive: true });
  return dir;
}

export async function launch(t: { after: (fn: () => unknown) => void }): Promise<Browser> {
  const b = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
  });
  t.after(() => b.close());
  return b;
}

export interface Tab {
  context: BrowserContext;
  page: Page;
  /** Console errors and page errors so far (a refusal the test provoked is a 4xx, listed apart). */
  errors: string[];
  refusals: string[];
}

/** A fresh browser profile at 1280×800; CSP is bypassed only so that axe-core can be injected. */
export async function tab(b: Browser, viewport = { width: 1280, height: 800 }): Promise<Tab> {
  const context = await b.newContext({ viewport, bypassCSP: true });
  const page = await context.newPage();
  const errors: string[] = [];
  const refusals: string[] = [];
  page.on('console', (m) => {
    if (m.type() !== 'error') return;
    // Chromium reports every 4xx answer to fetch as a console error: those the API gave on
    // purpose (401 before sign-in, 403 to a viewer, 400/404 to bad input) are refusals, not faults.
    if (/Failed to load resource: the server responded with a status of 4\d\d/.test(m.text()))
      refusals.push(m.text());
    else errors.push(`${m.text()} (${m.location().url})`);
  });
  page.on('pageerror', (e) => errors.push(`page error: ${e.message}`));
  return { context, page, errors, refusals };
}

export interface AxeViolation {
  id: string;
  impact: string;
  help: string;
  nodes: { target: string[] }[];
}

/** The axe-core scan of the page as it is: its serious and critical violations. */
export async function axe(page: Page): Promise<AxeViolation[]> {
  // Strings, not functions: the page's globals (window, document) are not Node's types.
  if (!(await page.evaluate("'axe' in window"))) await page.addScriptTag({ path: AXE });
  const r = (await page.evaluate("axe.run(document, { resultTypes: ['violations'] })")) as {
    violations: AxeViolation[];
  };
  return r.violations.filter((v) => v.impact === 'serious' || v.impact === 'critical');
}

/** Signs in on the console's page at `url` and waits for the dashboard. */
export async function signInPage(page: Page, url: string, user: string, password: string, ms = 60_000) {
  await page.goto(url);
  await page.getByLabel('User').fill(user);
  await page.getByLabel('Password').fill(password);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByRole('heading', { name: 'Dashboard' }).waitFor({ timeout: ms });
}

/** Adds the serious and critical axe violations of the page to `found`, named for the assertion. */
export async function scan(page: Page, where: string, found: string[]): Promise<void> {
  for (const v of await axe(page))
    found.push(
      `${where}: ${v.id} (${v.impact}) ${v.help}: ${v.nodes.map((n) => n.target.join(' ')).join(', ')}`,
    );
}
