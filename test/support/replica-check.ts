/**
 * Guests that stream ordered writes over two disks at a source site, and the check of a replica
 * checkpoint at the target: its disks (the checkpoint's snapshots, read over the target's NBD
 * socket) must hold a prefix of each guest's writes (test/support/write-order.ts).
 */
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import type { BlockDevice } from '../../src/block/index.js';
import { connectNbd } from '../../src/nbd/index.js';
import { ensureGuest, streamTarget } from './guest.js';
import { writesIn } from './site.js';
import { eventually, type TestSite } from './sites.js';
import { checkPrefixConsistency, type Consistency, type OrderedWrite } from './write-order.js';

export const DISKS = ['/dev/vda', '/dev/vdb'] as const;

/** A VM of the test guest with two 16 MiB disks (`NAME-a`, `NAME-b`, on `pool`) streaming 4 KiB writes over both. */
export async function streamingVm(
  s: TestSite,
  name: string,
  seed: number,
  opts: { len?: string; slots?: number; rate?: number; nics?: string[]; pool?: string } = {},
) {
  for (const d of ['a', 'b'])
    await s.haven(
      'volume',
      'create',
      `${name}-${d}`,
      '--size',
      '16M',
      ...(opts.pool ? ['--pool', opts.pool] : []),
    );
  const g = ensureGuest();
  const cmd = `stream disk=vda,vdb seed=${seed} len=${opts.len ?? '4K'} rate=${opts.rate ?? 0} slots=${opts.slots ?? 64}`;
  await s.haven(
    'vm',
    'create',
    name,
    '--disk',
    `${name}-a`,
    '--disk',
    `${name}-b`,
    ...(opts.nics ?? []).flatMap((n) => ['--nic', n]),
    '--kernel',
    g.kernel,
    '--initrd',
    g.initrd,
    '--memory',
    '192M',
    '--cmdline',
    `console=ttyS0 quiet panic=-1 haven.disks=2 haven.cmd="${cmd}"`,
  );
  const len = opts.len ?? '4K';
  const stream = {
    disks: DISKS,
    len: Number.parseInt(len, 10) * (len.endsWith('K') ? 1024 : 1),
    slots: opts.slots ?? 64,
  };
  return { name, seed, volumes: [`${name}-a`, `${name}-b`], stream };
}

/**
 * The writes a streaming guest may have issued after the last one it reported: a guest killed (or
 * its report still in its tty buffer) after the write reached its disk. A replica may hold them, as
 * a longer prefix; the checker still requires every earlier write with them.
 */
function unreported(vm: StreamingVm, reported: readonly OrderedWrite[], n = 2): OrderedWrite[] {
  const next = (reported.at(-1)?.seq ?? -1) + 1;
  return Array.from({ length: n }, (_, i) => {
    const t = streamTarget(vm.stream, next + i);
    return { seq: next + i, disk: t.disk, offset: t.offset, length: vm.stream.len };
  });
}

export type StreamingVm = Awaited<ReturnType<typeof streamingVm>>;

/** The writes a VM's guest reported durable so far, in its order. */
export async function guestWrites(s: TestSite, vm: string): Promise<OrderedWrite[]> {
  // All of the log (the CLI shows its last 64 KiB): every write since the guest started.
  return writesIn(await s.text(`/vms/${vm}/console-log?bytes=999999999`)) as unknown as OrderedWrite[];
}

/** What a guest must never have said while its disks were replicated. */
export const GUEST_IO_ERROR = /"event":"error"|I\/O error|blk_update_request|Buffer I\/O/;

/**
 * Checks that the replica at checkpoint `snapshot` (at target `b`) holds a prefix of each VM's
 * writes; resolves with the checker's answer. `volume` maps a source volume to its replica.
 */
