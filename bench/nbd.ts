/**
 * NBD benchmark: the same image served by Haven (`haven nbd serve`), qemu-nbd and nbdkit's file
 * plugin, one after the other in one run, each over a unix socket (or TCP on 127.0.0.1 with
 * `--transport tcp`), measured with the same clients:
 * nbdcopy for sequential read and write, fio's nbd engine for 4 KiB random read and write at
 * queue depths 16 and 64, and the server's peak resident set.
 *
 * Data: `target.raw` (served, writable) and `source.raw` (what the sequential write copies in)
 * are fully allocated files of non-zero data, so every write overwrites allocated blocks in place,
 * the same for all three servers (like a VM's preallocated disk); neither file is sparse. Both
 * are read once before a server's runs so that they are in the page cache; dirty pages are
 * synced after a server's write runs so that writeback does not spill into the next server's runs.
 *
 * The random I/O and memory rows run each server once, in turn. The sequential rows run in
 * rounds (`--repeat`, default 3) with the order rotating, a fresh server per turn and the page
 * cache equalised before each (bench/lib/seq-rounds.ts, shared with scripts/nbd-seq-compare.mjs):
 * medians per server, and the median of the per-round ratios to nbdkit as a note.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { run, freePort, HAVEN_BIN } from '../test/support/proc.js';
import { runSpan } from './lib/results.js';
import type { Benchmark, BenchOptions, BenchResult, Metric } from './lib/types.js';
import { ensurePeerTools } from './lib/peers.js';
import { BenchServer } from './lib/server.js';
import { fioNbd, type FioResult } from './lib/fio.js';
import { median } from './lib/timing.js';
import { seqRounds, summarise } from './lib/seq-rounds.js';
import { createDataFile, fmtSize, syncAll, warmFile } from './lib/image.js';
import { environment } from './lib/env.js';
import { onInterrupt } from './lib/cleanup.js';

const HAVEN = 'Haven';
const QEMU = 'qemu-nbd';
const NBDKIT = 'nbdkit';
const EXPORT = 'bench';
const MiB = 1024 * 1024;

/** Where a server listens: a unix socket path or a TCP port on 127.0.0.1. */
type Endpoint = { path: string } | { port: number; host: string };

/** How one server is started; every server serves `image` read-write at `at`. */
interface ServerSpec {
  subject: string;
  /** Command lines to try in order: the first one that starts and listens is measured. */
  commands(image: string, at: Endpoint): Array<{ cmd: string; args: string[] }>;
  /** Throws with a short reason when the server cannot be run at all. */
  precheck?(): Promise<void>;
}

const NBDKIT_THREADS = 16;

const servers: ServerSpec[] = [
  {
    subject: HAVEN,
    commands: (image, at) => [
      {
        cmd: process.execPath,
        args: [
          HAVEN_BIN,
          'nbd',
          'serve',
          image,
          ...('path' in at ? ['--socket', at.path] : ['--listen', `${at.host}:${at.port}`]),
          '--name',
          EXPORT,
        ],
      },
    ],
    async precheck() {
      let out: string;
      try {
        const r = await run(process.execPath, [HAVEN_BIN, 'nbd', 'serve', '--help'], { timeout: 20000 });
        out = r.stdout + r.stderr;
      } catch (e) {
        out = (e as Error).message;
      }
      if (!/nbd serve/.test(out)) throw new Error('`haven nbd serve` is not available in this build');
    },
  },
  {
    subject: QEMU,
    // --shared=8: up to 8 clients (nbdcopy opens 4 with multi-conn); -t: survive disconnects;
    // --cache=writeback: the page cache, like the others. --aio=io_uring measured 1.5-3x faster
    // than --aio=threads on sequential read and random read here (threads is the fallback where
    // io_uring is unavailable); --cache=none --aio=native is O_DIRECT, skipping the page cache
    // the others use, and measured slowest.
    commands: (image, at) =>
      ['io_uring', 'threads'].map((aio) => ({
        cmd: 'qemu-nbd',
        args: [
          '-f',
          'raw',
          '-x',
          EXPORT,
          ...('path' in at ? [`--socket=${at.path}`] : ['-b', at.host, '-p', String(at.port)]),
          '-t',
          '--shared=8',
          '--cache=writeback',
          `--aio=${aio}`,
          image,
        ],
      })),
  },
  {
    subject: NBDKIT,
    // -f: foreground (the pid we measure is the server); -t: worker threads (16 is nbdkit's
    // default, stated for the record); the file plugin with its default page-cache mode.
    commands: (image, at) => [
      {
        cmd: 'nbdkit',
        args: [
          '-f',
          ...('path' in at ? ['-U', at.path] : ['-i', at.host, '-p', String(at.port)]),
          '--exit-with-parent',
          '-t',
          String(NBDKIT_THREADS),
          'file',
          image,
        ],
      },
    ],
  },
];

