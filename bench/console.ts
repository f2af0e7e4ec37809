/**
 * Console benchmark: a site daemon with 1,000 defined VMs (not running), 100 jobs in flight (plan
 * runs blocked at an operator wait) and a backup streaming progress, watched in headless Chromium
 * (Debian's, through playwright-core). It measures the time to the dashboard's first complete
 * render (every VM row and every running job shown; goal ≤ 1 s), the latency from the event
 * stream delivering a job's progress to the page showing it (goal ≤ 500 ms; the stream itself
 * coalesces a job's updates for up to 100 ms before that), the bytes the console's assets cost a
 * first visit, and the daemon's CPU while 10 browsers watch the dashboard.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { chromium, type Browser } from 'playwright-core';
import { BenchSite } from './lib/site.js';
import { runSpan } from './lib/results.js';
import { environment } from './lib/env.js';
import { onInterrupt } from './lib/cleanup.js';
import { median } from './lib/timing.js';
import { signIn } from '../test/support/console-client.js';
import { run } from '../test/support/proc.js';
import type { Benchmark, BenchOptions, BenchResult, Metric } from './lib/types.js';

const HAVEN = 'haven';
const CHROMIUM = process.env.HAVEN_CHROMIUM ?? '/usr/bin/chromium';

function cpuTicks(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return Number(f[11]) + Number(f[12]);
}

async function runConsole(opts: BenchOptions): Promise<BenchResult> {
  const startedAt = new Date();
  const { log } = opts;
  const vms = opts.quick ? 200 : 1000;
  const waiting = opts.quick ? 20 : 100;
  const watchers = 10;
  const cpuSeconds = opts.quick ? 3 : 10;
  const metric = (key: string, label: string, unit: string, extra: Partial<Metric> = {}): Metric => ({
    key,
    label,
    unit,
    better: 'lower',
    values: { [HAVEN]: null },
    ...extra,
  });
  const m = {
    render: metric(
      'first-render',
      `dashboard's first complete render (${vms} VMs, ${waiting + 1} jobs)`,
      'ms',
      {
        target: { kind: 'max', value: 1000 },
        method: 'median of 3, fresh page each, signed in',
      },
    ),
    latency: metric(
      'progress-latency',
      "a job's progress: stream delivery to the page showing it, p50",
      'ms',
      {
        target: { kind: 'max', value: 500 },
      },
    ),
    latency99: metric('progress-latency-max', 'the same, the worst seen', 'ms'),
    assets: metric('assets', "the console's assets on a first visit (gzip'd, as transferred)", 'KiB'),
    cpu: metric(
      'cpu-10',
      `daemon CPU while ${watchers} browsers watch the dashboard (${cpuSeconds} s)`,
      '% of a core',
    ),
  };
  const errors: Record<string, string> = {};
  const dir = mkdtempSync(join(opts.workdir, 'console-'));
  const site = new BenchSite(dir, 120_000);
  let browser: Browser | undefined;
  const unregister = onInterrupt(() => void site.stop());
  const notes: string[] = [];
  try {
    await site.start();
    const pw = join(dir, 'pw');
    writeFileSync(pw, 'bench-password\n');
    await site.haven('user', 'add', 'bench', '--role', 'operator', '--password-file', pw);
    log(`defining ${vms} VMs (a 1 MiB volume each)`);
    for (let i = 0; i < vms; i++) {
      const name = `vm${String(i).padStart(4, '0')}`;
      await site.api('POST', '/volumes', { name: `${name}-disk`, sizeBytes: 1024 * 1024 });
      await site.api('POST', '/vms', { name, disks: [{ volume: `${name}-disk` }] });
    }
    log(`${waiting} plan runs blocked at an operator wait (jobs in flight)`);
    for (let i = 0; i < waiting; i++) {
      await site.api('POST', '/plans', { name: `p${i}`, steps: [{ kind: 'wait', message: 'bench' }] });
      await site.api('POST', `/plans/p${i}/run`, {});
    }
    const img = join(dir, 'data.img');
    await run('dd', [
      'if=/dev/urandom',
      `of=${img}`,
      'bs=1M',
      `count=${opts.quick ? 128 : 512}`,
      'status=none',
    ]);
    await site.haven('volume', 'import', img, '--name', 'big');
    const repo = join(dir, 'repo');
    await site.haven('repo', 'init', '--repo', repo);
    const url = (JSON.parse(readFileSync(join(site.data, 'api.json'), 'utf8')) as { url: string }).url;
    const session = await signIn(url, 'bench', 'bench-password');
    const [cname, cvalue] = session.cookie.split('=') as [string, string];

    browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox', '--disable-gpu'] });
    const newPage = async () => {
      // bypassCSP: the bench's own probes are strings evaluated in the page (CSP forbids eval).
      const ctx = await browser!.newContext({ viewport: { width: 1280, height: 800 }, bypassCSP: true });
      await ctx.addCookies([{ name: cname, value: cvalue, url }]);
      return ctx.newPage();
    };
    const complete = `document.querySelectorAll('tr[data-vm]').length === ${vms} && document.querySelectorAll('#h-jobs + table tbody tr').length >= ${waiting}`;

    // First complete render, and the bytes of a first visit.
    const times: number[] = [];
    for (let i = 0; i < 3; i++) {
      const page = await newPage();
      let bytes = 0;
      page.on('response', (r) => {
        if (!r.url().includes('/api/')) bytes += Number(r.headers()['content-length'] ?? 0);
      });
      const t0 = Date.now();
      await page.goto(url);
      await page.waitForFunction(complete, undefined, { timeout: 60_000, polling: 'raf' });
      times.push(Date.now() - t0);
      if (i === 0) m.assets.values[HAVEN] = Math.round((bytes / 1024) * 10) / 10;
      await page.context().close();
    }
    m.render.samples = { [HAVEN]: times };
    m.render.values[HAVEN] = median(times);

    // Progress latency: the page marks when each job's percentage changes; the bench follows the
    // same stream and notes when each progress arrived.
    const page = await newPage();
    await page.goto(url);
    await page.waitForFunction(complete, undefined, { timeout: 60_000, polling: 'raf' });
    await page.evaluate(`(() => {
      window.seen = [];
      new MutationObserver(() => {
        for (const el of document.querySelectorAll('#h-jobs + table .pct')) {
          const p = Number(el.getAttribute('data-pct'));
          const id = el.closest('tr').getAttribute('data-job');
          if (el.dataset.was !== String(p)) { el.dataset.was = String(p); window.seen.push({ id, p, t: Date.now() }); }
        }
      }).observe(document.body, { subtree: true, childList: true, characterData: true, attributes: true });
    })()`);
    const arrived: { id: string; p: number; t: number }[] = [];
    const ac = new AbortController();
    const stream = fetch(`${url}/api/v1/events/stream`, {
      headers: { cookie: session.cookie },
      signal: ac.signal,
    }).then(async (res) => {
      const dec = new TextDecoder();
      let buf = '';
      for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
        buf += dec.decode(chunk, { stream: true });
        let k;
        while ((k = buf.indexOf('\n\n')) >= 0) {
          const msg = buf.slice(0, k);
          buf = buf.slice(k + 2);
          if (!msg.startsWith('event: job')) continue;
          const j = JSON.parse(msg.slice(msg.indexOf('data: ') + 6)) as {
            id: string;
            state: string;
            progress: { doneBytes: number; totalBytes: number };
          };
          const p =
            j.state === 'succeeded'
              ? 100
              : j.progress.totalBytes > 0
                ? Math.min(100, Math.floor((j.progress.doneBytes / j.progress.totalBytes) * 100))
                : 0;
          arrived.push({ id: j.id, p, t: Date.now() });
        }
      }
    });
    stream.catch(() => undefined);
    const job = await site.api<{ id: string }>('POST', '/volumes/big/backup', { repo });
    for (let i = 0; ; i++) {
      const j = await site.api<{ state: string }>('GET', `/jobs/${job.id}`);
      if (j.state !== 'running') break;
      await page.waitForTimeout(100);
      if (i > 3000) throw new Error('the backup did not end');
    }
    await page.waitForTimeout(300); // the last update's render
    const seen = (await page.evaluate('window.seen')) as { id: string; p: number; t: number }[];
    ac.abort();
    const lat: number[] = [];
    for (const a of arrived.filter((x) => x.id === job.id)) {
      const s = seen.find((x) => x.id === job.id && x.p === a.p && x.t >= a.t - 50);
      if (s) lat.push(Math.max(0, s.t - a.t));
    }
    lat.sort((a, b) => a - b);
    m.latency.samples = { [HAVEN]: lat };
    m.latency.values[HAVEN] = lat.length ? median(lat) : null;
    m.latency99.values[HAVEN] = lat.length ? lat[lat.length - 1]! : null;
    notes.push(
      `progress updates of the backup: ${arrived.filter((x) => x.id === job.id).length} delivered by the stream, ${lat.length} matched to a render (a percentage shown only once is matched once)`,
    );
    await page.context().close();

    // CPU with 10 browsers watching while a backup streams progress.
    const pages = [];
    for (let i = 0; i < watchers; i++) {
      const p = await newPage();
      await p.goto(url);
      await p.waitForFunction(complete, undefined, { timeout: 60_000, polling: 1000 });
      pages.push(p);
    }
    const c0 = cpuTicks(site.pid);
    const w0 = Date.now();
    await pages[0]!.waitForTimeout(cpuSeconds * 1000);
    const c1 = cpuTicks(site.pid);
    m.cpu.values[HAVEN] = Math.round((((c1 - c0) / 100) * 100 * 1000) / (Date.now() - w0)) / 1;
    notes.push(
      `CPU: ${watchers} pages each holding the dashboard and its event stream open, the ${waiting} plan runs waiting; no job moving`,
    );
    for (const p of pages) await p.context().close();
  } catch (err) {
    errors[HAVEN] = (err as Error).message;
  } finally {
    await browser?.close().catch(() => undefined);
    await site.stop();
    unregister();
    rmSync(dir, { recursive: true, force: true });
  }
  return {
    name: 'console',
    title: 'Web console: render, live updates, assets, daemon CPU with 10 browsers',
    ...runSpan(startedAt),
    haven: HAVEN,
    subjects: [HAVEN],
    errors,
    metrics: Object.values(m),
    settings: { vms, jobsInFlight: waiting + 1, watchers, cpuSeconds, chromium: CHROMIUM },
    environment: environment({}),
    notes: [
      'headless Debian Chromium on the same host as the daemon (2 cores shared): its rendering competes with the daemon',
      ...notes,
    ],
  };
}

export const consoleBenchmark: Benchmark = {
  name: 'console',
  title: 'Web console',
  description:
    "1,000 defined VMs and 100 jobs in flight: the dashboard's first complete render in headless Chromium, progress latency, asset size, daemon CPU with 10 browsers",
  run: runConsole,
};
