import { HavenError } from '../../common/index.js';
import { GRANULE, PAGE_GRANULES, verify, type DiskIndex, type Repository } from '../../repository/index.js';
import { SnapshotDevice } from '../recovery/snapshot-device.js';
import { backup, type Range } from './engine.js';

export interface CopyReport {
  /** Snapshots copied now, and those the target had already (by id). */
  copied: { id: string; newChunks: number; storedBytes: number; readBytes: number }[];
  skipped: string[];
  /** Chunks the target lacked and was given (its own encoding: re-encrypted where keys differ). */
  newChunks: number;
  seconds: number;
}

/**
 * Copies snapshots (all, or `ids`) from one repository to another, keeping their ids, dates,
 * sources and tags: local to S3 and back, re-encrypted under the target's keys when they differ.
 * The one copy routine is the backup engine: each snapshot's disks are read as SnapshotDevices
 * and backed up into the target, so a chunk the target has is claimed, not sent. A snapshot
 * whose parent the target has already is copied as an incremental: only the granules whose
 * digests differ between the two in the source are read at all. Each copied snapshot is verified
 * in the target (every chunk read back and checked against its digest) before the next.
 */
export async function copySnapshots(
  from: Repository,
  to: Repository,
  opts: { ids?: string[]; onProgress?: (done: number, total: number) => void } = {},
): Promise<CopyReport> {
  const started = performance.now();
  const all = await from.listSnapshots();
  const want = opts.ids ? all.filter((s) => opts.ids!.includes(s.id)) : all;
  for (const id of opts.ids ?? [])
    if (!want.some((s) => s.id === id))
      throw new HavenError('NOT_FOUND', `no snapshot ${id} in ${from.location}`);
  const report: CopyReport = { copied: [], skipped: [], newChunks: 0, seconds: 0 };
  for (const s of want) {
    if (await to.hasSnapshot(s.id)) {
      report.skipped.push(s.id);
      continue;
    }
    // The newest earlier snapshot of the same source that the target holds: its index is the base.
    const base = [...all]
      .reverse()
      .find(
        (p) =>
          p.createdAt <= s.createdAt &&
          p.id !== s.id &&
          p.source.kind === s.source.kind &&
          p.source.name === s.source.name &&
          p.disks.length === s.disks.length &&
          p.disks.every((d, i) => d.size === s.disks[i]!.size) &&
          (report.copied.some((c) => c.id === p.id) || report.skipped.includes(p.id)),
      );
    const parent = base ? await to.snapshot(base.id) : undefined;
    const devices = await Promise.all(s.disks.map((_, i) => SnapshotDevice.open(from, s, i)));
    try {
      const disks = [];
      for (let i = 0; i < s.disks.length; i++) {
        const changed = base
          ? await changedRanges(await from.openIndex(base, i), await from.openIndex(s, i))
          : undefined;
        disks.push({ name: s.disks[i]!.name, device: devices[i]!, ...(changed ? { changed } : {}) });
      }
      const m = await backup(to, {
        id: s.id,
        createdAt: new Date(s.createdAt),
        source: s.source,
        disks,
        ...(parent ? { parent } : {}),
        ...(s.transport ? { transport: s.transport } : {}),
        consistency: {
          consistency: s.consistency,
          ...(s.consistencyReason ? { reason: s.consistencyReason } : {}),
        },
        ...(s.vm !== undefined ? { vm: s.vm } : {}),
        tags: s.tags,
        ...(opts.onProgress ? { onProgress: opts.onProgress } : {}),
      });
      const v = await verify(to, [m.id]);
      if (v.damaged.length || v.damagedChunks)
        throw new HavenError(
          'CORRUPT',
          `snapshot ${m.id} copied to ${to.location} does not verify: ${v.damagedChunks} damaged chunks`,
        );
      report.copied.push({
        id: m.id,
        newChunks: m.stats.newChunks,
        storedBytes: m.stats.storedBytes,
        readBytes: m.stats.readBytes,
      });
      report.newChunks += m.stats.newChunks;
    } finally {
      await Promise.all(devices.map((d) => d.close()));
    }
  }
  report.seconds = (performance.now() - started) / 1000;
  return report;
}

/** The byte ranges where two indexes of one repository (same digests) differ, granule by granule. */
async function changedRanges(a: DiskIndex, b: DiskIndex): Promise<Range[]> {
  const out: Range[] = [];
  const add = (g: number) => {
    const offset = g * GRANULE;
    const length = Math.min(GRANULE, b.size - offset);
    const last = out[out.length - 1];
    if (last && last.offset + last.length === offset) last.length += length;
    else out.push({ offset, length });
  };
  for (let p = 0; p < b.pages; p++) {
    const da = a.pageDigest(p);
    const db = b.pageDigest(p);
    if (da && db && da.equals(db)) continue; // the page is the same: every granule in it
    const pa = await a.page(p);
    const pb = await b.page(p);
    for (let i = 0; i < pb.count; i++)
      if (i >= pa.count || !pa.digest(i).equals(pb.digest(i)) || pa.part(i) !== pb.part(i))
        add(p * PAGE_GRANULES + i);
  }
  return out;
}
