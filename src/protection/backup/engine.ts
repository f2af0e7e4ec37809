import { EXTENT_ZERO, type BlockDevice } from '../../block/index.js';
import { HavenError } from '../../common/index.js';
import {
  DIGEST_BYTES,
  INDEX_HEADER,
  ZERO_DIGEST,
  indexBytes,
  writeIndexHeader,
  type BackupStats,
  type Repository,
  type SnapshotManifest,
} from '../../repository/index.js';
import { ChunkPool } from './chunk-pool.js';
import type { ConsistencyRecord } from './quiesce.js';

export interface Range {
  offset: number;
  length: number;
}

export interface BackupDisk {
  name: string;
  /** A read-only, point-in-time view of the disk. */
  device: BlockDevice;
  /**
   * For an incremental: the ranges changed since the parent snapshot was taken. Everything else
   * is taken from the parent's index without reading it. Absent: read every allocated extent.
   */
  changed?: Range[];
}

export interface BackupOptions {
  source: { kind: string; name: string };
  disks: BackupDisk[];
  /** The snapshot the `changed` ranges are relative to. */
  parent?: SnapshotManifest;
  bitmap?: { name: string; epoch?: string };
  /** How the source was read (recorded in the manifest). */
  transport?: string;
  /** Whether the guest was quiesced (recorded; default crash-consistent). */
  consistency?: ConsistencyRecord;
  vm?: unknown;
  tags?: string[];
  signal?: AbortSignal;
  onProgress?: (done: number, total: number) => void;
  /** Worker threads (default: one per core). */
  workers?: number;
  /** A pool started beforehand (its threads boot while the source opens); the caller closes it. */
  pool?: ChunkPool;
}

/**
 * Backs disks up into a repository as one snapshot. A full backup reads only allocated,
 * non-zero extents (block status); an incremental reads only the changed ranges and takes the
 * rest from the parent's index. Chunks are read straight into a shared arena, encoded by worker
 * threads (hash, zstd, AES-GCM), and written with bounded concurrency; memory is bounded by the
 * arena whatever the disk size. The snapshot becomes visible only once everything is durable.
 */
export async function backup(repo: Repository, opts: BackupOptions): Promise<SnapshotManifest> {
  const started = performance.now();
  const chunkSize = repo.config.chunkSize;
  const id = repo.newSnapshotId();
  const session = await repo.beginSession(opts.parent?.id);
  const pool = opts.pool ?? openChunkPool(repo, chunkSize, opts.workers);
  const known = new KnownChunks();
  const run = pool.newBackup();
  const stats: BackupStats = { readBytes: 0, newChunks: 0, storedBytes: 0, reusedChunks: 0, seconds: 0 };
  try {
    const plans = await Promise.all(opts.disks.map((d, i) => plan(repo, d, i, opts.parent, chunkSize)));
    const total = plans.reduce((n, p) => n + p.bytes, 0);
    let done = 0;
    const disks: SnapshotManifest['disks'] = [];
    for (let i = 0; i < opts.disks.length; i++) {
      const disk = opts.disks[i]!;
      const p = plans[i]!;
      await runChunks(p.chunks, chunkSize, disk.device.size, pool, async (slot, chunk, offset, length) => {
        opts.signal?.throwIfAborted();
        const buf = pool.buffer(slot, length);
        const parts = p.partial?.get(chunk);
        if (parts) {
          // Only part of the chunk changed: the rest comes from the parent's copy in the
          // repository, and only the changed bytes are read from the source.
          const base = p.index.subarray(
            INDEX_HEADER + chunk * DIGEST_BYTES,
            INDEX_HEADER + (chunk + 1) * DIGEST_BYTES,
          );
          if (base.equals(ZERO_DIGEST)) buf.fill(0);
          else {
            const digest = Buffer.from(base);
            const n = await pool.load(
              slot,
              digest,
              repo.chunkDirectory ? undefined : await repo.getChunk(digest),
            );
            if (n !== length)
              throw new HavenError(
                'CORRUPT',
                `parent chunk ${chunk} of ${disk.name} has ${n} bytes, not ${length}`,
              );
          }
          for (const [start, len] of parts) {
            await disk.device.read(buf.subarray(start, start + len), offset + start);
            stats.readBytes += len;
          }
        } else {
          await disk.device.read(buf, offset);
          stats.readBytes += length;
        }
        // Hashed first: a chunk the repository has is never compressed or encrypted. A local
        // repository's worker stores it in the same hand-off (its own calls see if it exists).
        const h = await pool.put(slot, length, run);
        const at = INDEX_HEADER + chunk * DIGEST_BYTES;
        if (h.zero) ZERO_DIGEST.copy(p.index, at);
        else {
          h.digest.copy(p.index, at);
          if (h.stored) {
            // Workers store at once what they meet at once: whichever reply comes first, the
            // chunk counts as new once if one of them wrote it (each reply counts one chunk).
            const n = known.note(h.digest, !h.stored.existed);
            if (n === 'reused') stats.reusedChunks++;
            else {
              stats.newChunks++;
              stats.storedBytes += h.stored.storedBytes;
            }
          } else if (!known.add(h.digest)) stats.reusedChunks++;
          else {
            const s = await pool.store(slot, length, h.digest);
            const isNew = s.stored ? await repo.putChunk(h.digest, s.stored) : !s.existed;
            if (isNew) {
              stats.newChunks++;
              stats.storedBytes += s.storedBytes;
            } else stats.reusedChunks++;
          }
        }
        done += length;
        opts.onProgress?.(done, total);
      });
      stats.reusedChunks += p.count - p.chunks.length;
      const { key, sha256 } = await repo.writeIndex(id, i, p.index);
      let dataChunks = 0;
      for (let c = 0; c < p.count; c++)
        if (
          !p.index
            .subarray(INDEX_HEADER + c * DIGEST_BYTES, INDEX_HEADER + (c + 1) * DIGEST_BYTES)
            .equals(ZERO_DIGEST)
        )
          dataChunks++;
      disks.push({
        name: disk.name,
        size: disk.device.size,
        chunkSize,
        index: key,
        indexSha256: sha256,
        dataChunks,
        zeroChunks: p.count - dataChunks,
      });
    }
    stats.seconds = (performance.now() - started) / 1000;
    const manifest: SnapshotManifest = {
      id,
      version: 1,
      createdAt: new Date().toISOString(),
      source: opts.source,
      disks,
      ...(opts.parent && opts.disks.every((d) => d.changed) ? { parent: opts.parent.id } : {}),
      ...(opts.bitmap ? { bitmap: opts.bitmap } : {}),
      ...(opts.transport ? { transport: opts.transport } : {}),
      consistency: opts.consistency?.consistency ?? 'crash',
      ...(opts.consistency?.consistency === 'application'
        ? {}
        : { consistencyReason: opts.consistency?.reason ?? 'the source was read as it was, not quiesced' }),
      ...(opts.vm !== undefined ? { vm: opts.vm } : {}),
      stats,
      tags: opts.tags ?? [],
    };
    await repo.commitSnapshot(manifest);
    return manifest;
  } finally {
    if (!opts.pool) await pool.close();
    await session.end();
  }
}

