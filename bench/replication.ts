/**
 * Replication benchmark (issue 15): two `haven serve` site daemons on loopback, paired as an
 * operator pairs them (`haven site pair`), site B's peer link behind the project's fault proxy
 * (test/support/fault-proxy.ts), every write by a real NBD client (fio's nbd engine, nbdcopy)
 * through site A's NBD export, every state read from site A's REST API. Measures the RPO while
 * fio writes random 64 KiB blocks at 10, 50 and 100 MB/s; fio's throughput and p99 latency with
 * replication on and off (the same daemon, volume and export); synchronous against asynchronous
 * write latency; the initial sync against nbdcopy of the same volume from site A's export to site
 * B's; the bytes a resync sends after 1% of a volume changed while the link was cut; and each
 * daemon's peak RSS.
 */
import {
  closeSync,
  ftruncateSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readFileSync,
  rmSync,
  writeSync,
} from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { FaultProxy } from '../test/support/fault-proxy.js';
import { freePort, run } from '../test/support/proc.js';
import { onInterrupt } from './lib/cleanup.js';
import { environment } from './lib/env.js';
import { fioNbd, type FioResult } from './lib/fio.js';
import { fmtSize, keystream } from './lib/image.js';
import { ensurePeerTools } from './lib/peers.js';
import { runSpan } from './lib/results.js';
import { procCpuSeconds, procStatusBytes } from './lib/server.js';
import { BenchSite } from './lib/site.js';
import type { Benchmark, BenchOptions, BenchResult, Metric } from './lib/types.js';

const HAVEN = 'haven';
const OFF = 'no replication';
const ASYNC = 'asynchronous';
const NBDCOPY = 'nbdcopy';
const MiB = 1024 * 1024;
const BLOCK = 64 * 1024;
/** fio's rate for the synchronous/asynchronous comparison. */
const LATENCY_RATE = 20e6;

interface SourceAnswer {
  state: string;
  link: string;
  error?: string;
  rpoSeconds?: number;
  appliedCheckpoint?: { seq: number; time: string; name?: string };
  sentBytes: number;
  scan?: unknown;
  sync?: { degraded: boolean };
}
interface GroupAnswer {
  source?: SourceAnswer;
}

const pct = (xs: number[], p: number) => {
  const s = [...xs].sort((x, y) => x - y);
  return s.length ? s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]! : NaN;
};
const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;

/** Polls `probe` every 50 ms until `ok`; says every 10 s what it waits for and what it saw. */
async function until<T>(
  what: string,
  probe: () => Promise<T>,
  ok: (v: T) => boolean,
  log: (m: string) => void,
  ms = 600_000,
): Promise<T> {
  const started = Date.now();
  let said = started;
  for (;;) {
    const v = await probe();
    if (ok(v)) return v;
    if (Date.now() - started > ms) throw new Error(`timed out waiting for ${what}: ${JSON.stringify(v)}`);
    if (Date.now() - said > 10_000) {
      said = Date.now();
      log(`waiting for ${what}: ${JSON.stringify(v).slice(0, 400)}`);
    }
    await sleep(50);
  }
}

/** A sparse image of `size`: `data` bytes of incompressible data in 1 MiB runs spread evenly. */
function sparseImage(path: string, size: number, data: number): void {
  const rnd = keystream(7);
  const runs = Math.floor(data / MiB);
  const step = Math.floor(size / runs / MiB) * MiB;
  const fd = openSync(path, 'w');
  try {
    ftruncateSync(fd, size);
    for (let i = 0; i < runs; i++) writeSync(fd, rnd(MiB), 0, MiB, i * step);
  } finally {
    closeSync(fd);
  }
}

