import { HavenError, errorMessage } from '../common/index.js';
import { GRANULE, PAGE_GRANULES, ZERO_DIGEST, chunkKey } from './format.js';
import type { Repository, SnapshotInfo } from './repository.js';

/** Where a rolling verify is up to. */
const ROLLING_CURSOR = 'state/verify-rolling.json';

export interface VerifyOptions {
  onProgress?: (done: number, total: number) => void;
  concurrency?: number;
  /**
   * Check one slice of the chunks out of `rolling` per run (by digest), the next slice each run,
   * so that `rolling` runs check them all: a bounded verify for large repositories.
   */
  rolling?: number;
}

export interface VerifyReport {
  /** A rolling verify: the slice of the chunks this run checked (the next run checks the next). */
  slice?: { index: number; of: number };
  /** The snapshots checked (those whose manifest reads). */
  snapshots: string[];
  /** Chunks checked: the data chunks the snapshots use, and their index pages. */
  chunks: number;
  bytes: number;
  damagedChunks: number;
  /**
   * Per damaged snapshot and disk: the byte offsets whose data is lost, and why. A damaged
   * manifest is reported with disk "(manifest)", a damaged index with no offsets.
   */
  damaged: { snapshot: string; disk: string; offsets: number[]; reason: string }[];
  /** Every damaged chunk file, each with its own reason and how many places use it. */
  chunkDamage: { key: string; reason: string; uses: number }[];
  /** A rolling verify whose cursor could not be saved: the next run checks this slice again. */
  cursorError?: string;
}

interface Use {
  snapshot: string;
  disk: string;
  offset: number;
  /** Where on the disk the chunk's start would be (runs of one use share it). */
  chunkAt: number;
}

/**
 * Reads and checks every chunk the chosen snapshots use (each chunk once), and their indexes.
 * Damage is reported per snapshot with the disk and byte offsets that depend on it, and per chunk
 * file with its own reason. A damaged manifest is damage to report, not a reason to stop: the
 * other snapshots are checked. A snapshot named that does not exist is an error (NOT_FOUND).
 */
