/**
 * Replication benchmark (issue 15): the two gateways of one consistency group (two volumes) over
 * mutual TLS on loopback, in one process for now (the site daemons do not drive replication yet).
 * RPO while a writer writes random 64 KiB blocks at fixed rates; the writer's throughput and p99
 * latency with replication on and off; synchronous against asynchronous write latency; the
 * initial sync against nbdcopy of the same volumes between two `haven storage serve`; the bytes a
 * resync sends after 1% of the disks changed during an outage.
 */
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { StorageService, type TapDevice } from '../src/storage/index.js';
import { SourceGateway, TargetGateway, type SourceGatewayOptions } from '../src/protection/index.js';
import { FaultProxy } from '../test/support/fault-proxy.js';
import { HAVEN_BIN, run } from '../test/support/proc.js';
import { dialMutualTls, listenMutualTls, makeTestPki, type TestPki } from '../test/support/tls.js';
import { onInterrupt } from './lib/cleanup.js';
import { environment } from './lib/env.js';
import { fmtSize, keystream } from './lib/image.js';
import { ensurePeerTools } from './lib/peers.js';
import { runSpan } from './lib/results.js';
import { BenchServer } from './lib/server.js';
import type { Benchmark, BenchOptions, BenchResult, Metric } from './lib/types.js';

const HAVEN = 'haven';
const OFF = 'no replication';
const ASYNC = 'asynchronous';
const NBDCOPY = 'nbdcopy';
const MiB = 1024 * 1024;
const BLOCK = 64 * 1024;
const VOLUMES = ['a', 'b'];

const pct = (xs: number[], p: number) => {
  const s = [...xs].sort((x, y) => x - y);
  return s.length ? s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]! : NaN;
};

