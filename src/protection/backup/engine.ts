import { EXTENT_ZERO, type BlockDevice } from '../../block/index.js';
import { HavenError } from '../../common/index.js';
import {
  GRANULE,
  ZERO_DIGEST,
  type BackupStats,
  IndexWriter,
  type DiskIndex,
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
  /** The snapshot's time (default now): a scheduled backup is dated by the scheduler's clock. */
  createdAt?: Date;
  /** The snapshot's id (default: a new one); a copy keeps its source's. */
  id?: string;
  signal?: AbortSignal;
  onProgress?: (done: number, total: number) => void;
  /** Worker threads (default: one per core). */
  workers?: number;
  /** A pool started beforehand (its threads boot while the source opens); the caller closes it. */
  pool?: ChunkPool;
}

/**
 * Backs disks up into a repository as one snapshot. A full backup reads only allocated,
 * non-zero extents (block status); an incremental reads only the changed granules and takes the
 * rest from the parent's index, writing only the index pages the change touched. Chunks are read straight into a shared arena, encoded by worker
 * threads (hash, zstd, AES-GCM), and written with bounded concurrency; memory is bounded by the
 * arena whatever the disk size. The snapshot becomes visible only once everything is durable.
 */
export async function backup(repo: Repository, opts: BackupOptions): Promise<SnapshotManifest> {
  const started = performance.now();
  const chunkSize = repo.config.chunkSize;
  const id = opts.id ?? repo.newSnapshotId(opts.createdAt);
  const session = await repo.beginSession(opts.parent?.id);
  const pool = opts.pool ?? openChunkPool(repo, chunkSize, opts.workers);
  const known = new KnownChunks();
  const run = pool.newBackup();
  const stats: BackupStats = {
    readBytes: 0,
    newChunks: 0,
    storedBytes: 0,
    newBytes: 0,
    reusedChunks: 0,
    seconds: 0,
  };
  let newBytes = 0;
  try {
    const plans = await Promise.all(opts.disks.map((d, i) => plan(repo, pool, d, i, opts.parent, chunkSize)));
    const total = plans.reduce((n, p) => n + p.bytes, 0);
    let done = 0;
    const disks: SnapshotManifest['disks'] = [];
    for (let i = 0; i < opts.disks.length; i++) {
      const disk = opts.disks[i]!;
      const p = plans[i]!;
      const index = new IndexWriter(
        repo,
        disk.device.size,
        chunkSize,
        p.pieces,
        p.base,
        p.common,
        (plain, d) => storeThroughPool(repo, pool, plain, d),
      );
      // Each piece's index page is ready before the piece takes a slot (reading the parent's page
      // takes one: a piece holding its slot while it waited for one could starve them all).
      // Pages are read a few pages ahead, so the pipeline does not stop at each.
      const prepared = async function* () {
        const ahead: Promise<void>[] = [];
        let next = 0;
        for (const piece of p.pieces) {
          while (next < p.pieces.length && ahead.length < PAGES_AHEAD) {
            const at = index.prepare(p.pieces[next++]!);
            at.catch(() => undefined); // seen when awaited
            ahead.push(at);
          }
          await ahead.shift();
          yield piece;
        }
      };
      await runChunks(prepared(), pool, async (slot, piece) => {
        opts.signal?.throwIfAborted();
        const buf = pool.buffer(slot, piece.length);
        await disk.device.read(buf, piece.offset);
        stats.readBytes += piece.length;
        // Hashed first: a chunk the repository has is never compressed or encrypted. A worker
        // with its own backend stores it in the same hand-off (its own calls see if it exists).
        const h = await pool.put(slot, piece.length, run);
        if (h.zero) await index.set(piece, ZERO_DIGEST);
        else {
          if (h.stored) {
            // Workers store at once what they meet at once: whichever reply comes first, the
            // chunk counts as new once if one of them wrote it (each reply counts one chunk).
            const n = known.note(h.digest, !h.stored.existed);
            if (n === 'reused') stats.reusedChunks++;
            else {
              stats.newChunks++;
              stats.storedBytes += h.stored.storedBytes;
              newBytes += piece.length;
            }
          } else if (!known.add(h.digest)) stats.reusedChunks++;
          else {
            const s = await pool.store(slot, piece.length, h.digest);
            const isNew = s.stored ? await repo.putChunk(h.digest, s.stored) : !s.existed;
            if (isNew) {
              stats.newChunks++;
              stats.storedBytes += s.storedBytes;
              newBytes += piece.length;
            } else stats.reusedChunks++;
          }
          await index.set(piece, h.digest);
        }
        done += piece.length;
        opts.onProgress?.(done, total);
      });
      const root = await index.finish();
      stats.newChunks += index.newPages;
      stats.storedBytes += index.storedBytes;
      newBytes += index.plainBytes;
      // The last disk's index goes up while the packs are sent (commitSnapshot's sync then has
      // nothing left to do): one round trip fewer before the manifest.
      const [{ key, sha256 }] = await Promise.all([
        repo.writeIndex(id, i, root.data),
        ...(i === opts.disks.length - 1 ? [repo.sync()] : []),
      ]);
      const granules = Math.ceil(disk.device.size / GRANULE);
      disks.push({
        name: disk.name,
        size: disk.device.size,
        chunkSize,
        granule: GRANULE,
        index: key,
        indexSha256: sha256,
        dataChunks: root.dataGranules,
        zeroChunks: granules - root.dataGranules,
      });
    }
    stats.newBytes = newBytes;
    stats.seconds = (performance.now() - started) / 1000;
    const manifest: SnapshotManifest = {
      id,
      version: 1,
      createdAt: (opts.createdAt ?? new Date()).toISOString(),
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

/** Pieces whose pages are being read ahead of the one stored now. */
const PAGES_AHEAD = 32;

/** Stores an index page as the chunks are stored: by a worker (its backend), off the main thread. */
async function storeThroughPool(
  repo: Repository,
  pool: ChunkPool,
  plain: Buffer,
  digest: Buffer,
): Promise<{ isNew: boolean; storedBytes: number }> {
  const slot = await pool.acquire();
  try {
    plain.copy(pool.buffer(slot));
    const s = await pool.store(slot, plain.length, digest);
    const isNew = s.stored ? await repo.putChunk(digest, s.stored) : !s.existed;
    return { isNew, storedBytes: s.storedBytes };
  } finally {
    pool.release(slot);
  }
}

/** A stored page (any chunk) read and decoded by a worker: a copy of its plaintext. */
async function loadThroughPool(repo: Repository, pool: ChunkPool, digest: Buffer): Promise<Buffer> {
  const slot = await pool.acquire();
  try {
    const n = await pool.load(slot, digest, pool.ownBackend ? undefined : await repo.getChunk(digest));
    return Buffer.from(pool.buffer(slot, n));
  } finally {
    pool.release(slot);
  }
}

export function openChunkPool(repo: Repository, chunkSize: number, workers?: number): ChunkPool {
  const backend = repo.backend.describe?.();
  return new ChunkPool(repo.keys, chunkSize, {
    ...(workers ? { workers } : {}),
    ...(backend ? { backend } : {}),
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

/** What one chunk of the new snapshot covers: whole granules, within one chunk-aligned span. */
export interface Piece {
  offset: number;
  length: number;
  /** Its first granule and how many. */
  granule: number;
  granules: number;
}

interface Plan {
  /** What to read and store, ascending. */
  pieces: Piece[];
  bytes: number;
  /** Incremental: the parent's index, and the granules both have whole (taken from it unless changed). */
  base?: DiskIndex;
  common: number;
}

/**
 * What a backup reads. A full backup: every allocated chunk, whole (the repository's chunk size:
 * few objects, full throughput). An incremental: only the granules (64 KiB) that changed, stored as
 * chunks of just those granules (a run of changed granules is one chunk up to a chunk-aligned
 * boundary), so the repository grows by about what changed; the rest stays the parent's.
 */
async function plan(
  repo: Repository,
  pool: ChunkPool,
  disk: BackupDisk,
  diskNo: number,
  parent: SnapshotManifest | undefined,
  chunkSize: number,
): Promise<Plan> {
  const size = disk.device.size;
  const k = chunkSize / GRANULE;
  const granules = Math.ceil(size / GRANULE);
  const baseDisk = parent?.disks[diskNo];
  if (!(disk.changed && parent && baseDisk)) {
    const pieces: Piece[] = [];
    let bytes = 0;
    for (const r of disjoint(await allocated(disk.device))) {
      const end = Math.min(r.offset + r.length, size);
      for (let c = Math.floor(r.offset / chunkSize); c * chunkSize < end; c++) {
        if (pieces.length && pieces[pieces.length - 1]!.granule === c * k) continue;
        const offset = c * chunkSize;
        const length = Math.min(chunkSize, size - offset);
        pieces.push({ offset, length, granule: c * k, granules: Math.ceil(length / GRANULE) });
        bytes += length;
      }
    }
    return { pieces, bytes, common: 0 };
  }
  // The parent's pages are read by the chunk workers, as chunks are: off the main thread.
  const base = await repo.openIndex(parent, diskNo, (d) => loadThroughPool(repo, pool, d));
  // A disk resized since the parent (a volume grown): what both have in whole granules comes from
  // the parent where unchanged; past it, block status says what to read (as in a full backup):
  // the bitmap marks all the new space changed, most of it never written.
  const common = base.size === size ? granules : Math.floor(Math.min(base.size, size) / GRANULE);
  const edge = Math.min(common * GRANULE, size);
  let ranges = disk.changed
    .filter((r) => r.offset < edge)
    .map((r) => ({ offset: r.offset, length: Math.min(r.length, edge - r.offset) }));
  if (edge < size) ranges = ranges.concat(await allocated(disk.device, edge));
  const pieces: Piece[] = [];
  let bytes = 0;
  for (const r of disjoint(ranges)) {
    const end = Math.min(r.offset + r.length, size);
    if (end <= r.offset) continue;
    let g = Math.floor(r.offset / GRANULE);
    const last = Math.ceil(end / GRANULE);
    const prev = pieces[pieces.length - 1];
    if (prev && prev.granule + prev.granules > g) g = prev.granule + prev.granules;
    while (g < last) {
      // A piece ends where the chunk-aligned span does, so a page never splits it.
      const n = Math.min(last, (Math.floor(g / k) + 1) * k) - g;
      const offset = g * GRANULE;
      const length = Math.min(n * GRANULE, size - offset);
      const p = pieces[pieces.length - 1];
      if (p && p.granule + p.granules === g && Math.floor(p.granule / k) === Math.floor(g / k)) {
        p.granules += n;
        p.length += length;
      } else pieces.push({ offset, length, granule: g, granules: n });
      bytes += length;
      g += n;
    }
  }
  return { pieces, bytes, base, common };
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

/** Runs `fn` for each item with as many in flight as the pool has slots; fails on the first error. */
export async function runChunks<T>(
  items: Iterable<T> | AsyncIterable<T>,
  pool: ChunkPool,
  fn: (slot: number, item: T) => Promise<void>,
): Promise<void> {
  let failure: unknown;
  const running = new Set<Promise<void>>();
  for await (const item of items) {
    if (failure) break;
    const slot = await pool.acquire();
    if (failure) {
      pool.release(slot);
      break;
    }
    const p = fn(slot, item)
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
