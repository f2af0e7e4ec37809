/**
 * CLI benchmark: the whole process of a cheap command, as a user runs it. `haven pool list` and
 * a no-change incremental `haven backup volume:NAME --repo R` (nothing written since the last
 * backup), first offline with `--data DIR` (the command opens the site in its own process and
 * speaks its API over a private socket), then through a running daemon (`--api`) on the same
 * data directory. One untimed run of each first (page cache; the per-user cache of the API's
 * compiled schemas, here in the benchmark's own directory).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { HAVEN_BIN, run } from '../test/support/proc.js';
import { environment } from './lib/env.js';
import { onInterrupt } from './lib/cleanup.js';
import { makeDiskImage } from './lib/image.js';
import { runSpan } from './lib/results.js';
import { BenchSite } from './lib/site.js';
import { median } from './lib/timing.js';
import type { Benchmark, BenchOptions, BenchResult, Metric } from './lib/types.js';

const OFFLINE = 'haven --data';
const DAEMON = 'haven --api';
/** What issue 14 asks of the whole no-change incremental; the same bound for a listing. */
const GOAL_SECONDS = 0.3;

async function runCli(opts: BenchOptions): Promise<BenchResult> {
  const startedAt = new Date();
  const { log } = opts;
  const subjects = [OFFLINE, DAEMON].filter((s) => !opts.only || opts.only.includes(s));
  const rounds = Math.max(10, opts.repeat);
  const values = () => Object.fromEntries(subjects.map((s) => [s, null])) as Record<string, number | null>;
  const metric = (key: string, label: string): Metric => ({
    key,
    label,
    unit: 's',
    better: 'lower',
    values: values(),
    samples: {},
    method: `median of ${rounds}`,
    target: { kind: 'max', value: GOAL_SECONDS },
  });
  const m = {
    list: metric('pool-list', 'haven pool list, whole process'),
    backup: metric('backup-no-change', 'no-change incremental backup of a volume, whole process'),
  };
  const errors: Record<string, string> = {};
  const dir = mkdtempSync(join(opts.workdir, 'haven-bench-cli-'));
  const unregister = onInterrupt(() => rmSync(dir, { recursive: true, force: true }));
  const site = new BenchSite(dir, 120_000);
  const repo = join(dir, 'repo');
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    HAVEN_LOG_LEVEL: 'warn',
    XDG_CACHE_HOME: join(dir, 'cache'),
  };
  delete env.HAVEN_DATA;
  const haven = (...args: string[]) =>
    run(process.execPath, [HAVEN_BIN, ...args], { env, timeout: 120_000 }).then((r) => r.stdout);
  const timed = async (args: string[]) => {
    const t0 = performance.now();
    await haven(...args);
    return (performance.now() - t0) / 1000;
  };
  const measure = async (subject: string, extra: string[]) => {
    const cases: [Metric, string[]][] = [
      [m.list, ['pool', 'list', ...extra]],
      [m.backup, ['backup', 'volume:bench', '--repo', repo, ...extra]],
    ];
    for (const [, args] of cases) await timed(args); // untimed: caches
    for (const [metricOf, args] of cases) {
      const samples: number[] = [];
      for (let i = 0; i < rounds; i++) samples.push(await timed(args));
      metricOf.values[subject] = median(samples);
      metricOf.samples![subject] = samples;
      log(`${subject}: ${args.slice(0, 2).join(' ')} ${median(samples).toFixed(3)} s (median of ${rounds})`);
    }
  };
  try {
    const image = join(dir, 'disk.img');
    makeDiskImage(image, Math.min(opts.size, 256 * 2 ** 20));
    await haven('volume', 'import', image, '--name', 'bench', '--data', site.data);
    rmSync(image);
    await haven('repo', 'init', '--repo', repo);
    await haven('backup', 'volume:bench', '--repo', repo, '--data', site.data);
    if (subjects.includes(OFFLINE)) await measure(OFFLINE, ['--data', site.data]);
    if (subjects.includes(DAEMON)) {
      const daemon = await site.start();
      try {
        // The daemon's own data directory: its api.json and token, as a user of that site finds them.
        env.HAVEN_DATA = site.data;
        await measure(DAEMON, []);
      } catch (err) {
        errors[DAEMON] = (err as Error).message;
      } finally {
        delete env.HAVEN_DATA;
        await daemon.stop();
      }
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
    unregister();
  }
  return {
    name: 'cli',
    title: 'CLI: whole-process time of cheap commands, offline (--data) and through a daemon',
    ...runSpan(startedAt),
    haven: OFFLINE,
    subjects,
    errors,
    metrics: Object.values(m),
    settings: {
      rounds,
      volume: 'a 256 MiB volume (40% zeros, 30% random, 30% repeated), backed up once before',
      backup: 'nothing written since the previous backup (reads 0 B)',
    },
    environment: environment({}),
    notes: [
      'each run is a new process: Node start, module loading, opening the site (--data) or connecting (--api), the request, exit',
      'the machine is shared: compare the columns of one run',
    ],
  };
}

export const cliBenchmark: Benchmark = {
  name: 'cli',
  title: 'CLI: whole-process time of cheap commands',
  description:
    'haven pool list and a no-change incremental backup, each a whole process, offline with --data (a site opened in the command) and through a daemon.',
  run: runCli,
};