/** Waits for `ok`, saying every 10 s what it waits for and how things stand (`state`). */
async function until(
  what: string,
  ok: () => boolean,
  state: () => unknown,
  log: (m: string) => void,
  ms = 300_000,
): Promise<void> {
  const started = Date.now();
  let said = started;
  while (!ok()) {
    if (Date.now() - started > ms)
      throw new Error(`timed out waiting for ${what}: ${JSON.stringify(state())}`);
    if (Date.now() - said > 10_000) {
      said = Date.now();
      log(`waiting for ${what}: ${JSON.stringify(state())}`);
    }
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** Random 64 KiB writes over the taps at `bytesPerSecond` (0: as fast as they go) for `seconds`; latencies in ms. */
async function writeFor(taps: TapDevice[], seconds: number, bytesPerSecond: number, seed: number) {
  const rnd = keystream(seed);
  const data = rnd(BLOCK * 16);
  const latencies: number[] = [];
  const started = performance.now();
  let bytes = 0;
  let k = 0;
  while (performance.now() - started < seconds * 1000) {
    const pick = rnd(8);
    const tap = taps[pick[0]! % taps.length]!;
    const block = pick.readUInt32LE(1) % (tap.size / BLOCK);
    const t0 = performance.now();
    await tap.write(data.subarray((k++ % 16) * BLOCK, (k % 16) * BLOCK || data.length), block * BLOCK);
    latencies.push(performance.now() - t0);
    bytes += BLOCK;
    if (bytesPerSecond) {
      const due = started + (bytes / bytesPerSecond) * 1000;
      const wait = due - performance.now();
      if (wait > 0) await new Promise((r) => setTimeout(r, wait));
      else if (k % 32 === 0) await new Promise((r) => setImmediate(r));
    } else if (k % 32 === 0) await new Promise((r) => setImmediate(r));
  }
  const elapsed = (performance.now() - started) / 1000;
  return { latencies, mbPerSecond: bytes / 1e6 / elapsed };
}

/** Two sites' storage, the target gateway behind a mutual-TLS listener and a proxy, and a source gateway factory. */
async function sites(dir: string, pki: TestPki, size: number) {
  const src = StorageService.open(join(dir, 'source'));
  const dst = StorageService.open(join(dir, 'target'));
  for (const [s, prefix] of [
    [src, ''],
    [dst, 'r'],
  ] as const) {
    if (!s.listPools().length) s.createPool('p', {});
    for (const v of VOLUMES)
      if (!s.listVolumes().some((x) => x.name === prefix + v)) s.createVolume(prefix + v, size, 'p');
  }
  const target = new TargetGateway({
    group: 'g',
    dir: join(dir, 'target-gw'),
    storage: dst,
    volumes: VOLUMES.map((v) => `r${v}`),
  });
  const listener = await listenMutualTls(pki, (socket) => void target.accept(socket));
  const proxy = await FaultProxy.start({ port: listener.port });
  const dial: SourceGatewayOptions['connect'] = () => dialMutualTls(proxy.port, pki);
  const taps = VOLUMES.map((v) => src.tap(v));
  const gateway = (opts: Partial<SourceGatewayOptions> = {}) =>
    new SourceGateway({
      group: 'g',
      dir: join(dir, 'source-gw'),
      taps,
      connect: dial,
      retryMs: 50,
      compress: true,
      ...opts,
    });
  return {
    src,
    dst,
    taps,
    target,
    proxy,
    gateway,
    async close() {
      await proxy.close();
      await listener.close();
      await target.close();
      dst.close();
      src.close();
    },
  };
}

async function runReplication(opts: BenchOptions): Promise<BenchResult> {
  const startedAt = new Date();
  const { log } = opts;
  ensurePeerTools([{ command: 'nbdcopy', pkg: 'libnbd-bin' }], opts.install, log);
  // Two volumes of half the size each; a quarter of each written before the initial sync.
  const size = Math.max(64 * MiB, Math.floor(opts.size / 2 / MiB) * MiB);
  const seconds = opts.quick ? 3 : Math.max(5, Math.min(opts.runtime, 15));
  const subjects = [HAVEN, OFF, ASYNC, NBDCOPY];
  const values = () => Object.fromEntries(subjects.map((s) => [s, null])) as Record<string, number | null>;
  const metric = (
    key: string,
    label: string,
    unit: string,
    better: 'higher' | 'lower',
    target?: Metric['target'],
  ): Metric => ({
    key,
    label,
    unit,
    better,
    values: values(),
    ...(target ? { target } : {}),
  });
  const rates = [10, 50, 100];
  const m = {
    ...Object.fromEntries(
      rates.flatMap((r) => [
        [`p50-${r}`, metric(`rpo-p50-${r}`, `RPO p50, writer at ${r} MB/s`, 's', 'lower')],
        [
          `p99-${r}`,
          metric(
            `rpo-p99-${r}`,
            `RPO p99, writer at ${r} MB/s`,
            's',
            'lower',
            r === 50 ? { kind: 'max', value: 1 } : undefined,
          ),
        ],
      ]),
    ),
    tput: metric('write-throughput', 'writer throughput, 64 KiB random writes', 'MB/s', 'higher', {
      kind: 'ratio',
      peer: OFF,
      min: 0.9,
    }),
    p99: metric('write-p99', 'writer p99 latency', 'ms', 'lower', { kind: 'ratio', peer: OFF, min: 1.1 }),
    sync: metric('sync-latency', 'write latency, synchronous (haven) vs asynchronous, mean', 'ms', 'lower'),
    initial: metric('initial-sync', 'initial sync throughput (data written / s)', 'MB/s', 'higher', {
      kind: 'ratio',
      peer: NBDCOPY,
      min: 1,
    }),
    resync: metric('resync-bytes', 'bytes a resync sends / bytes changed during an outage', '×', 'lower', {
      kind: 'max',
      value: 1.2,
    }),
    rss: metric('peak-rss', 'peak RSS, both gateways in one process', 'MiB', 'lower'),
  } as Record<string, Metric>;
  const errors: Record<string, string> = {};
  const dir = mkdtempSync(join(opts.workdir, 'haven-bench-replication-'));
  const unregister = onInterrupt(() => rmSync(dir, { recursive: true, force: true }));
  const pki = makeTestPki(dir);
  const raw: Record<string, unknown> = {};
  try {
    // The source's data: a quarter of each volume, in 1 MiB runs, before anything replicates.
    {
      const s = await sites(dir, pki, size);
      const rnd = keystream(7);
      let dataBytes = 0;
      for (const tap of s.taps)
        for (let at = 0; at < size; at += 4 * MiB) {
          await tap.write(rnd(MiB), at);
          dataBytes += MiB;
        }
      await Promise.all(s.taps.map((t) => t.flush()));
      raw.dataBytes = dataBytes;
      await s.close();
      // nbdcopy of the same volumes between two storage services (each its own process).
      const serve = (site: string) =>
        BenchServer.start(
          `storage ${site}`,
          process.execPath,
          [HAVEN_BIN, 'storage', 'serve', '--data', join(dir, site), '--socket', join(dir, `${site}.sock`)],
          { path: join(dir, `${site}.sock`) },
        );
      const a = await serve('source');
      const b = await serve('target');
      try {
        const t0 = performance.now();
        for (const v of VOLUMES)
          await run(
            'nbdcopy',
            [
              `nbd+unix:///${v}?socket=${join(dir, 'source.sock')}`,
              `nbd+unix:///r${v}?socket=${join(dir, 'target.sock')}`,
            ],
            { timeout: 600_000 },
          );
        const t = (performance.now() - t0) / 1000;
        m.initial!.values[NBDCOPY] = dataBytes / 1e6 / t;
        log(`nbdcopy: ${fmtSize(dataBytes)} of data in ${t.toFixed(2)} s`);
      } finally {
        await a.stop();
        await b.stop();
      }
      // The target volumes start empty for the gateway.
      const dst = StorageService.open(join(dir, 'target'));
      for (const v of VOLUMES) {
        dst.deleteVolume(`r${v}`);
        dst.createVolume(`r${v}`, size, 'p');
      }
      dst.close();
    }
    const s = await sites(dir, pki, size);
    try {
      const t0 = performance.now();
      const gw = s.gateway({ checkpointMs: 250, journalBytes: 256 * MiB });
      gw.start();
      await until(
        'the initial sync',
        () => s.target.applier.history.some((c) => c.name === 'initial-sync'),
        () => gw.status(),
        log,
      );
      const t = (performance.now() - t0) / 1000;
      m.initial!.values[HAVEN] = (raw.dataBytes as number) / 1e6 / t;
      log(
        `haven: initial sync of ${fmtSize(raw.dataBytes as number)} in ${t.toFixed(2)} s, ${fmtSize(s.proxy.upBytes)} on the wire`,
      );
      raw.initialSyncWireBytes = s.proxy.upBytes;

      // RPO at fixed rates: sampled every 50 ms while the writer runs.
      for (const r of rates) {
        const samples: number[] = [];
        const poll = setInterval(() => {
          const st = gw.status();
          if (st.rpoMs !== undefined) samples.push(st.rpoMs / 1000);
        }, 50);
        const w = await writeFor(s.taps, seconds, r * 1e6, r);
        clearInterval(poll);
        m[`p50-${r}`]!.values[HAVEN] = pct(samples, 50);
        m[`p99-${r}`]!.values[HAVEN] = pct(samples, 99);
        log(
          `haven: at ${r} MB/s (achieved ${w.mbPerSecond.toFixed(1)}) RPO p50 ${pct(samples, 50).toFixed(2)} s, p99 ${pct(samples, 99).toFixed(2)} s`,
        );
      }
      // Full speed with replication on.
      const on = await writeFor(s.taps, seconds, 0, 99);
      m.tput!.values[HAVEN] = on.mbPerSecond;
      m.p99!.values[HAVEN] = pct(on.latencies, 99);
      await gw.stop();

      // Synchronous mode: latency at a modest rate.
      const syncGw = s.gateway({ sync: true, checkpointMs: 250, journalBytes: 256 * MiB });
      syncGw.start();
      await until(
        'synchronous',
        () => syncGw.status().sync?.degraded === false,
        () => syncGw.status(),
        log,
      );
      const syncRun = await writeFor(s.taps, seconds, 20e6, 5);
      const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
      m.sync!.values[HAVEN] = mean(syncRun.latencies);
      await syncGw.stop();
      const asyncGw = s.gateway({ checkpointMs: 250, journalBytes: 256 * MiB });
      asyncGw.start();
      const asyncRun = await writeFor(s.taps, seconds, 20e6, 5);
      m.sync!.values[ASYNC] = mean(asyncRun.latencies);

      // A resync: the link cut, 1% of the disks changed in 64 KiB blocks past what the journal
      // holds (so bitmap mode), then healed; the bytes on the wire until the resync's checkpoint.
      await asyncGw.stop();
      // 1% of the disks, past a journal of half as much: bitmap mode for sure.
      const changed = Math.floor((VOLUMES.length * size) / 100 / BLOCK) * BLOCK;
      const small = s.gateway({
        checkpointMs: 250,
        journalBytes: Math.max(256 * 1024, Math.floor(changed / 2)),
      });
      small.start();
      await until(
        'replicating',
        () => small.status().mode === 'replicating' && small.status().link === 'up',
        () => small.status(),
        log,
      );
      s.proxy.cut();
      const rnd = keystream(11);
      const blocks = new Set<string>();
      while (blocks.size * BLOCK < changed) {
        const pick = rnd(8);
        const v = pick[0]! % VOLUMES.length;
        const b = pick.readUInt32LE(1) % (size / BLOCK);
        if (blocks.has(`${v}:${b}`)) continue;
        blocks.add(`${v}:${b}`);
        await s.taps[v]!.write(rnd(BLOCK), b * BLOCK);
      }
      await until(
        'bitmap mode',
        () => small.status().mode === 'bitmap',
        () => small.status(),
        log,
      );
      const before = s.proxy.upBytes;
      const last = s.target.newest!.seq;
      s.proxy.heal();
      await until(
        'the resync',
        () => s.target.applier.history.some((c) => c.seq > last && c.name === 'resync'),
        () => small.status(),
        log,
      );
      const sent = s.proxy.upBytes - before;
      m.resync!.values[HAVEN] = sent / (blocks.size * BLOCK);
      log(`haven: resync sent ${fmtSize(sent)} for ${fmtSize(blocks.size * BLOCK)} changed`);
      await small.stop();
    } finally {
      await s.close();
    }
    // The same writer without replication.
    const plain = StorageService.open(join(dir, 'source'));
    try {
      const off = await writeFor(
        VOLUMES.map((v) => plain.tap(v)),
        seconds,
        0,
        99,
      );
      m.tput!.values[OFF] = off.mbPerSecond;
      m.p99!.values[OFF] = pct(off.latencies, 99);
    } finally {
      plain.close();
    }
    const hwm = /VmHWM:\s+(\d+) kB/.exec(readFileSync('/proc/self/status', 'utf8'));
    if (hwm) m.rss!.values[HAVEN] = Number(hwm[1]) / 1024;
  } catch (e) {
    errors[HAVEN] = (e as Error).message;
    log(`haven failed: ${(e as Error).message}`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
    unregister();
  }
  mkdirSync(opts.workdir, { recursive: true });
  return {
    name: 'replication',
    title: 'Continuous replication: RPO, overhead, synchronous mode, initial sync vs nbdcopy, resync',
    ...runSpan(startedAt),
    haven: HAVEN,
    subjects,
    errors,
    metrics: Object.values(m),
    raw,
    settings: {
      volumes: `${VOLUMES.length} × ${fmtSize(size)}, a quarter written before the initial sync`,
      writer: '64 KiB random writes over both volumes, one at a time',
      checkpoints: 'every 250 ms',
      link: 'mutual TLS over loopback through a TCP proxy, zstd',
      seconds,
      process: 'both gateways in the benchmark process (the site daemons do not drive replication yet)',
    },
    environment: { ...environment({ nbdcopy: ['--version'] }), loadAverageAtEnd: loadavg() },
    notes: [
      'RPO = now minus the time of the newest checkpoint the target has applied, sampled every 50 ms',
      `"${OFF}" is the same writer on the same volumes with no gateway; "${ASYNC}" the asynchronous latency beside the synchronous`,
    ],
  };
}

export const replicationBenchmark: Benchmark = {
  name: 'replication',
  title: 'Continuous replication: RPO, overhead, synchronous mode, initial sync vs nbdcopy, resync',
  description:
    'Two gateways of one group over mutual TLS on loopback: RPO at 10/50/100 MB/s, writer throughput and p99 with replication on and off, synchronous vs asynchronous write latency, initial sync vs nbdcopy between two storage services, resync bytes after 1% changed during an outage.',
  run: runReplication,
};
