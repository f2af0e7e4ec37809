import { createHash } from 'node:crypto';
import type { BlockDevice } from '../../block/index.js';
import { HavenError, errorMessage } from '../../common/index.js';
import { DIGEST_BYTES, ZERO_DIGEST, type Repository, type SnapshotManifest } from '../../repository/index.js';
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
  /** SHA-256 over the chunk digests in disk order: equal for equal disks. */
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
  const { idx, chunks } = await checkRestorable(repo, snapshot, diskNo, opts.ranges);
  const name = snapshot.disks[diskNo]!.name;
  if (target.size < idx.size)
    throw new HavenError(
      'INVALID_ARGUMENT',
      `the target (${target.size} bytes) is smaller than ${name} of snapshot ${snapshot.id} (${idx.size} bytes)`,
    );
  opts.signal?.throwIfAborted();
  const pool = openChunkPool(repo, idx.chunkSize, opts.workers);
  const digestOf = (c: number) => idx.digests.subarray(c * DIGEST_BYTES, (c + 1) * DIGEST_BYTES);
  const total = chunks.reduce((n, c) => n + Math.min(idx.chunkSize, idx.size - c * idx.chunkSize), 0);
  let done = 0;
  let dataBytes = 0;
  let zeroBytes = 0;
  try {
    await runChunks(chunks, idx.chunkSize, idx.size, pool, async (slot, c, offset, length) => {
      opts.signal?.throwIfAborted();
      const digest = digestOf(c);
      if (digest.equals(ZERO_DIGEST)) {
        if (!opts.fresh) await target.writeZeroes(offset, length);
        zeroBytes += length;
      } else {
        let n: number;
        try {
          n = await pool.load(slot, digest, repo.chunkDirectory ? undefined : await repo.getChunk(digest));
        } catch (err) {
          throw new HavenError(
            'CORRUPT',
            `snapshot ${snapshot.id} ${name}: the data at offset ${offset} (${length} bytes) is damaged: ${errorMessage(err)}`,
          );
        }
        if (n !== length)
          throw new HavenError(
            'CORRUPT',
            `snapshot ${snapshot.id} ${name}: chunk at offset ${offset} has ${n} bytes, not ${length}`,
          );
        await target.write(pool.buffer(slot, length), offset);
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
    digest: createHash('sha256').update(idx.digests).digest('hex'),
    seconds: (performance.now() - started) / 1000,
  };
}

/** Stat calls in flight while checking that a snapshot's chunks are there. */
const CHECK_PARALLEL = 32;

/**
 * Reads a disk's index (checked against the manifest's hash, which readIndex does) and checks
 * that it describes the disk the manifest names and that every chunk the restore needs exists.
 * Chunks are not read: a damaged one is found, and refused, as it is restored.
 */
export async function checkRestorable(
  repo: Repository,
  snapshot: SnapshotManifest,
  diskNo: number,
  ranges?: Range[],
): Promise<{ idx: Awaited<ReturnType<Repository['readIndex']>>; chunks: number[] }> {
  const disk = snapshot.disks[diskNo];
  if (!disk)
    throw new HavenError(
      'INVALID_ARGUMENT',
      `snapshot ${snapshot.id} has ${snapshot.disks.length} disk(s); there is no disk ${diskNo}`,
    );
  const idx = await repo.readIndex(snapshot, diskNo).catch((err: unknown) => {
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
  const chunks = chunkList(idx.count, idx.chunkSize, idx.size, ranges);
  const seen = new Set<string>();
  const wanted: { digest: Buffer; chunk: number }[] = [];
  for (const c of chunks) {
    const digest = idx.digests.subarray(c * DIGEST_BYTES, (c + 1) * DIGEST_BYTES);
    if (digest.equals(ZERO_DIGEST)) continue;
    const hex = digest.toString('hex');
    if (seen.has(hex)) continue;
    seen.add(hex);
    wanted.push({ digest, chunk: c });
  }
  const missing: number[] = [];
  let next = 0;
  const worker = async () => {
    while (next < wanted.length) {
      const w = wanted[next++]!;
      if (!(await repo.chunkStored(w.digest))) missing.push(w.chunk);
    }
  };
  await Promise.all(Array.from({ length: CHECK_PARALLEL }, worker));
  if (missing.length) {
    missing.sort((a, b) => a - b);
    const offsets = missing.slice(0, 5).map((c) => c * idx.chunkSize);
    throw new HavenError(
      'CORRUPT',
      `snapshot ${snapshot.id} ${disk.name}: ${missing.length} chunk(s) are missing from repository ${repo.location} (at offset(s) ${offsets.join(', ')}${missing.length > 5 ? ', …' : ''}): nothing was restored`,
    );
  }
  return { idx, chunks };
}

function chunkList(count: number, chunkSize: number, size: number, ranges?: Range[]): number[] {
  if (!ranges) return Array.from({ length: count }, (_, i) => i);
  const out: number[] = [];
  for (const r of [...ranges].sort((a, b) => a.offset - b.offset)) {
    if (r.length <= 0) continue;
    const first = Math.floor(r.offset / chunkSize);
    const last = Math.floor((Math.min(r.offset + r.length, size) - 1) / chunkSize);
    for (let c = Math.max(first, out.length ? out[out.length - 1]! + 1 : 0); c <= last; c++) out.push(c);
  }
  return out;
}
