/**
 * Ceph benchmark, NBD part: one RBD image on the throw-away single-node Ceph of scripts/ceph,
 * served in turn by Haven (an RBD pool's volume, `haven storage serve`: librbd in-process, the
 * volume's tap, Haven's NBD server) and by `qemu-nbd -f raw rbd:POOL/IMAGE` (QEMU's rbd driver),
 * over a unix socket, measured with the same clients: nbdcopy sequential write (the whole image,
 * which also fills it) and read, fio's nbd engine 4 KiB random read and write at QD16, and each
 * server's peak RSS. Both servers run without a client cache (Haven: rbd_cache off, decision
 * 0022; qemu-nbd: --cache=none), so every acknowledged write is on the OSD.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { run, HAVEN_BIN } from '../test/support/proc.js';
import { startCeph, type Ceph } from '../test/support/ceph.js';
import { runSpan } from './lib/results.js';
import type { Benchmark, BenchOptions, BenchResult, Metric } from './lib/types.js';
import { BenchServer } from './lib/server.js';
import { fioNbd } from './lib/fio.js';
import { medianOf, timeCommand } from './lib/timing.js';
import { createDataFile, fmtSize, warmFile } from './lib/image.js';
import { environment } from './lib/env.js';
import { onInterrupt } from './lib/cleanup.js';

const HAVEN = 'Haven';
const QEMU = 'qemu-nbd';
const VOLUME = 'bench';
const PREFIX = 'haven-';
const MiB = 1024 * 1024;
const DEPTH = 16;

type Key = 'seq-write' | 'seq-read' | 'randread-qd16' | 'randwrite-qd16' | 'peak-rss';

function newMetrics(repeat: number, runtime: number): Record<Key, Metric> {
  const values = () => ({ [HAVEN]: null, [QEMU]: null }) as Record<string, number | null>;
  const seq = (key: Key, label: string): Metric => ({
    key,
    label,
    unit: 'MB/s',
    better: 'higher',
    values: values(),
    samples: {},
    method: `nbdcopy: median of ${repeat} whole-image copies`,
    target: { kind: 'ratio', peer: QEMU, min: 1.0 },
  });
  const rand = (key: Key, label: string): Metric => ({
    key,
    label,
    unit: 'k IOPS',
    better: 'higher',
    values: values(),
    method: `fio --ioengine=nbd: one ${runtime} s time-based job`,
    target: { kind: 'ratio', peer: QEMU, min: 1.0 },
  });
  return {
    'seq-write': seq('seq-write', 'sequential write'),
    'seq-read': seq('seq-read', 'sequential read'),
    'randread-qd16': rand('randread-qd16', '4K random read QD16'),
    'randwrite-qd16': rand('randwrite-qd16', '4K random write QD16'),
    'peak-rss': {
      key: 'peak-rss',
      label: 'server peak RSS',
      unit: 'MiB',
      better: 'lower',
      values: values(),
      method: 'VmHWM of the server process read just before it is stopped',
    },
  };
}

async function runCeph(opts: BenchOptions): Promise<BenchResult> {
  const startedAt = new Date();
  const { runtime, repeat, log } = opts;
  // Ceph on a shared 2-core machine: 256 MiB unless asked for more.
  const size = opts.sizeGiven ? opts.size : 256 * MiB;
  const metrics = newMetrics(repeat, runtime);
  const errors: Record<string, string> = {};
  const raw: Record<string, unknown> = {};
  const commands: Record<string, string> = {};
  const notes: string[] = [];
  const dir = mkdtempSync(join(opts.workdir, 'haven-bench-ceph-'));
  const socket = join(dir, 'nbd.sock');
  const site = join(dir, 'site');
  const source = join(dir, 'source.raw');
  let ceph: Ceph | undefined;
  const unregister = onInterrupt(() => {
    void ceph?.stop();
    rmSync(dir, { recursive: true, force: true });
  });
  try {
    log('starting a single-node Ceph (scripts/ceph)');
    ceph = await startCeph();
    const c = ceph;
    const haven = (...args: string[]) => run(process.execPath, [HAVEN_BIN, ...args, '--data', site]);
    await haven(
      'pool',
      'create',
      'ceph',
      '--type',
      'rbd',
      '--ceph-conf',
      c.conf,
      '--ceph-pool',
      c.pool,
      '--image-prefix',
      PREFIX,
    );
    await haven('volume', 'create', VOLUME, '--size', String(size), '--pool', 'ceph');
    createDataFile(source, size);
    warmFile(source);
    const image = `${c.pool}/${PREFIX}${VOLUME}`;
    const uri = (name: string) => `nbd+unix:///${name}?socket=${socket}`;
    const specs = [
      {
        subject: HAVEN,
        exportName: VOLUME,
        cmd: process.execPath,
        args: [HAVEN_BIN, 'storage', 'serve', '--data', site, '--socket', socket],
        // As scripts/start runs the daemon (docs/ceph.md): librbd's threads, one malloc arena each by default.
        env: { MALLOC_ARENA_MAX: process.env.MALLOC_ARENA_MAX ?? '4' },
      },
      {
        subject: QEMU,
        exportName: VOLUME,
        cmd: 'qemu-nbd',
        args: [
          '-f',
          'raw',
          '-x',
          VOLUME,
          `--socket=${socket}`,
          '-t',
          '--shared=8',
          '--cache=none',
          `rbd:${image}:conf=${c.conf}`,
        ],
        env: {},
      },
    ];
    const copyTimeoutMs = Math.round(60000 + (size / 20e6) * 1000);
    for (const spec of specs) {
      if (opts.only && !opts.only.includes(spec.subject.toLowerCase())) {
        errors[spec.subject] = 'skipped (--only)';
        continue;
      }
      const subjectRaw: Record<string, unknown> = {};
      raw[spec.subject] = subjectRaw;
      let server: BenchServer | undefined;
      try {
        rmSync(socket, { force: true });
        commands[spec.subject] = [spec.cmd === process.execPath ? 'node' : spec.cmd, ...spec.args].join(' ');
        log(`${spec.subject}: starting ${commands[spec.subject]}`);
        server = await BenchServer.start(
          spec.subject,
          spec.cmd,
          spec.args,
          { path: socket },
          { env: { ...c.env, ...spec.env } },
        );
        const u = uri(spec.exportName);
        const wr = await medianOf(
          repeat,
          async () => size / (await timeCommand('nbdcopy', [source, u], copyTimeoutMs)) / 1e6,
        );
        metrics['seq-write'].values[spec.subject] = wr.value;
        metrics['seq-write'].samples![spec.subject] = wr.samples;
        log(`${spec.subject}: sequential write ${wr.value.toFixed(0)} MB/s`);
        const rd = await medianOf(
          repeat,
          async () => size / (await timeCommand('nbdcopy', [u, 'null:'], copyTimeoutMs)) / 1e6,
        );
        metrics['seq-read'].values[spec.subject] = rd.value;
        metrics['seq-read'].samples![spec.subject] = rd.samples;
        log(`${spec.subject}: sequential read ${rd.value.toFixed(0)} MB/s`);
        for (const rw of ['randread', 'randwrite'] as const) {
          const r = await fioNbd({ uri: u, rw, bs: '4k', iodepth: DEPTH, runtime });
          metrics[`${rw}-qd16`].values[spec.subject] = r.iops / 1000;
          subjectRaw[`${rw}-qd16`] = r;
          log(
            `${spec.subject}: ${rw} QD${DEPTH} ${(r.iops / 1000).toFixed(2)} k IOPS, mean ${r.meanLatencyUs.toFixed(0)} µs`,
          );
        }
        if (!server.alive()) throw new Error(`server exited:\n${server.output().slice(-2000)}`);
      } catch (e) {
        errors[spec.subject] = (e as Error).message;
        log(`${spec.subject}: error: ${(e as Error).message.split('\n')[0]}`);
      } finally {
        const rss = server?.peakRss();
        if (rss != null) metrics['peak-rss'].values[spec.subject] = rss / MiB;
        await server?.stop();
      }
    }
  } finally {
    await ceph?.stop();
    rmSync(dir, { recursive: true, force: true });
    unregister();
  }
  notes.push(
    `Haven runs with MALLOC_ARENA_MAX=${process.env.MALLOC_ARENA_MAX ?? '4'}, as scripts/start runs the site daemon (docs/ceph.md); qemu-nbd with glibc's default`,
  );
  notes.push(
    `one ${fmtSize(size)} RBD image on a single-node Ceph (one OSD, BlueStore on a sparse file) on this machine; the servers take turns on it`,
  );
  return {
    name: 'ceph',
    title: 'RBD over NBD: Haven (RBD pool) vs qemu-nbd rbd:',
    ...runSpan(startedAt),
    haven: HAVEN,
    subjects: [HAVEN, QEMU],
    errors,
    metrics: Object.values(metrics),
    settings: {
      imageBytes: size,
      transport: 'unix socket',
      fioRuntimeSeconds: runtime,
      queueDepth: DEPTH,
      commands,
    },
    environment: {
      ...environment({
        'qemu-nbd': ['--version'],
        nbdcopy: ['--version'],
        fio: ['--version'],
        ceph: ['--version'],
      }),
    },
    raw,
    notes,
  };
}

export const cephRbdBenchmark: Benchmark = {
  name: 'ceph-rbd',
  title: 'RBD over NBD: Haven (RBD pool) vs qemu-nbd rbd:',
  description:
    'Serves one RBD image of the single-node Ceph from a Haven RBD pool and from qemu-nbd (rbd: driver) in turn; ' +
    'measures nbdcopy sequential write and read, fio 4 KiB random read and write at QD16, and peak RSS.',
  run: runCeph,
};
