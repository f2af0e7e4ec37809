// The console's replication, DR, plan and policy pages in a real browser (Debian's Chromium
// through playwright-core) against two real paired daemons: an operator of site A replicates a
// guest that streams writes to site B from the replication page (bad input refused first), and
// the dashboard's RPO chart fills with live samples; the VM's console log grows on its page
// without a reload and without polling; at site B a DR plan (rehearse the group, wait for an
// operator, clean up) runs from the plans page, its steps' progress shown live, and the Resume
// button lets it finish; the policies page shows compliance with its reasons; destructive
// operations (disable, migrate, takeover) ask, naming what is lost. Every page is
// scanned by axe-core (no serious or critical violation), the browser console shows no error,
// and screenshots of the new pages are written (1280×800, and the replication page narrow).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { launch, scan, signInPage, tab, testOutput } from '../support/browser.js';
import { pairedSites } from '../support/sites.js';
import { streamingVm } from '../support/replica-check.js';

const T = 60_000;

test('the console in Chromium: replication with a live RPO chart, a live console log, a plan resumed from the page, policies and compliance', async (t) => {
  const { a, b } = await pairedSites(t);
  const work = join(a.dir, '..');
  const pw = join(work, 'pw');
  writeFileSync(pw, 'console-password\n');
  for (const site of [a, b])
    await site.haven('user', 'add', 'otto', '--role', 'operator', '--password-file', pw);
  await streamingVm(a, 'app', 7, { rate: 4 });
  await a.haven('vm', 'start', 'app');
  const { url } = await a.info();
  const out = testOutput('console');
  const violations: string[] = [];

  const browser = await launch(t);
  const op = await tab(browser);
  const page = op.page;
  const t0 = performance.now();
  const step = (what: string) => t.diagnostic(`${((performance.now() - t0) / 1000).toFixed(1)} s: ${what}`);
  try {
    // When an error is reported, the step it came at (refusals the test provokes are 4xx, not errors).
    page.on('console', (m) => {
      if (m.type() === 'error' && !/status of 4\d\d/.test(m.text()))
        step(`console error: ${m.text()} at ${page.url()}`);
    });
    const polls: string[] = [];
    page.on('request', (r) => {
      if (/\/console-log(\?|$)/.test(r.url())) polls.push(r.url());
    });

    await signInPage(page, url, 'otto', 'console-password');
    await page.locator('.live.on').waitFor({ timeout: T });
    assert.equal(await page.locator('#h-rpo').count(), 0, 'no RPO chart while nothing replicates');

    // The VM's console log follows the guest without a reload: more write reports appear.
    await page.goto(`${url}/vms/app`);
    const consoleLog = page.locator('pre.console');
    await page.locator('[data-live="true"]').waitFor({ timeout: T });
    await page.locator('pre.console', { hasText: '"event":"write"' }).waitFor({ timeout: T });
    const writes = async () => ((await consoleLog.textContent()) ?? '').split('"event":"write"').length - 1;
    const before = await writes();
    // Strings, not functions: the page's globals are not Node's types.
    await page.waitForFunction(
      `(document.querySelector('pre.console')?.textContent ?? '').split('"event":"write"').length - 1 > ${before + 3}`,
      undefined,
      { timeout: T },
    );
    assert.deepEqual(polls, [], 'the page streams the console log; it does not poll it');
    step(`the console log of app grew from ${before} to ${await writes()} write reports, streamed`);
    await page.screenshot({ path: join(out, 'vm-console-live.png') });
    await scan(page, 'vm (live console)', violations);

    // Replicate from the replication page: bad input refused beside its field first.
    await page.getByRole('link', { name: 'Replication', exact: true }).click();
    await page.getByRole('heading', { name: 'Replicate a group' }).waitFor({ timeout: T });
    await scan(page, 'replication (empty)', violations);
    const enable = page.locator('#enable');
    await enable.getByLabel('Group', { exact: true }).fill('');
    await enable.getByLabel('RPO in seconds').fill('-1');
    await enable.getByRole('button', { name: 'Enable replication' }).click();
    await page.locator('#enable-group-error', { hasText: 'Group is required' }).waitFor({ timeout: T });
    await page
      .locator('#enable-rpo-error', { hasText: '"-1" is not a number of seconds more than 0' })
      .waitFor({ timeout: T });
    await enable.getByLabel('Group', { exact: true }).fill('g1');
    await enable.getByLabel(/^VMs/).fill('app, no/such');
    await enable.getByRole('button', { name: 'Enable replication' }).click();
    await page.locator('#enable-vms-error', { hasText: 'not a name: no/such' }).waitFor({ timeout: T });
    assert.equal(
      (await a.api<unknown[]>('GET', '/replication/groups')).length,
      0,
      'nothing sent while the form could tell',
    );
    // What only the API knows: a VM that does not exist, beside its field.
    await enable.getByLabel(/^VMs/).fill('app nosuchvm');
    await enable.getByLabel('RPO in seconds').fill('5');
    await enable.getByRole('button', { name: 'Enable replication' }).click();
    await page.locator('#enable-vms-error', { hasText: 'nosuchvm' }).waitFor({ timeout: T });
    await enable.getByLabel(/^VMs/).fill('app');
    await enable.getByRole('button', { name: 'Enable replication' }).click();
    await page.locator('#enable [role=status]').waitFor({ timeout: T });
    const row = page.locator('tr[data-group="g1"]');
    await row.locator('.badge', { hasText: 'replicating' }).waitFor({ timeout: T });
    step(
      'g1 enabled from the page (no group, RPO -1, a bad VM name, an unknown VM refused first); replicating',
    );

    // The dashboard's chart fills with live samples of the stream (every 2 s).
    await page.getByRole('link', { name: 'Dashboard', exact: true }).click();
    const chart = page.locator('figure.rpo[data-group="g1"]');
    await chart.waitFor({ timeout: T });
    await page.waitForFunction(
      `Number(document.querySelector('figure.rpo[data-group="g1"]')?.getAttribute('data-samples')) >= 4`,
      undefined,
      { timeout: T },
    );
    const label = (await chart.locator('svg').getAttribute('aria-label')) ?? '';
    assert.match(label, /^RPO of g1: [0-9.]+ s now, objective 5 s, at most [0-9.]+ s over the last/);
    assert.ok((await chart.locator('path.line').count()) >= 1, 'a line is drawn');
    assert.match((await chart.locator('figcaption').textContent()) ?? '', /RPO [0-9.]+ s \(objective 5 s\)/);
    step(`the dashboard's RPO chart: ${label}`);
    await page.screenshot({ path: join(out, 'dashboard-rpo.png') });
    await scan(page, 'dashboard (replication)', violations);

    await page.goto(`${url}/replication`);
    await row.locator('.badge', { hasText: 'replicating' }).waitFor({ timeout: T });
    await page.screenshot({ path: join(out, 'replication.png') });
    await scan(page, 'replication', violations);
    await row.getByRole('link', { name: 'g1' }).click();
    await page.getByRole('heading', { name: /Replication group g1/ }).waitFor({ timeout: T });
    await page
      .locator('#checkpoint')
      .getByLabel(/Checkpoint name/)
      .fill('before-upgrade');
    await page.getByRole('button', { name: 'Mark checkpoint' }).click();
    await page.locator('#checkpoint [role=status]').waitFor({ timeout: T });
    await page.getByRole('button', { name: 'Disable replication of g1' }).click();
    const dialog = page.getByRole('dialog');
    assert.match(
      (await dialog.textContent()) ?? '',
      /Disable replication of group g1 to site-b\? .*the replica at site-b stays at its last checkpoint/,
    );
    await scan(page, 'disable confirm', violations);
    await page.keyboard.press('Escape');
    await dialog.waitFor({ state: 'detached' });
    await page.screenshot({ path: join(out, 'replication-group.png') });
    await scan(page, 'replication group', violations);
    assert.equal((await a.api<unknown[]>('GET', '/replication/groups')).length, 1, 'cancelled: still there');

    await page.getByRole('link', { name: 'DR', exact: true }).click();
    await page.locator('[data-dr-group="g1"]').waitFor({ timeout: T });
    await page.getByRole('button', { name: 'Migrate g1 to site-b' }).click();
    assert.match(
      (await dialog.textContent()) ?? '',
      /Migrate group g1 to site-b\? Its VMs \(app\) are shut down here/,
    );
    await dialog.getByRole('button', { name: 'Cancel' }).click();
    await dialog.waitFor({ state: 'detached' });
    await page.screenshot({ path: join(out, 'dr.png') });
    await scan(page, 'dr', violations);
    step(
      'the group page (checkpoint marked; disable asked and cancelled) and the DR page (migrate asked, cancelled)',
    );

    // At site B, which holds the replica: the DR page offers the takeover, which asks, naming the
    // loss; a DR plan (rehearse, wait for the operator, clean up) is defined and run from the plans
    // page, its steps live, and the Resume button lets it finish.
    const bw = await tab(browser);
    const bp = bw.page;
    const bUrl = (await b.info()).url;
    await signInPage(bp, bUrl, 'otto', 'console-password');
    await bp.getByRole('link', { name: 'DR', exact: true }).click();
    const atB = bp.locator('[data-dr-group="g1"]');
    await atB.getByRole('button', { name: 'Take over g1' }).waitFor({ timeout: T });
    await atB.getByRole('button', { name: 'Take over g1' }).click();
    const bDialog = bp.getByRole('dialog');
    assert.match(
      (await bDialog.textContent()) ?? '',
      /Take over group g1 here\? .*site-a is fenced.*Every write made at site-a after that checkpoint is lost/,
    );
    await scan(bp, 'takeover confirm', violations);
    await bDialog.getByRole('button', { name: 'Cancel' }).click();
    await bDialog.waitFor({ state: 'detached' });
    await bp.screenshot({ path: join(out, 'dr-target.png') });
    await scan(bp, 'dr (target)', violations);
    assert.equal(
      (await b.api<{ takenOver?: unknown }[]>('GET', '/replication/groups'))[0]?.takenOver,
      undefined,
      'cancelled: not taken over',
    );

    await bp.getByRole('link', { name: 'Plans', exact: true }).click();
    await bp.getByRole('heading', { name: 'Define a plan' }).waitFor({ timeout: T });
    const planForm = bp.locator('#plan-create');
    await planForm.getByLabel('Plan name').fill('failover-drill');
    await planForm.getByLabel(/^Steps/).fill('[{"kind": "rehearse", "target": ');
    await planForm.getByRole('button', { name: 'Create plan' }).click();
    await bp.locator('#plan-create-steps-error', { hasText: 'not JSON' }).waitFor({ timeout: T });
    await planForm
      .getByLabel(/^Steps/)
      .fill(JSON.stringify([{ kind: 'script', path: join(work, 'nosuch.sh') }]));
    await planForm.getByRole('button', { name: 'Create plan' }).click();
    await bp.locator('#plan-create .error', { hasText: 'is not an executable file' }).waitFor({ timeout: T });
    const steps = [
      {
        kind: 'rehearse',
        target: 'g1',
        options: { heartbeat: 'console:"event":"write"', timeoutSeconds: 90 },
      },
      { kind: 'wait', message: 'check the rehearsed application answers' },
      { kind: 'cleanup', target: 'g1' },
    ];
    await planForm.getByLabel(/^Steps/).fill(JSON.stringify(steps));
    await planForm.getByRole('button', { name: 'Create plan' }).click();
    await bp.locator('tr[data-plan="failover-drill"]').waitFor({ timeout: T });
    await scan(bp, 'plans', violations);
    const vmsAtB = await b.api<{ name: string }[]>('GET', '/vms');
    await bp.getByRole('button', { name: 'Run failover-drill' }).click();
    await bp.getByRole('heading', { name: /Plan failover-drill/ }).waitFor({ timeout: T });
    await bp.locator('li[data-step="1"][data-state="running"]').waitFor({ timeout: T });
    await bp.screenshot({ path: join(out, 'plan-run-running.png') });
    const waitStep = bp.locator('li[data-step="2"][data-state="waiting"]');
    await waitStep.waitFor({ timeout: 120_000 });
    assert.equal(await bp.locator('li[data-step="1"]').getAttribute('data-state'), 'done');
    assert.equal(await bp.locator('li[data-step="3"]').getAttribute('data-state'), 'pending');
    assert.match(
      (await waitStep.textContent()) ?? '',
      /Waiting for an operator: check the rehearsed application answers/,
    );
    await bp.locator('pre.log', { hasText: 'waiting for an operator' }).waitFor({ timeout: T });
    const rehearsing = await b.api<{ name: string; state: string }[]>('GET', '/vms');
    assert.ok(
      rehearsing.some((v) => !vmsAtB.some((x) => x.name === v.name) && v.state === 'running'),
      `the rehearsal's VM runs at B while the plan waits: ${JSON.stringify(rehearsing)}`,
    );
    await bp.screenshot({ path: join(out, 'plan-run-waiting.png') });
    await scan(bp, 'plan run (waiting)', violations);
    step(
      'the DR plan at B: the rehearsal passed (its VM runs), step 2 waits with a Resume button, step 3 pending',
    );
    await waitStep.getByRole('button', { name: 'Resume' }).click();
    await bp.locator('h1 .badge', { hasText: 'succeeded' }).waitFor({ timeout: T });
    await bp.locator('li[data-step="3"][data-state="done"]').waitFor({ timeout: T });
    await bp.locator('pre.log', { hasText: 'resumed by otto' }).waitFor({ timeout: T });
    assert.deepEqual(
      (await b.api<{ name: string }[]>('GET', '/vms')).map((v) => v.name),
      vmsAtB.map((v) => v.name),
      'the cleanup step left no rehearsal VM',
    );
    const runs = await b.api<{ state: string; nextStep: number }[]>('GET', '/plan-runs');
    assert.deepEqual(
      runs.map((r) => [r.state, r.nextStep]),
      [['succeeded', 3]],
    );
    await bp.screenshot({ path: join(out, 'plan-run-done.png') });
    step('resumed from the page: the rehearsal cleaned up, the run succeeded, every step done');
    assert.deepEqual(bw.errors, [], 'no console error at B');
    await bw.context.close();

    // Policies: compliance with its reasons.
    const repo = join(work, 'repo');
    await a.haven('repo', 'init', '--repo', repo);
    await a.haven('volume', 'create', 'loose', '--size', '1M');
    await a.api('POST', '/policies', { name: 'gold', replication: { to: 'site-b', rpoSeconds: 30 } });
    await a.api('POST', '/policies/gold/assign', { vm: 'app' });
    await page.getByRole('link', { name: 'Policies', exact: true }).click();
    await page.getByRole('heading', { name: 'Define a policy' }).waitFor({ timeout: T });
    const pform = page.locator('#policy-create');
    await pform.getByLabel('Policy name').fill('silver/2');
    await pform.getByLabel(/^Back up into/).fill('relative/repo');
    await pform.getByRole('button', { name: 'Create policy' }).click();
    await page.locator('#policy-create-name-error', { hasText: 'no "/"' }).waitFor({ timeout: T });
    await page
      .locator('#policy-create-backupRepo-error', { hasText: 'an absolute path' })
      .waitFor({ timeout: T });
    await pform.getByLabel('Policy name').fill('silver');
    await pform.getByLabel(/^Back up into/).fill(repo);
    await pform.getByRole('button', { name: 'Create policy' }).click();
    // What only the API knows: a backup needs a schedule.
    await pform
      .locator('.error', { hasText: 'needs exactly one of a cron expression and an interval' })
      .waitFor({ timeout: T });
    await pform.getByLabel(/back up at/).fill('0 3 1 1 *');
    await pform.getByRole('button', { name: 'Create policy' }).click();
    await page.getByRole('rowheader', { name: 'silver' }).waitFor({ timeout: T });
    const assign = page.locator('#assign');
    await assign.getByLabel('Policy').selectOption('silver');
    await assign.getByLabel('To a').selectOption('volume');
    await assign.getByLabel('VM or volume name').fill('loose');
    await assign.getByRole('button', { name: 'Assign' }).click();
    const loose = page.locator('tr[data-object="loose"]');
    await loose.locator('.badge', { hasText: 'not compliant' }).waitFor({ timeout: T });
    assert.match((await loose.textContent()) ?? '', /no backup in repository .*repo yet/);
    const app = page.locator('tr[data-object="app"]');
    await app.locator('.badge', { hasText: /^compliant$/ }).waitFor({ timeout: T });
    await page.screenshot({ path: join(out, 'policies.png') });
    await scan(page, 'policies', violations);
    step(
      'policies: app compliant with gold (replicated), volume loose not compliant with silver (no backup yet)',
    );

    // Narrow: the replication page at 390 px.
    await page.setViewportSize({ width: 390, height: 800 });
    await page.goto(`${url}/replication`);
    await row.locator('.badge', { hasText: 'replicating' }).waitFor({ timeout: T });
    await page.screenshot({ path: join(out, 'replication-narrow.png') });
    await scan(page, 'replication narrow', violations);
    // Keyboard: the new pages are in the navigation, reached with Tab.
    await page.keyboard.press('Tab');
    await page.keyboard.press('Tab');
    const reached: string[] = [];
    for (let i = 0; i < 12; i++) {
      reached.push(String(await page.evaluate('document.activeElement?.textContent')));
      await page.keyboard.press('Tab');
    }
    for (const name of ['Replication', 'DR', 'Plans', 'Policies'])
      assert.ok(reached.includes(name), `Tab reaches ${name}: ${reached.join(', ')}`);

    assert.deepEqual(violations, [], 'axe-core: no serious or critical violation');
    assert.deepEqual(op.errors, [], 'no console error');
    t.diagnostic(`screenshots in ${out}; refusals the test provoked: ${op.refusals.length}`);
  } catch (err) {
    // A failure leaves what the page showed: a screenshot and its text.
    await page.screenshot({ path: join(out, 'console-dr-failure.png') }).catch(() => undefined);
    const text = await page
      .locator('main')
      .innerText()
      .catch(() => '');
    t.diagnostic(`the page at the failure (${page.url()}): ${text.slice(0, 3000)}`);
    throw err;
  }
  await op.context.close();
});