export async function verifySnapshots(
  repo: Repository,
  ids?: string[],
  opts: VerifyOptions = {},
): Promise<VerifyReport> {
  let slice: { index: number; of: number } | undefined;
  if (opts.rolling !== undefined) {
    if (!Number.isInteger(opts.rolling) || opts.rolling < 1 || opts.rolling > 65536)
      throw new HavenError(
        'INVALID_ARGUMENT',
        `--rolling must be a whole number from 1 to 65536, not ${opts.rolling}`,
      );
    slice = { index: await rollingCursor(repo, opts.rolling), of: opts.rolling };
  }
  const damaged: VerifyReport['damaged'] = [];
  const snaps: SnapshotInfo[] = [];
  if (ids)
    for (const id of ids)
      try {
        snaps.push(await repo.snapshot(id));
      } catch (err) {
        if (!(err instanceof HavenError && err.code === 'CORRUPT')) throw err;
        damaged.push({ snapshot: id, disk: '(manifest)', offsets: [], reason: errorMessage(err) });
      }
  else {
    const scan = await repo.scanSnapshots();
    snaps.push(...scan.snapshots);
    for (const d of scan.damaged)
      damaged.push({ snapshot: d.id, disk: '(manifest)', offsets: [], reason: d.reason });
  }
  // digest → where it is used
  const uses = new Map<string, Use[]>();
  const pages = new Set<string>();
  /** Damaged index pages (chunks too): reason, and where each is used. */
  const badPages = new Map<string, string>();
  for (const s of snaps)
    for (let d = 0; d < s.disks.length; d++) {
      const disk = s.disks[d]!.name;
      let idx;
      try {
        idx = await repo.openIndex(s, d);
      } catch (err) {
        damaged.push({ snapshot: s.id, disk, offsets: [], reason: errorMessage(err) });
        continue;
      }
      // Page by page: a page is a chunk, read and checked against its digest here; a damaged one
      // is reported as damaged chunks are (its file, and the disk offsets that depend on it).
      const span = PAGE_GRANULES * GRANULE;
      for (let p = 0; p < idx.pages; p++) {
        const pd = idx.pageDigest(p);
        const pageHex = pd && !pd.equals(ZERO_DIGEST) ? pd.toString('hex') : undefined;
        // (counted in their slice, so that a rolling verify's runs add up to a whole one)
        const counted = pageHex !== undefined && (!slice || inSlice(pd!, slice));
        if (counted) pages.add(pageHex);
        try {
          for await (const r of idx.runs(p * span, (p + 1) * span)) {
            if (r.zero) continue;
            const dg = r.digest;
            if (slice && !inSlice(dg, slice)) continue;
            const hex = dg.toString('hex');
            let list = uses.get(hex);
            if (!list) uses.set(hex, (list = []));
            const last = list[list.length - 1];
            // A chunk's runs on one disk (a full backup's chunk is one run) are one use, at its first.
            if (!(last && last.snapshot === s.id && last.disk === disk && last.chunkAt === r.offset - r.at))
              list.push({ snapshot: s.id, disk, offset: r.offset, chunkAt: r.offset - r.at });
          }
        } catch (err) {
          if (!pageHex || !counted) {
            if (!pageHex)
              damaged.push({ snapshot: s.id, disk, offsets: [p * span], reason: errorMessage(err) });
            continue;
          }
          badPages.set(pageHex, errorMessage(err));
          let list = uses.get(pageHex);
          if (!list) uses.set(pageHex, (list = []));
          list.push({ snapshot: s.id, disk, offset: p * span, chunkAt: p * span });
        }
      }
    }
  const codec = repo.codec();
  const bad = new Map<string, string>();
  const digests = [...uses.keys()];
  let next = 0;
  let done = 0;
  let bytes = 0;
  const worker = async () => {
    while (next < digests.length) {
      const hex = digests[next++]!;
      if (badPages.has(hex)) continue; // read already: damaged
      const digest = Buffer.from(hex, 'hex');
      try {
        const stored = await repo.getChunk(digest);
        bytes += codec.decode(stored, digest).length;
      } catch (err) {
        bad.set(hex, errorMessage(err));
      }
      opts.onProgress?.(++done, digests.length);
    }
  };
  await Promise.all(Array.from({ length: opts.concurrency ?? 4 }, worker));
  for (const [hex, reason] of badPages) bad.set(hex, reason);
  // A snapshot forgotten while this ran (prune and gc beside a verify) is no damage: its chunks
  // may be gone. Only what still exists is reported.
  if (bad.size) {
    const gone = new Set<string>();
    for (const id of new Set([...bad.keys()].flatMap((hex) => uses.get(hex)!.map((u) => u.snapshot))))
      if (!(await repo.backend.exists(`snapshots/${id}/manifest.json`))) gone.add(id);
    for (const [hex, list] of uses) {
      const kept = list.filter((u) => !gone.has(u.snapshot));
      if (kept.length) uses.set(hex, kept);
      else {
        uses.delete(hex);
        bad.delete(hex);
      }
    }
  }
  const byDisk = new Map<
    string,
    { snapshot: string; disk: string; offsets: number[]; reasons: Set<string> }
  >();
  for (const [hex, reason] of bad)
    for (const u of uses.get(hex)!) {
      const k = `${u.snapshot}/${u.disk}`;
      let e = byDisk.get(k);
      if (!e) byDisk.set(k, (e = { snapshot: u.snapshot, disk: u.disk, offsets: [], reasons: new Set() }));
      e.offsets.push(u.offset);
      e.reasons.add(reason);
    }
  for (const e of byDisk.values())
    damaged.push({
      snapshot: e.snapshot,
      disk: e.disk,
      offsets: e.offsets.sort((a, b) => a - b),
      reason:
        e.reasons.size === 1
          ? [...e.reasons][0]!
          : `${e.offsets.length} damaged chunks, for ${e.reasons.size} reasons (each chunk is named)`,
    });
  const report: VerifyReport = {
    ...(slice ? { slice } : {}),
    snapshots: snaps.map((s) => s.id),
    chunks: digests.length - badPages.size + pages.size,
    bytes,
    damagedChunks: bad.size,
    damaged,
    chunkDamage: [...bad]
      .map(([hex, reason]) => ({ key: chunkKey(hex), reason, uses: uses.get(hex)!.length }))
      .sort((a, b) => a.key.localeCompare(b.key)),
  };
  if (slice)
    try {
      await repo.backend.write(
        ROLLING_CURSOR,
        Buffer.from(JSON.stringify({ of: slice.of, next: (slice.index + 1) % slice.of }) + '\n'),
      );
    } catch (err) {
      // The slice was checked; only the record of it is missing (a read-only repository).
      report.cursorError = `the rolling cursor cannot be saved, so the next run checks slice ${slice.index + 1} again: ${errorMessage(err)}`;
    }
  return report;
}

/** The slice a rolling verify checks next (restarting at 0 when the number of slices changes). */
async function rollingCursor(repo: Repository, of: number): Promise<number> {
  try {
    const c = JSON.parse((await repo.backend.read(ROLLING_CURSOR)).toString('utf8')) as {
      of: number;
      next: number;
    };
    return c.of === of && Number.isInteger(c.next) && c.next >= 0 && c.next < of ? c.next : 0;
  } catch {
    return 0;
  }
}

/** Whether a digest falls in a rolling verify's slice. */
function inSlice(digest: Buffer, slice: { index: number; of: number }): boolean {
  return Math.floor((digest.readUInt16BE(0) * slice.of) / 65536) === slice.index;
}