type MetricKey =
  | 'seq-read'
  | 'seq-write'
  | 'randread-qd16'
  | 'randread-qd64'
  | 'randwrite-qd16'
  | 'randwrite-qd64'
  | 'rss-2x-qd64'
  | 'peak-rss';

const DEPTHS = [16, 64] as const;
/** The memory phase's request sizes: large requests are what fill a server's buffers. */
const RSS_BS = '4k-1m';

function newMetrics(subjects: string[], rounds: number, runtime: number): Record<MetricKey, Metric> {
  const values = () => Object.fromEntries(subjects.map((s) => [s, null])) as Record<string, number | null>;
  const seq = (key: MetricKey, label: string): Metric => ({
    key,
    label,
    unit: 'GB/s',
    better: 'higher',
    values: values(),
    samples: {},
    method:
      `nbdcopy: median of ${rounds} interleaved rounds (order rotating, a fresh server per turn, ` +
      'sync and both files read before each), one whole-image copy per round (4 connections)',
    target: { kind: 'ratio', peer: NBDKIT, min: 1.0 },
  });
  const rand = (key: MetricKey, label: string): Metric => ({
    key,
    label,
    unit: 'k IOPS',
    better: 'higher',
    values: values(),
    method: `fio --ioengine=nbd: one ${runtime} s time-based job per depth`,
    target: { kind: 'ratio', peer: QEMU, min: 1.0 },
  });
  return {
    'seq-read': seq('seq-read', 'sequential read'),
    'seq-write': seq('seq-write', 'sequential write'),
    'randread-qd16': rand('randread-qd16', '4K random read QD16'),
    'randread-qd64': rand('randread-qd64', '4K random read QD64'),
    'randwrite-qd16': rand('randwrite-qd16', '4K random write QD16'),
    'randwrite-qd64': rand('randwrite-qd64', '4K random write QD64'),
    'rss-2x-qd64': {
      key: 'rss-2x-qd64',
      label: 'peak RSS, 2 clients QD64',
      unit: 'MiB',
      better: 'lower',
      values: values(),
      method: `peak RSS, 2 clients QD64: VmHWM of a fresh server after fio randrw ${RSS_BS} with 2 jobs at QD64 for ${runtime} s`,
      target: { kind: 'max', value: 64 },
    },
    'peak-rss': {
      key: 'peak-rss',
      label: 'server peak RSS',
      unit: 'MiB',
      better: 'lower',
      values: values(),
      method: 'peak RSS: VmHWM of the server process read just before it is stopped',
      target: { kind: 'max', value: 150 },
    },
  };
}

