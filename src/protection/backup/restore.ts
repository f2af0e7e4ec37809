import type { BlockDevice } from '../../block/index.js';
import { HavenError, errorMessage } from '../../common/index.js';
import type { DiskIndex, Repository, Run, SnapshotManifest } from '../../repository/index.js';
import { openChunkPool, runChunks, type Range } from './engine.js';

export interface RestoreOptions {
  /** The target reads as zeroes already (a new file or volume): zero chunks are not written. */
  fresh?: boolean;
  /** Only these ranges (quick rollback: what changed since the backup); default: the whole disk. */
  ranges?: Range[];
  signal?: AbortSignal;
  onProgress?: (done: number, total: number) => void;
  workers?: number;
}

export interface RestoreResult {
  snapshot: string;
  disk: string;
  size: number;
  dataBytes: number;
  zeroBytes: number;
  /** SHA-256 over the index's granules (chunk digest and part) in disk order: equal for equally stored disks. */
  digest: string;
  seconds: number;
}

/**
 * Writes one disk of a snapshot to a block device. Before the first write the snapshot is checked
 * as far as it can be without reading every chunk: its index matches the hash in the manifest and
 * the disk's size, and every chunk it needs is in the repository; so a target (a volume, an NBD
 * export, a block device: written in place) is never touched by a restore that cannot finish for
 * a reason known in advance. Chunks are fetched in parallel and decoded by
 * worker threads, each checked against its digest (the hash recorded when the data entered the
 * repository) before it is written; a damaged chunk fails the restore naming its offset, and
 * nothing of it is written. Holes are not written to a fresh target.
 */
export async function restore(
  repo: Repository,
  snapshot: SnapshotManifest,
  diskNo: number,
  target: BlockDevice,
  opts: RestoreOptions = {},
): Promise<RestoreResult> {
  const started = performance.now();
  const { idx } = await checkRestorable(repo, snapshot, diskNo, opts.ranges);
  const name = snapshot.disks[diskNo]!.name;
  if (target.size < idx.size)
    throw new HavenError(
      'INVALID_ARGUMENT',
      `the target (${target.size} bytes) is smaller than ${name} of snapshot ${snapshot.id} (${idx.size} bytes)`,
    );
  opts.signal?.throwIfAborted();
  const pool = openChunkPool(repo, idx.chunkSize, opts.workers);
  const spans = opts.ranges ? disjointRanges(opts.ranges) : [{ offset: 0, length: idx.size }];
  const total = spans.reduce((n, r) => n + Math.min(r.length, idx.size - r.offset), 0);
  let done = 0;
  let dataBytes = 0;
  let zeroBytes = 0;
  try {
    await runChunks(runsOf(idx, spans), pool, async (slot, run) => {
      opts.signal?.throwIfAborted();
      const { offset, length } = run;
      if (run.zero) {
        if (!opts.fresh) await target.writeZeroes(offset, length);
        zeroBytes += length;
      } else {
        const digest = run.digest;
        let n: number;
        try {
          n = await pool.load(slot, digest, pool.ownBackend ? undefined : await repo.getChunk(digest));
        } catch (err) {
          throw new HavenError(
            'CORRUPT',
            `snapshot ${snapshot.id} ${name}: the data at offset ${offset} (${length} bytes) is damaged: ${errorMessage(err)}`,
          );
        }
        if (n < run.at + length)
          throw new HavenError(
            'CORRUPT',
            `snapshot ${snapshot.id} ${name}: chunk at offset ${offset} has ${n} bytes, not ${run.at + length}`,
          );
        await target.write(pool.buffer(slot, run.at + length).subarray(run.at), offset);
        dataBytes += length;
      }
      done += length;
      opts.onProgress?.(done, total);
    });
    await target.flush();
  } finally {
    await pool.close();
  }
  return {
    snapshot: snapshot.id,
    disk: name,
    size: idx.size,
    dataBytes,
    zeroBytes,
    digest: await idx.fingerprint(),
    seconds: (performance.now() - started) / 1000,
  };
}

/** The index's runs within `spans` (sorted, disjoint), each whole granules. */
async function* runsOf(idx: DiskIndex, spans: Range[]): AsyncGenerator<Run> {
  for (const r of spans) yield* idx.runs(r.offset, r.offset + r.length);
}

/** Stat calls in flight while checking that a snapshot's chunks are there. */
const CHECK_PARALLEL = 32;

/**
 * Opens a disk's index (checked against the manifest's hash, which openIndex does) and checks
 * that it describes the disk the manifest names and that every chunk the restore needs exists.
 * Chunks are not read: a damaged one is found, and refused, as it is restored.
 */
export async function checkRestorable(
  repo: Repository,
  snapshot: SnapshotManifest,
  diskNo: number,
  ranges?: Range[],
): Promise<{ idx: DiskIndex }> {
  const disk = snapshot.disks[diskNo];
  if (!disk)
    throw new HavenError(
      'INVALID_ARGUMENT',
      `snapshot ${snapshot.id} has ${snapshot.disks.length} disk(s); there is no disk ${diskNo}`,
    );
  const idx = await repo.openIndex(snapshot, diskNo).catch((err: unknown) => {
    if (err instanceof HavenError && err.code === 'NOT_FOUND')
      throw new HavenError(
        'CORRUPT',
        `snapshot ${snapshot.id} ${disk.name}: its index is missing from repository ${repo.location}: nothing was restored`,
      );
    throw err;
  });
  if (idx.size !== disk.size)
    throw new HavenError(
      'CORRUPT',
      `snapshot ${snapshot.id} ${disk.name}: its index describes ${idx.size} bytes, its manifest ${disk.size}: nothing was restored`,
    );
  const seen = new Set<string>();
  const wanted: { digest: Buffer; offset: number }[] = [];
  const spans = ranges ? disjointRanges(ranges) : [{ offset: 0, length: idx.size }];
  for await (const r of runsOf(idx, spans)) {
    if (r.zero) continue;
    const hex = r.digest.toString('hex');
    if (seen.has(hex)) continue;
    seen.add(hex);
    wanted.push({ digest: r.digest, offset: r.offset });
  }
  const missing: number[] = [];
  let next = 0;
  const worker = async () => {
    while (next < wanted.length) {
      const w = wanted[next++]!;
      if (!(await repo.chunkStored(w.digest))) missing.push(w.offset);
    }
  };
  await Promise.all(Array.from({ length: CHECK_PARALLEL }, worker));
  if (missing.length) {
    missing.sort((a, b) => a - b);
    throw new HavenError(
      'CORRUPT',
      `snapshot ${snapshot.id} ${disk.name}: ${missing.length} chunk(s) are missing from repository ${repo.location} (at offset(s) ${missing.slice(0, 5).join(', ')}${missing.length > 5 ? ', …' : ''}): nothing was restored`,
    );
  }
  return { idx };
}

/** Ranges sorted and merged where they overlap or touch. */
function disjointRanges(ranges: Range[]): Range[] {
  const out: Range[] = [];
  for (const r of [...ranges].filter((x) => x.length > 0).sort((a, b) => a.offset - b.offset)) {
    const last = out[out.length - 1];
    if (last && r.offset <= last.offset + last.length)
      last.length = Math.max(last.length, r.offset + r.length - last.offset);
    else out.push({ offset: r.offset, length: r.length });
  }
  return out;
}