async function runReplication(opts: BenchOptions): Promise<BenchResult> {
  const startedAt = new Date();
  const { log } = opts;
  ensurePeerTools(
    [
      { command: 'nbdcopy', pkg: 'libnbd-bin' },
      { command: 'fio', pkg: 'fio' },
    ],
    opts.install,
    log,
  );
  const size = Math.max(
    64 * MiB,
    Math.floor((opts.sizeGiven ? opts.size : opts.quick ? 256 * MiB : 1024 * MiB) / MiB) * MiB,
  );
  // Half of the volume holds data before the initial sync.
  const dataBytes = Math.floor(size / 2 / MiB) * MiB;
  const seconds = opts.quick ? 3 : Math.max(5, Math.min(opts.runtime, 10));
  const subjects = [HAVEN, OFF, ASYNC, NBDCOPY];
  const values = () => Object.fromEntries(subjects.map((s) => [s, null])) as Record<string, number | null>;
  const metric = (
    key: string,
    label: string,
    unit: string,
    better: 'higher' | 'lower',
    target?: Metric['target'],
    method?: string,
  ): Metric => ({
    key,
    label,
    unit,
    better,
    values: values(),
    ...(target ? { target } : {}),
    ...(method ? { method } : {}),
  });
  const rates = [10, 50, 100];
  const m: Record<string, Metric> = {
    ...Object.fromEntries(
      rates.flatMap((r) => [
        [`p50-${r}`, metric(`rpo-p50-${r}`, `RPO p50, fio at ${r} MB/s`, 's', 'lower')],
        [
          `p99-${r}`,
          metric(
            `rpo-p99-${r}`,
            `RPO p99, fio at ${r} MB/s`,
            's',
            'lower',
            r === 50 ? { kind: 'max', value: 1 } : undefined,
          ),
        ],
      ]),
    ),
    tput: metric(
      'write-throughput',
      'fio 64 KiB random writes, queue depth 1: throughput',
      'MB/s',
      'higher',
      { kind: 'ratio', peer: OFF, min: 0.9 },
      `"${OFF}": mean of a run before and one after the run with replication on`,
    ),
    p99: metric('write-p99', 'fio 64 KiB random writes: p99 latency', 'ms', 'lower', {
      kind: 'ratio',
      peer: OFF,
      min: 1.1,
    }),
    syncMean: metric(
      'sync-latency',
      `write latency at ${LATENCY_RATE / 1e6} MB/s, synchronous (haven) vs asynchronous: mean`,
      'ms',
      'lower',
    ),
    syncP99: metric('sync-latency-p99', 'the same: p99', 'ms', 'lower'),
    initial: metric(
      'initial-sync',
      'initial sync throughput (data / s)',
      'MB/s',
      'higher',
      { kind: 'ratio', peer: NBDCOPY, min: 1 },
      'nbdcopy: the faster of a run before and a run after the initial sync',
    ),
    resync: metric('resync-bytes', 'bytes a resync sends / bytes changed during an outage', '×', 'lower', {
      kind: 'max',
      value: 1.2,
    }),
    cpuA: metric(
      'source-cpu-per-gb',
      'site A daemon (source) CPU per GB fio wrote',
      's/GB',
      'lower',
      undefined,
      'CPU seconds (user + system, /proc/PID/stat) during the fio run, over the GB it wrote',
    ),
    cpuB: metric('target-cpu-per-gb', 'site B daemon (target) CPU per GB fio wrote', 's/GB', 'lower'),
    rssA: metric('peak-rss-source', 'peak RSS (VmHWM), site A daemon (source)', 'MiB', 'lower'),
    rssB: metric('peak-rss-target', 'peak RSS (VmHWM), site B daemon (target)', 'MiB', 'lower'),
  };
  const errors: Record<string, string> = {};
  const raw: Record<string, unknown> = {};
  const dir = mkdtempSync(join(opts.workdir, 'haven-bench-replication-'));
  const linkA = await freePort();
  const linkB = await freePort();
  const proxy = await FaultProxy.start({ port: linkB });
  const a = new BenchSite(join(dir, 'a'), 600_000, [
    '--site',
    'site-a',
    '--peer-listen',
    `127.0.0.1:${linkA}`,
  ]);
  const b = new BenchSite(join(dir, 'b'), 600_000, [
    '--site',
    'site-b',
    '--peer-listen',
    `127.0.0.1:${linkB}`,
    '--peer-advertise',
    `127.0.0.1:${proxy.port}`,
  ]);
  const unregister = onInterrupt(() => {
    a.daemon?.child.kill('SIGKILL');
    b.daemon?.child.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  });
  const group = async (name: string) =>
    (await a.api<GroupAnswer>('GET', `/replication/groups/${name}`)).source!;
  const replicating = (s: SourceAnswer) =>
    s.state === 'replicating' && s.link === 'up' && !!s.appliedCheckpoint;
  const enable = (name: string, vm: string, extra: Record<string, unknown> = {}) =>
    a.api('POST', '/replication/groups', {
      group: name,
      vms: [vm],
      to: 'site-b',
      pool: 'default',
      rpoSeconds: 5,
      checkpointSeconds: 0.25,
      ...extra,
    });
  const fio = (vol: string, rate?: number): Promise<FioResult> =>
    fioNbd({
      uri: a.nbd(vol),
      rw: 'randwrite',
      bs: '64k',
      iodepth: 1,
      runtime: seconds,
      refill: true,
      ...(rate ? { rate } : {}),
    });
  const nbdcopy = async (): Promise<number> => {
    const t0 = performance.now();
    await run('nbdcopy', ['--destination-is-zero', a.nbd('data'), b.nbd('copy')], { timeout: 600_000 });
    const t = (performance.now() - t0) / 1000;
    log(
      `nbdcopy: ${fmtSize(dataBytes)} of data (of ${fmtSize(size)}) from site A to site B in ${t.toFixed(2)} s`,
    );
    return dataBytes / 1e6 / t;
  };
  try {
    await a.start();
    await b.start();
    const { url } = JSON.parse(readFileSync(join(b.data, 'api.json'), 'utf8')) as { url: string };
    await a.haven('site', 'pair', '--peer-api', url, '--peer-token-file', join(b.data, 'api-token'));
    const mib = `${size / MiB}M`;
    // Site A: "data" and "plain" (half written alike), "sync" and "resync" (empty); all but
    // "plain" the disk of a VM (never started: the writes come from fio through the export).
    // Site B: "copy", nbdcopy's target.
    for (const v of ['data', 'plain', 'sync', 'resync']) {
      await a.haven('volume', 'create', v, '--size', mib);
      if (v !== 'plain') await a.haven('vm', 'create', `vm-${v}`, '--disk', v);
    }
    await b.haven('volume', 'create', 'copy', '--size', mib);
    const image = join(dir, 'data.img');
    sparseImage(image, size, dataBytes);
    for (const v of ['data', 'plain']) await run('nbdcopy', [image, a.nbd(v)], { timeout: 600_000 });
    rmSync(image);

    // Initial sync, between two runs of nbdcopy of the same volume from site A to site B.
    const copies = [await nbdcopy()];
    const wire0 = proxy.upBytes;
    const t0 = performance.now();
    await enable('g', 'vm-data');
    const synced = await until('the initial sync', () => group('g'), replicating, log);
    const t = (performance.now() - t0) / 1000;
    m.initial!.values[HAVEN] = dataBytes / 1e6 / t;
    raw.initialSync = {
      seconds: t,
      sentBytes: synced.sentBytes,
      wireBytes: proxy.upBytes - wire0,
      dataBytes,
    };
    log(
      `haven: initial sync of ${fmtSize(dataBytes)} in ${t.toFixed(2)} s (${(dataBytes / 1e6 / t).toFixed(0)} MB/s), ${fmtSize(synced.sentBytes)} sent, ${fmtSize(proxy.upBytes - wire0)} on the wire`,
    );
    copies.push(await nbdcopy());
    m.initial!.values[NBDCOPY] = Math.max(...copies);
    m.initial!.samples = { [NBDCOPY]: copies };

    // The other two groups: empty volumes, so their initial syncs take no time.
    await enable('gs', 'vm-sync', { sync: true });
    // A 1 MiB journal: the outage below overflows it (bitmap mode).
    await enable('gr', 'vm-resync', { journalBytes: MiB });
    await until(
      'the groups gs and gr',
      async () => [await group('gs'), await group('gr')],
      (xs) => xs.every(replicating),
      log,
    );

    // As fast as it goes: replication off ("plain", the same daemon, pool and export), on
    // ("data", in group g), off again.
    const fmt = (r: FioResult) =>
      `${(r.bandwidth / 1e6).toFixed(1)} MB/s, p99 ${(r.p99LatencyUs! / 1000).toFixed(2)} ms`;
    // And the CPU each daemon spends per GB written (what replication costs the source's host).
    const cpuRuns: Record<'on' | 'off', { a: number; b: number; gb: number }[]> = { on: [], off: [] };
    const measured = async (vol: string, kind: 'on' | 'off') => {
      const a0 = procCpuSeconds(a.pid) ?? NaN;
      const b0 = procCpuSeconds(b.pid) ?? NaN;
      const r = await fio(vol);
      const gb = (r.bandwidth * seconds) / 1e9; // fio runs time-based for `seconds`
      cpuRuns[kind].push({
        a: ((procCpuSeconds(a.pid) ?? NaN) - a0) / gb,
        b: ((procCpuSeconds(b.pid) ?? NaN) - b0) / gb,
        gb,
      });
      return r;
    };
    const off1 = await measured('plain', 'off');
    log(`no replication: ${fmt(off1)}`);
    const on = await measured('data', 'on');
    log(`replication on: ${fmt(on)}`);
    const off2 = await measured('plain', 'off');
    log(`no replication: ${fmt(off2)}`);
    m.cpuA!.values[HAVEN] = cpuRuns.on![0]!.a;
    m.cpuA!.values[OFF] = mean(cpuRuns.off.map((x) => x.a));
    m.cpuB!.values[HAVEN] = cpuRuns.on![0]!.b;
    raw.cpuPerGb = cpuRuns;
    log(
      `CPU per GB written: source ${cpuRuns.on![0]!.a.toFixed(2)} s (no replication ${m.cpuA!.values[OFF]!.toFixed(2)} s), target ${cpuRuns.on![0]!.b.toFixed(2)} s`,
    );
    m.tput!.values[HAVEN] = on.bandwidth / 1e6;
    m.p99!.values[HAVEN] = on.p99LatencyUs! / 1000;
    m.tput!.values[OFF] = mean([off1.bandwidth, off2.bandwidth]) / 1e6;
    m.tput!.samples = { [OFF]: [off1.bandwidth / 1e6, off2.bandwidth / 1e6] };
    m.p99!.values[OFF] = mean([off1.p99LatencyUs!, off2.p99LatencyUs!]) / 1000;
    m.p99!.samples = { [OFF]: [off1.p99LatencyUs! / 1000, off2.p99LatencyUs! / 1000] };
    await until(
      'group g to catch up',
      () => group('g'),
      (x) => x.state === 'replicating' && x.rpoSeconds! < 2,
      log,
    );

    // RPO at fixed rates, from the daemon's status sampled every 50 ms while fio writes.
    for (const r of rates) {
      const samples: number[] = [];
      let sampling = true;
      const sampler = (async () => {
        while (sampling) {
          const s = await group('g');
          if (s.rpoSeconds !== undefined) samples.push(s.rpoSeconds);
          await sleep(50);
        }
      })();
      const w = await fio('data', r * 1e6);
      sampling = false;
      await sampler;
      m[`p50-${r}`]!.values[HAVEN] = pct(samples, 50);
      m[`p99-${r}`]!.values[HAVEN] = pct(samples, 99);
      raw[`rpo-${r}`] = {
        achievedMBps: w.bandwidth / 1e6,
        samples: samples.length,
        max: Math.max(...samples),
      };
      log(
        `haven: fio at ${r} MB/s (achieved ${(w.bandwidth / 1e6).toFixed(1)}): RPO p50 ${pct(samples, 50).toFixed(2)} s, p99 ${pct(samples, 99).toFixed(2)} s (${samples.length} samples)`,
      );
    }
    // Synchronous against asynchronous, at the same modest rate.
    const gs = await group('gs');
    if (gs.sync?.degraded !== false) throw new Error(`group gs is not synchronous: ${JSON.stringify(gs)}`);
    const syncRun = await fio('sync', LATENCY_RATE);
    const gsAfter = await group('gs');
    const asyncRun = await fio('data', LATENCY_RATE);
    m.syncMean!.values[HAVEN] = syncRun.meanLatencyUs / 1000;
    m.syncMean!.values[ASYNC] = asyncRun.meanLatencyUs / 1000;
    m.syncP99!.values[HAVEN] = syncRun.p99LatencyUs! / 1000;
    m.syncP99!.values[ASYNC] = asyncRun.p99LatencyUs! / 1000;
    raw.sync = { degradedAfter: gsAfter.sync?.degraded, syncMBps: syncRun.bandwidth / 1e6 };
    log(
      `synchronous: mean ${(syncRun.meanLatencyUs / 1000).toFixed(2)} ms, p99 ${(syncRun.p99LatencyUs! / 1000).toFixed(2)} ms${gsAfter.sync?.degraded ? ' (DEGRADED meanwhile)' : ''}; asynchronous: mean ${(asyncRun.meanLatencyUs / 1000).toFixed(2)} ms, p99 ${(asyncRun.p99LatencyUs! / 1000).toFixed(2)} ms`,
    );

    // A resync: the link cut, 1% of "resync" changed in distinct 64 KiB blocks (past its 1 MiB
    // journal: bitmap mode), the link healed; the bytes the group sends until its resync checkpoint.
    const changed = Math.floor(size / 100 / BLOCK) * BLOCK;
    const before = await group('gr');
    proxy.cut();
    await run(
      'fio',
      [
        '--name=outage',
        '--ioengine=nbd',
        `--uri=${a.nbd('resync')}`,
        '--rw=randwrite',
        '--bs=64k',
        '--iodepth=1',
        `--size=${size}`,
        `--io_size=${changed}`,
        '--randrepeat=0',
        '--refill_buffers',
      ],
      { timeout: 600_000 },
    );
    const cut = await until(
      'bitmap mode',
      () => group('gr'),
      (s) => s.state === 'bitmap' && s.link === 'down',
      log,
    );
    const wire = proxy.upBytes;
    proxy.heal();
    // The checkpoint closing the resync is the newest only until the next one (a quarter second
    // later): looked for in the replica's history, not in the status.
    const resynced = await until(
      'the resync',
      async () => ({
        status: await group('gr'),
        history: await a.api<{ seq: number; name?: string }[]>('GET', '/replication/groups/gr/checkpoints'),
      }),
      ({ status, history }) =>
        replicating(status) &&
        history.some((c) => c.name === 'resync' && c.seq > (before.appliedCheckpoint?.seq ?? 0)),
      log,
    );
    // What it sent up to that checkpoint: idle checkpoints after it add a few bytes each.
    const sent = resynced.status.sentBytes - cut.sentBytes;
    m.resync!.values[HAVEN] = sent / changed;
    raw.resync = { changedBytes: changed, sentBytes: sent, wireBytesAllLinks: proxy.upBytes - wire };
    log(
      `haven: the resync sent ${fmtSize(sent)} for ${fmtSize(changed)} changed (${(sent / changed).toFixed(3)}×)`,
    );

    raw.fio = { off1, on, off2, syncRun, asyncRun };

    m.rssA!.values[HAVEN] = (procStatusBytes(a.pid, 'VmHWM') ?? NaN) / MiB;
    m.rssB!.values[HAVEN] = (procStatusBytes(b.pid, 'VmHWM') ?? NaN) / MiB;
  } catch (e) {
    errors[HAVEN] = (e as Error).message;
    log(`haven failed: ${(e as Error).message}`);
    for (const s of [a, b]) log(`site ${s.dir} output (tail):\n${s.daemon?.output().slice(-3000) ?? ''}`);
  } finally {
    await a.stop().catch(() => undefined);
    await b.stop().catch(() => undefined);
    await proxy.close();
    rmSync(dir, { recursive: true, force: true });
    unregister();
  }
  mkdirSync(opts.workdir, { recursive: true });
  return {
    name: 'replication',
    title:
      'Continuous replication between two site daemons: RPO, overhead, synchronous mode, initial sync vs nbdcopy, resync',
    ...runSpan(startedAt),
    haven: HAVEN,
    subjects,
    errors,
    metrics: Object.values(m),
    raw,
    settings: {
      sites: "two `haven serve` on loopback, paired; site B's peer link behind a TCP fault proxy",
      volumes: `3 × ${fmtSize(size)} at site A, one group each; "data" holds ${fmtSize(dataBytes)} (1 MiB runs) before its initial sync`,
      writer:
        "fio (nbd engine) 64 KiB random writes, queue depth 1, through site A's NBD export (unix socket)",
      checkpoints: 'every 250 ms',
      link: 'mutual TLS over loopback, zstd on',
      seconds,
    },
    environment: environment({ nbdcopy: ['--version'], fio: ['--version'] }),
    notes: [
      "RPO = now minus the time of the newest checkpoint the target has applied (the daemon's status, rpoSeconds), sampled every 50 ms",
      `"${OFF}": the same fio through the same export of the same daemon to a volume of the same pool, size and content that no group replicates, run before and after the run with replication on (mean)`,
      `"${ASYNC}": the asynchronous group's latency beside the synchronous group's, both at ${LATENCY_RATE / 1e6} MB/s`,
      'The machine has 2 cores shared with other work: the compared runs are made side by side in the same run',
    ],
  };
}

export const replicationBenchmark: Benchmark = {
  name: 'replication',
  title:
    'Continuous replication between two site daemons: RPO, overhead, synchronous mode, initial sync vs nbdcopy, resync',
  description:
    "Two paired `haven serve` on loopback, fio writing through site A's NBD export: RPO at 10/50/100 MB/s, write throughput and p99 with replication on and off, synchronous vs asynchronous latency, initial sync vs nbdcopy between the sites' exports, resync bytes after 1% changed during an outage, each daemon's peak RSS.",
  run: runReplication,
};