async function runNbd(opts: BenchOptions): Promise<BenchResult> {
  const startedAt = new Date();
  const { size, runtime, repeat, log } = opts;
  ensurePeerTools(
    [
      { command: 'qemu-nbd', pkg: 'qemu-utils' },
      { command: 'nbdkit', pkg: 'nbdkit' },
      { command: 'nbdcopy', pkg: 'libnbd-bin' },
      { command: 'fio', pkg: 'fio' },
    ],
    opts.install,
    log,
  );
  const subjects = servers.map((s) => s.subject);
  const unknown = (opts.only ?? []).filter((o) => !subjects.some((s) => s.toLowerCase() === o));
  if (unknown.length)
    throw new Error(`unknown subject(s) ${unknown.join(', ')}; known: ${subjects.join(', ')}`);
  const selected = servers.filter((s) => !opts.only || opts.only.includes(s.subject.toLowerCase()));
  const errors: Record<string, string> = {};
  for (const s of servers) if (!selected.includes(s)) errors[s.subject] = 'skipped (--only)';
  // Sequential rounds: --repeat, or 3 (also with --quick: each round is short there).
  const rounds = opts.repeatGiven ? repeat : 3;
  const metrics = newMetrics(subjects, rounds, runtime);
  const raw: Record<string, unknown> = {};
  const commands: Record<string, string> = {};
  /** The command line each server started with, reused for its sequential rounds. */
  const chosen = new Map<ServerSpec, { cmd: string; args: string[] }>();
  /** Each server's peak resident set over all its processes (one per phase and round), bytes. */
  const peaks: Record<string, number> = {};
  const notePeak = (subject: string, s: BenchServer | undefined) => {
    const v = s?.peakRss();
    if (v != null) peaks[subject] = Math.max(peaks[subject] ?? 0, v);
  };

  const dir = mkdtempSync(join(opts.workdir, 'haven-bench-nbd-'));
  const target = join(dir, 'target.raw');
  const source = join(dir, 'source.raw');
  const socket = join(dir, 'nbd.sock');
  const at: Endpoint =
    opts.transport === 'tcp' ? { host: '127.0.0.1', port: await freePort() } : { path: socket };
  const uri =
    'path' in at ? `nbd+unix:///${EXPORT}?socket=${at.path}` : `nbd://${at.host}:${at.port}/${EXPORT}`;
  // Bound on one whole-image copy (a server slower than 100 MB/s is failing, not slow), so that
  // a hung server costs under a minute rather than stalling the run.
  const copyTimeoutMs = Math.round(30000 + (size / 100e6) * 1000);
  const notes: string[] = [];
  const unregisterDir = onInterrupt(() => rmSync(dir, { recursive: true, force: true }));

  try {
    log(`creating two ${fmtSize(size)} data files in ${dir}`);
    const t0 = Date.now();
    createDataFile(target, size);
    createDataFile(source, size);
    await syncAll();
    log(`  done in ${((Date.now() - t0) / 1000).toFixed(1)} s`);

    for (const spec of selected) {
      const subjectRaw: Record<string, unknown> = {};
      raw[spec.subject] = subjectRaw;
      let server: BenchServer | undefined;
      try {
        await spec.precheck?.();
        for (const { cmd, args } of spec.commands(target, at)) {
          rmSync(socket, { force: true });
          const line = [cmd === process.execPath ? 'node' : cmd, ...args].join(' ');
          log(`${spec.subject}: starting ${line}`);
          try {
            server = await BenchServer.start(spec.subject, cmd, args, at);
            commands[spec.subject] = line;
            chosen.set(spec, { cmd, args });
            break;
          } catch (e) {
            log(`${spec.subject}: did not start: ${(e as Error).message.split('\n').slice(0, 3).join(' ')}`);
            errors[spec.subject] = (e as Error).message;
          }
        }
        if (!server) throw new Error(errors[spec.subject] ?? 'server did not start');
        delete errors[spec.subject];
        const alive = server;
        const check = () => {
          if (!alive.alive()) throw new Error(`server exited:\n${alive.output().slice(-2000)}`);
        };

        warmFile(target);
        // Memory first, on the fresh server: its peak over two clients with many large requests in flight.
        const mem = await fioNbd({ uri, rw: 'randrw', bs: RSS_BS, iodepth: 64, runtime, numjobs: 2 });
        subjectRaw['rss-2x-qd64'] = mem;
        const hwm = server.peakRss();
        if (hwm != null) {
          metrics['rss-2x-qd64'].values[spec.subject] = hwm / MiB;
          log(`${spec.subject}: peak RSS after 2 clients at QD64: ${(hwm / MiB).toFixed(1)} MiB`);
        }
        await syncAll();
        check();

        for (const rw of ['randread', 'randwrite'] as const) {
          for (const depth of DEPTHS) {
            const key = `${rw}-qd${depth}` as MetricKey;
            const r: FioResult = await fioNbd({ uri, rw, bs: '4k', iodepth: depth, runtime });
            metrics[key].values[spec.subject] = r.iops / 1000;
            subjectRaw[key] = r;
            log(
              `${spec.subject}: ${key} ${(r.iops / 1000).toFixed(1)} k IOPS, mean ${r.meanLatencyUs.toFixed(0)} µs`,
            );
            check();
          }
        }
        await syncAll();
      } catch (e) {
        const msg = (e as Error).message;
        errors[spec.subject] = msg;
        log(`${spec.subject}: error: ${msg.split('\n')[0]}`);
      } finally {
        // Peak RSS even after a failed run: the peak up to the failure is still worth seeing.
        notePeak(spec.subject, server);
        await server?.stop();
        rmSync(socket, { force: true });
      }
    }

    // Sequential rows: interleaved rounds in rotating order, a fresh server per turn, the page
    // cache equalised before each (bench/lib/seq-rounds.ts), for the servers that ran above.
    const seqSpecs = selected.filter((s) => chosen.has(s) && !errors[s.subject]);
    log(`sequential: ${rounds} rounds of ${seqSpecs.map((s) => s.subject).join(', ')}, order rotating`);
    const seq = await seqRounds({
      rounds,
      source,
      target,
      size,
      timeoutMs: copyTimeoutMs,
      entries: seqSpecs.map((spec) => ({
        name: spec.subject,
        async start() {
          rmSync(socket, { force: true });
          const { cmd, args } = chosen.get(spec)!;
          const server = await BenchServer.start(spec.subject, cmd, args, at);
          return {
            uri,
            pid: server.pid,
            async stop() {
              const alive = server.alive();
              notePeak(spec.subject, server);
              await server.stop();
              rmSync(socket, { force: true });
              if (!alive) throw new Error(`server exited:\n${server.output().slice(-2000)}`);
            },
          };
        },
      })),
      onSample: (name, s) =>
        log(
          `round ${s.round} ${name}: sequential write ${s.write.toFixed(2)} GB/s, read ${s.read.toFixed(2)} GB/s`,
        ),
      onError: (name, r, e) => {
        errors[name] = `sequential round ${r}: ${e.message}`;
        log(`${name}: sequential round ${r}: error: ${e.message.split('\n')[0]}`);
      },
    });
    const perRound: Record<string, Record<string, number>> = {};
    for (const [op, key] of [
      ['write', 'seq-write'],
      ['read', 'seq-read'],
    ] as const) {
      for (const spec of seqSpecs) {
        const xs = seq.samples[spec.subject]!.map((s) => s[op]);
        if (!xs.length) continue;
        metrics[key].values[spec.subject] = median(xs);
        metrics[key].samples![spec.subject] = xs;
      }
      const ratios: string[] = [];
      for (const spec of seqSpecs) {
        if (spec.subject === NBDKIT) continue;
        const r = summarise(seq.samples, spec.subject, NBDKIT, op).perRoundRatio;
        if (Number.isNaN(r)) continue;
        (perRound[spec.subject] ??= {})[key] = r;
        ratios.push(`${spec.subject}/${NBDKIT} ${r.toFixed(2)}×`);
      }
      if (ratios.length) {
        const line = `sequential ${op}, median of ${rounds} per-round ratios: ${ratios.join(', ')}`;
        log(line);
        notes.push(line);
      }
    }
    raw['seq-rounds'] = seq.samples;
    raw['seq-per-round-ratio-median'] = perRound;
    for (const [subject, v] of Object.entries(peaks)) {
      metrics['peak-rss'].values[subject] = v / MiB;
      log(`${subject}: peak RSS ${(v / MiB).toFixed(1)} MiB`);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
    unregisterDir();
  }

  if (opts.quick || size < 2 * 1024 * MiB)
    notes.push(`image ${fmtSize(size)} and ${runtime} s runs: a development run, not the issue's 2 GiB`);
  return {
    name: 'nbd',
    title: 'NBD server: Haven vs qemu-nbd vs nbdkit',
    ...runSpan(startedAt),
    haven: HAVEN,
    subjects,
    errors,
    metrics: Object.values(metrics),
    settings: {
      imageBytes: size,
      image: 'fully allocated, non-zero data, in page cache; writes overwrite in place',
      transport: opts.transport === 'tcp' ? 'TCP 127.0.0.1' : 'unix socket',
      fioRuntimeSeconds: runtime,
      sequentialRounds: rounds,
      queueDepths: [...DEPTHS],
      commands,
    },
    environment: {
      ...environment({
        'qemu-nbd': ['--version'],
        nbdkit: ['--version'],
        nbdcopy: ['--version'],
        fio: ['--version'],
      }),
    },
    raw,
    notes,
  };
}

export const nbdBenchmark: Benchmark = {
  name: 'nbd',
  title: 'NBD server: Haven vs qemu-nbd vs nbdkit',
  description:
    'Serves the same image from Haven, qemu-nbd and nbdkit (file plugin) in turn over a unix socket (or TCP); ' +
    'measures nbdcopy sequential read and write, fio 4 KiB random read and write at QD 16 and 64, ' +
    "and each server's peak RSS.",
  run: runNbd,
};
