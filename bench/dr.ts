/**
 * DR benchmark (issue 17): two `haven serve` sites on this machine, a business service of three
 * test guests in two tiers (db; then app and web), each guest streaming writes over two disks,
 * each VM its own replication group from A to B. Measured, in this order:
 *
 * - rehearsal: `haven dr rehearse SERVICE` at B to every clone passing its heartbeat;
 * - migrate downtime of one group (A → B and back): the guest's last write seen at the source to
 *   its first at the target, beside the downtime the migrate report states;
 * - takeover RTO: A's daemon and QEMUs killed with -9, `haven dr takeover SERVICE` at B to the
 *   last VM's first write there, against the same three VMs started again at B by hand in the same
 *   tier order (`haven vm start`, to each first write);
 * - failback bytes: with the VMs stopped at B, 1% of every disk rewritten in scattered 64 KiB
 *   blocks; A restarted (fenced); `haven dr resync` of each group: bytes sent against the bytes
 *   changed and the disk size.
 */
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { connectNbd } from '../src/nbd/index.js';
import { ensureGuest } from '../test/support/guest.js';
import { guestWrites, replicationGroup } from '../test/support/replica-check.js';
import { eventually, pairedSites, type TestSite } from '../test/support/sites.js';
import { onInterrupt } from './lib/cleanup.js';
import { environment } from './lib/env.js';
import { runSpan } from './lib/results.js';
import type { Benchmark, BenchOptions, BenchResult, Metric } from './lib/types.js';

const HAVEN = 'haven';
const LOCAL = 'local boot';
const TIERS = [['db'], ['app', 'web']] as const;
const VMS = TIERS.flat();
const BLOCK = 64 * 1024;

interface VmView {
  name: string;
  state: string;
  pid?: number;
}
interface GroupAnswer {
  role: string;
  source?: { state: string; sentBytes: number; appliedCheckpoint?: { seq: number } };
}
interface MigrateJob {
  state: string;
  error?: string;
  result?: { downtimeSeconds: number };
}

/** A cleanup list shaped like node:test's `t.after`, run last first. */
function cleanups() {
  const fns: (() => unknown)[] = [];
  return {
    after: (fn: () => unknown) => void fns.push(fn),
    run: async () => {
      for (const fn of fns.reverse()) await Promise.resolve(fn()).catch(() => undefined);
    },
  };
}

async function createVm(s: TestSite, name: string, seed: number, diskBytes: number): Promise<string[]> {
  const volumes = [`${name}-a`, `${name}-b`];
  for (const v of volumes) await s.haven('volume', 'create', v, '--size', String(diskBytes));
  const g = ensureGuest();
  const cmd = `stream disk=vda,vdb seed=${seed} len=4K rate=20 slots=64`;
  await s.haven(
    'vm',
    'create',
    name,
    ...volumes.flatMap((v) => ['--disk', v]),
    '--kernel',
    g.kernel,
    '--initrd',
    g.initrd,
    '--memory',
    '192M',
    '--cmdline',
    `console=ttyS0 quiet panic=-1 haven.disks=2 haven.cmd="${cmd}"`,
  );
  return volumes;
}

const writesAt = async (s: TestSite, vm: string) => (await guestWrites(s, vm).catch(() => [])).length;

/** Resolves with the time (performance.now) at which `vm` at `s` reports more than `after` writes. */
async function firstWriteAfter(s: TestSite, vm: string, after: number, ms = 180_000): Promise<number> {
  const deadline = performance.now() + ms;
  while (performance.now() < deadline) {
    if ((await writesAt(s, vm)) > after) return performance.now();
    await sleep(50);
  }
  throw new Error(`VM ${vm} at site ${s.name} wrote nothing within ${ms / 1000} s`);
}

const nbdUri = (s: TestSite, exp: string) =>
  `nbd+unix:///${encodeURIComponent(exp)}?socket=${join(s.dir, 'run', 'nbd.sock')}`;