export async function checkReplica(
  b: TestSite,
  vms: readonly StreamingVm[],
  writes: Readonly<Record<string, readonly OrderedWrite[]>>,
  snapshot: string,
): Promise<Consistency> {
  // A replica is not exported (torn between checkpoints): its checkpoint is read through clones.
  const clones: string[] = [];
  try {
    for (const vm of vms)
      for (const volume of vm.volumes) {
        await b.api('POST', `/volumes/${volume}/clone`, { snapshot, name: `check-${volume}` });
        clones.push(`check-${volume}`);
      }
    return await checkExports(b, vms, writes, (volume) => `check-${volume}`);
  } finally {
    for (const c of clones) await b.api('DELETE', `/volumes/${c}`);
  }
}

/** The same over any exports of site `b`: `exportOf` names the one holding each VM volume. */
export async function checkExports(
  b: TestSite,
  vms: readonly StreamingVm[],
  writes: Readonly<Record<string, readonly OrderedWrite[]>>,
  exportOf: (volume: string) => string,
  /** The site and export holding each VM volume's content before the writes (default: zeroes). */
  initialOf?: (volume: string) => { site: TestSite; exp: string },
): Promise<Consistency> {
  const socket = join(b.dir, 'run', 'nbd.sock');
  const devices: BlockDevice[] = [];
  try {
    const writers = [];
    for (const vm of vms) {
      const disks: Record<string, (buf: Uint8Array, offset: number) => Promise<void>> = {};
      const initial: Record<string, (buf: Uint8Array, offset: number) => Promise<void>> = {};
      const reader = async (exp: string, at = socket) => {
        const dev = await connectNbd(`nbd+unix:///${encodeURIComponent(exp)}?socket=${at}`, {
          readOnly: true,
        });
        devices.push(dev);
        return async (buf: Uint8Array, offset: number) => void (await dev.read(buf, offset));
      };
      for (const [i, disk] of DISKS.entries()) {
        disks[disk] = await reader(exportOf(vm.volumes[i]!));
        if (initialOf) {
          const from = initialOf(vm.volumes[i]!);
          initial[disk] = await reader(from.exp, join(from.site.dir, 'run', 'nbd.sock'));
        }
      }
      writers.push({
        name: vm.name,
        seed: vm.seed,
        writes: [...(writes[vm.name] ?? []), ...unreported(vm, writes[vm.name] ?? [])],
        disks,
        ...(initialOf ? { initial } : {}),
      });
    }
    return await checkPrefixConsistency(writers);
  } finally {
    for (const d of devices) await d.close();
  }
}

/** A replication group as the API shows it (what the tests look at). */
export interface GroupView {
  paused?: boolean;
  source?: { state: string; link: string; appliedCheckpoint?: { seq: number }; journal?: { fill: number } };
}
export interface CheckpointView {
  seq: number;
  time: string;
  name?: string;
  snapshot: string;
}

export const replicationGroup = (s: TestSite, name: string) =>
  s.api<GroupView>('GET', `/replication/groups/${name}`);
export const replicaCheckpoints = (s: TestSite, name: string) =>
  s.api<CheckpointView[]>('GET', `/replication/groups/${name}/checkpoints`);

/**
 * Waits until the guest has reported two more writes than it had now: each write is issued after
 * the one before completed, so every write issued before now (the one in flight at most) is then
 * in its log — the writes any checkpoint taken before now can hold.
 */
export async function reportedPast(s: TestSite, vm: string): Promise<void> {
  const now = (await guestWrites(s, vm)).length;
  await eventually(
    `guest ${vm} to report 2 more writes`,
    () => guestWrites(s, vm),
    (w) => w.length >= now + 2,
  );
}

/** SHA-256 of the whole of export `exp` of site `s`, read over its NBD socket. */
export async function sha256OfExport(s: TestSite, exp: string): Promise<string> {
  const dev = await connectNbd(
    `nbd+unix:///${encodeURIComponent(exp)}?socket=${join(s.dir, 'run', 'nbd.sock')}`,
    {
      readOnly: true,
    },
  );
  try {
    const h = createHash('sha256');
    const buf = Buffer.alloc(1024 * 1024);
    for (let at = 0; at < dev.size; at += buf.length) {
      const n = Math.min(buf.length, dev.size - at);
      await dev.read(buf.subarray(0, n), at);
      h.update(buf.subarray(0, n));
    }
    return h.digest('hex');
  } finally {
    await dev.close();
  }
}