export function openChunkPool(repo: Repository, chunkSize: number, workers?: number): ChunkPool {
  return new ChunkPool(repo.keys, chunkSize, {
    ...(workers ? { workers } : {}),
    ...(repo.chunkDirectory ? { chunkRoot: repo.chunkDirectory } : {}),
  });
}

/**
 * Digests this backup has stored or found in the repository already, so a chunk seen twice is
 * looked up once. Bounded: past the limit, lookups go to the repository (a stat per chunk).
 */
class KnownChunks {
  /** Digest (latin1) → whether this backup wrote it (else it was in the repository). */
  private readonly map = new Map<string, boolean>();
  constructor(private readonly limit = 1 << 18) {}

  /** Adds a digest (to be written); false if it was known. */
  add(digest: Buffer): boolean {
    const k = digest.toString('latin1');
    if (this.map.has(k)) return false;
    if (this.map.size < this.limit) this.map.set(k, true);
    return true;
  }

  /**
   * Notes a digest a worker wrote (`wrote`) or found stored; how to count it: `new`, `reused`,
   * or `late`: new after all (the writer's reply came after that of a worker that found the
   * chunk just written, which counted as reused).
   */
  note(digest: Buffer, wrote: boolean): 'new' | 'reused' | 'late' {
    const k = digest.toString('latin1');
    const was = this.map.get(k);
    if (was === undefined) {
      if (this.map.size < this.limit) this.map.set(k, wrote);
      return wrote ? 'new' : 'reused';
    }
    if (!wrote || was) return 'reused';
    this.map.set(k, true);
    return 'late';
  }
}

interface Plan {
  index: Buffer;
  count: number;
  /** Chunk numbers to read, ascending. */
  chunks: number[];
  bytes: number;
  /** Incremental: chunks of which only these [start, length] parts changed. */
  partial?: Map<number, [number, number][]>;
}