async function runDr(opts: BenchOptions): Promise<BenchResult> {
  const startedAt = new Date();
  const { log } = opts;
  // TCG guests on two cores: the disks are small, what is measured is orchestration and boot.
  const diskBytes = Math.min(opts.size, opts.quick ? 64 * 2 ** 20 : 256 * 2 ** 20);
  const subjects = [HAVEN, LOCAL];
  const values = () => Object.fromEntries(subjects.map((s) => [s, null])) as Record<string, number | null>;
  const m: Record<string, Metric> = {
    rto: {
      key: 'takeover-rto',
      label: 'takeover of the 3-VM service: command to the last VM writing',
      unit: 's',
      better: 'lower',
      values: values(),
      target: { kind: 'ratio', peer: LOCAL, min: 1.2 },
      method: `${LOCAL}: the same VMs started by haven vm start at B in the same tier order`,
    },
    rehearsal: {
      key: 'rehearsal',
      label: 'rehearsal of the service: command to every heartbeat passed',
      unit: 's',
      better: 'lower',
      values: values(),
    },
    downtime: {
      key: 'migrate-downtime',
      label: "migrate downtime: guest's last write at the source to its first at the target",
      unit: 's',
      better: 'lower',
      values: values(),
      samples: {},
      method: 'one group, A → B and back (failback); mean of both',
    },
    reported: {
      key: 'migrate-downtime-report',
      label: 'migrate downtime as the report states it (stop to start)',
      unit: 's',
      better: 'lower',
      values: values(),
      samples: {},
    },
    failbackRatio: {
      key: 'failback-bytes-per-changed',
      label: 'resync after takeover: bytes sent / bytes changed (1% of each disk)',
      unit: '×',
      better: 'lower',
      values: values(),
      target: { kind: 'max', value: 1.2 },
    },
    failbackDisk: {
      key: 'failback-bytes-per-disk',
      label: 'resync after takeover: bytes sent / disk size',
      unit: '%',
      better: 'lower',
      values: values(),
    },
  };
  const errors: Record<string, string> = {};
  const notes: string[] = [];
  const c = cleanups();
  const unregister = onInterrupt(() => c.run());
  try {
    log(`two sites, 3 guests with 2 disks of ${diskBytes / 2 ** 20} MiB each`);
    const { a, b } = await pairedSites(c);
    const group = (vm: string) => `g-${vm}`;
    const volumes = new Map<string, string[]>();
    for (const [i, vm] of VMS.entries()) {
      volumes.set(vm, await createVm(a, vm, 20 + i, diskBytes));
      await a.haven('vm', 'start', vm);
      await a.haven(
        'replication',
        'enable',
        vm,
        '--group',
        group(vm),
        '--to',
        'site-b',
        '--pool',
        'default',
        '--rpo',
        '10s',
        '--checkpoint-every',
        '1s',
      );
    }
    for (const vm of VMS)
      await eventually(
        `group ${group(vm)} replicating`,
        () => replicationGroup(a, group(vm)),
        (g) => g.source?.state === 'replicating' && !!g.source.appliedCheckpoint,
        300_000,
      );
    await a.haven('service', 'create', 'shop', ...TIERS.flatMap((t) => ['--tier', t.map(group).join(',')]));
    for (const vm of VMS) await firstWriteAfter(a, vm, 2);

    log('rehearsal of the service at B');
    let t0 = performance.now();
    await b.haven('dr', 'rehearse', 'shop', '--heartbeat', 'console:"event":"write"', '--timeout', '180s');
    m.rehearsal!.values[HAVEN] = (performance.now() - t0) / 1000;
    await b.haven('dr', 'cleanup', 'shop');
    log(`rehearsal: ${m.rehearsal!.values[HAVEN]!.toFixed(1)} s`);

    log('migrate of g-web to B and back');
    const gaps: number[] = [];
    const stated: number[] = [];
    for (const [from, to] of [
      [a, b],
      [b, a],
    ] as const) {
      const before = await writesAt(to, 'web');
      let lastAtSource = performance.now();
      let seen = await writesAt(from, 'web');
      let migrating = true;
      const watch = (async () => {
        while (migrating) {
          const n = await writesAt(from, 'web');
          if (n > seen) [seen, lastAtSource] = [n, performance.now()];
          await sleep(50);
        }
      })();
      const job = JSON.parse(
        await from.haven('dr', 'migrate', group('web'), '--grace', '2s', '--json'),
      ) as MigrateJob;
      migrating = false;
      await watch;
      if (job.state !== 'succeeded') throw new Error(`migrate from ${from.name}: ${job.error}`);
      const first = await firstWriteAfter(to, 'web', before);
      gaps.push((first - lastAtSource) / 1000);
      stated.push(job.result!.downtimeSeconds);
      await eventually(
        'replication back',
        () => to.api<GroupAnswer>('GET', `/replication/groups/${group('web')}`),
        (g) => g.role === 'source' && g.source?.state === 'replicating' && !!g.source.appliedCheckpoint,
        120_000,
      );
    }
    m.downtime!.values[HAVEN] = gaps.reduce((x, y) => x + y, 0) / gaps.length;
    m.downtime!.samples![HAVEN] = gaps;
    m.reported!.values[HAVEN] = stated.reduce((x, y) => x + y, 0) / stated.length;
    m.reported!.samples![HAVEN] = stated;
    log(`migrate downtime: ${gaps.map((g) => g.toFixed(2)).join(', ')} s (stated ${stated.join(', ')} s)`);

    log('site A lost: takeover of the service at B');
    const pids = (await a.api<VmView[]>('GET', '/vms')).map((v) => v.pid).filter((p): p is number => !!p);
    const seenAtB = new Map<string, number>();
    for (const vm of VMS) seenAtB.set(vm, await writesAt(b, vm));
    await a.kill();
    for (const pid of pids) process.kill(pid, 'SIGKILL');
    // The peer must be seen gone before a takeover without --force; that wait is not the RTO's.
    t0 = performance.now();
    await b.haven('dr', 'takeover', 'shop');
    const up = await Promise.all(VMS.map((vm) => firstWriteAfter(b, vm, seenAtB.get(vm)!)));
    m.rto!.values[HAVEN] = (Math.max(...up) - t0) / 1000;

    log('the same VMs started again at B by hand, tier by tier');
    for (const vm of VMS) await b.haven('vm', 'stop', vm, '--force');
    for (const vm of VMS) seenAtB.set(vm, await writesAt(b, vm));
    t0 = performance.now();
    const local: Promise<number>[] = [];
    for (const tier of TIERS)
      for (const vm of tier) {
        await b.haven('vm', 'start', vm);
        local.push(firstWriteAfter(b, vm, seenAtB.get(vm)!));
      }
    m.rto!.values[LOCAL] = (Math.max(...(await Promise.all(local))) - t0) / 1000;
    log(
      `takeover RTO ${m.rto!.values[HAVEN]!.toFixed(1)} s, local start ${m.rto!.values[LOCAL]!.toFixed(1)} s`,
    );

    log('failback: 1% of every disk changed at B, A back (fenced), resync of each group');
    for (const vm of VMS) await b.haven('vm', 'stop', vm, '--force');
    const perDisk = Math.max(1, Math.round((diskBytes * 0.01) / BLOCK));
    const buf = randomBytes(BLOCK);
    let changed = 0;
    for (const vm of VMS)
      for (const v of volumes.get(vm)!) {
        const d = await connectNbd(nbdUri(b, v));
        // Scattered over the disk, past the guest's slots (its first 256 KiB).
        const stride = Math.floor((diskBytes - 4 * BLOCK) / perDisk / BLOCK) * BLOCK;
        for (let i = 0; i < perDisk; i++) await d.write(buf, 4 * BLOCK + i * stride);
        await d.flush();
        await d.close();
        changed += perDisk * BLOCK;
      }
    await a.restart();
    for (const vm of VMS)
      await eventually(
        `site A fenced for ${group(vm)}`,
        () => a.api<{ fenced?: unknown }>('GET', `/replication/groups/${group(vm)}`),
        (g) => !!g.fenced,
        60_000,
      );
    let sent = 0;
    for (const vm of VMS) {
      await b.haven('dr', 'resync', group(vm));
      const g = await eventually(
        `${group(vm)} replicating back`,
        () => b.api<GroupAnswer>('GET', `/replication/groups/${group(vm)}`),
        (x) => x.source?.state === 'replicating' && !!x.source.appliedCheckpoint,
        180_000,
      );
      sent += g.source!.sentBytes;
    }
    m.failbackRatio!.values[HAVEN] = sent / changed;
    m.failbackDisk!.values[HAVEN] = (sent / (diskBytes * 2 * VMS.length)) * 100;
    notes.push(
      `failback: ${sent} bytes sent for ${changed} bytes changed at B (the guests' own writes since the takeover, into their 256 KiB of slots per disk, count as changed too but not here)`,
    );
  } catch (e) {
    errors[HAVEN] = (e as Error).message;
  } finally {
    await c.run();
    unregister();
  }
  return {
    name: 'dr',
    title: 'DR: rehearsal, migrate downtime, takeover RTO against a local start, failback bytes',
    ...runSpan(startedAt),
    haven: HAVEN,
    subjects,
    errors,
    metrics: Object.values(m),
    settings: {
      diskBytes,
      vms: '3 test guests (1 CPU, 192 MiB, TCG), 2 disks each, streaming 4 KiB writes at 20/s',
      tiers: TIERS,
      rpo: '10 s, a checkpoint every 1 s',
    },
    environment: environment({ 'qemu-system-x86_64': ['--version'] }),
    notes: ['the guests boot under TCG (no KVM here): boot time dominates the RTO of both columns', ...notes],
  };
}

export const drBenchmark: Benchmark = {
  name: 'dr',
  title: 'DR: rehearsal, migrate downtime, takeover RTO against a local start, failback bytes',
  description:
    'Two site daemons, a business service of three guests in two tiers replicated A → B: rehearsal time to all heartbeats, the downtime of a migrate and its failback as the guest sees it, the RTO of a takeover after kill -9 of site A against starting the same VMs locally in the same order, and the bytes a resync sends after 1% of the disks changed.',
  run: runDr,
};