async function plan(
  repo: Repository,
  disk: BackupDisk,
  diskNo: number,
  parent: SnapshotManifest | undefined,
  chunkSize: number,
): Promise<Plan> {
  const size = disk.device.size;
  const count = Math.ceil(size / chunkSize);
  const index = Buffer.alloc(indexBytes({ chunkSize, size, count }));
  writeIndexHeader(index, { chunkSize, size, count });
  let ranges: Range[];
  let incremental = false;
  /** Incremental: chunks below this are whole in both the parent and the disk, and taken from the parent. */
  let common = 0;
  const base = parent?.disks[diskNo];
  if (disk.changed && parent && base && base.chunkSize === chunkSize) {
    // A disk resized since the parent (a volume grown): what both have in whole chunks comes from
    // the parent where unchanged; the rest (the old last chunk, the new space) is read as in a full.
    common = Math.floor(Math.min(base.size, size) / chunkSize);
    const prev = await repo.readIndex(parent, diskNo);
    prev.digests.copy(index, INDEX_HEADER, 0, common * DIGEST_BYTES);
    ranges = disk.changed;
    if (common < count) {
      // Past the common chunks, block status says what to read (as in a full backup): the bitmap
      // marks all the new space changed, most of it never written.
      const edge = common * chunkSize;
      ranges = ranges
        .filter((r) => r.offset < edge)
        .map((r) => ({ offset: r.offset, length: Math.min(r.length, edge - r.offset) }))
        .concat(await allocated(disk.device, edge));
    }
    incremental = true;
  } else ranges = await allocated(disk.device);
  const chunks: number[] = [];
  // Incremental: the changed parts of chunks that did not change whole, relative to the chunk.
  const partial = incremental ? new Map<number, [number, number][]>() : undefined;
  let bytes = 0;
  for (const r of disjoint(ranges)) {
    const end = Math.min(r.offset + r.length, size);
    if (end <= r.offset) continue;
    for (let c = Math.floor(r.offset / chunkSize); c <= Math.floor((end - 1) / chunkSize); c++) {
      const cStart = c * chunkSize;
      const cLen = Math.min(chunkSize, size - cStart);
      if (chunks[chunks.length - 1] !== c) {
        chunks.push(c);
        bytes += cLen;
      }
      if (partial) {
        const from = Math.max(r.offset, cStart) - cStart;
        const to = Math.min(end, cStart + cLen) - cStart;
        const list = partial.get(c) ?? [];
        const last = list[list.length - 1];
        if (last && last[0] + last[1] === from) last[1] += to - from;
        else list.push([from, to - from]);
        partial.set(c, list);
      }
    }
  }
  // A chunk changed whole is read whole; so is one the parent does not have whole.
  if (partial)
    for (const [c, list] of partial)
      if (
        c >= common ||
        (list.length === 1 && list[0]![0] === 0 && list[0]![1] === Math.min(chunkSize, size - c * chunkSize))
      )
        partial.delete(c);
  return { index, count, chunks, bytes, ...(partial ? { partial } : {}) };
}

/** Ranges sorted and merged where they overlap or touch (a chunk is then planned once). */
function disjoint(ranges: Range[]): Range[] {
  const out: Range[] = [];
  for (const r of [...ranges].sort((a, b) => a.offset - b.offset)) {
    const last = out[out.length - 1];
    if (last && r.offset <= last.offset + last.length)
      last.length = Math.max(last.length, r.offset + r.length - last.offset);
    else out.push({ offset: r.offset, length: r.length });
  }
  return out;
}

/** The extents of a device (from `from` on) that may hold data (not known to read as zeroes), merged. */
export async function allocated(device: BlockDevice, from = 0): Promise<Range[]> {
  const out: Range[] = [];
  let at = from;
  while (at < device.size) {
    const extents = await device.blockStatus(at, Math.min(device.size - at, 2 ** 30));
    for (const e of extents) {
      if (!(e.flags & EXTENT_ZERO)) {
        const last = out[out.length - 1];
        if (last && last.offset + last.length === e.offset) last.length += e.length;
        else out.push({ offset: e.offset, length: e.length });
      }
      at = e.offset + e.length;
    }
    if (extents.length === 0) throw new HavenError('PROTOCOL', 'block status returned no extent');
  }
  return out;
}

/** Runs `fn` for each chunk with as many in flight as the pool has slots; fails on the first error. */
export async function runChunks(
  chunks: Iterable<number>,
  chunkSize: number,
  size: number,
  pool: ChunkPool,
  fn: (slot: number, chunk: number, offset: number, length: number) => Promise<void>,
): Promise<void> {
  let failure: unknown;
  const running = new Set<Promise<void>>();
  for (const c of chunks) {
    if (failure) break;
    const slot = await pool.acquire();
    if (failure) {
      pool.release(slot);
      break;
    }
    const offset = c * chunkSize;
    const p = fn(slot, c, offset, Math.min(chunkSize, size - offset))
      .catch((err: unknown) => {
        failure ??= err;
      })
      .finally(() => {
        pool.release(slot);
        running.delete(p);
      });
    running.add(p);
  }
  await Promise.all(running);
  if (failure) throw failure;
}
