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
  /** Memory for chunks the disk holds more than once, kept between their uses (default 32 MiB). */
  repeatCacheBytes?: number;
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
  // The worker threads start (each compiles its code: tens of ms) while the snapshot is checked.
  const manifestChunk = snapshot.disks[diskNo]?.chunkSize;
  const early = manifestChunk ? openChunkPool(repo, manifestChunk, opts.workers) : undefined;
  let checked: Awaited<ReturnType<typeof checkRestorable>>;
  try {
    checked = await checkRestorable(repo, snapshot, diskNo, opts.ranges);
  } catch (err) {
    await early?.close();
    throw err;
  }
  const { idx, spans, repeats } = checked;
  const name = snapshot.disks[diskNo]!.name;
  if (early && early.slotSize !== idx.chunkSize) await early.close();
  const pool = early?.slotSize === idx.chunkSize ? early : openChunkPool(repo, idx.chunkSize, opts.workers);
  const total = spans.reduce((n, r) => n + Math.min(r.length, idx.size - r.offset), 0);
  let done = 0;
  let dataBytes = 0;
  let zeroBytes = 0;
  const copies = new RepeatedChunks(repeats, (opts.repeatCacheBytes ?? REPEAT_CACHE_BYTES) / idx.chunkSize);
  try {
    if (target.size < idx.size)
      throw new HavenError(
        'INVALID_ARGUMENT',
        `the target (${target.size} bytes) is smaller than ${name} of snapshot ${snapshot.id} (${idx.size} bytes)`,
      );
    opts.signal?.throwIfAborted();
    await runChunks(runsOf(idx, spans), pool, async (slot, run) => {
      opts.signal?.throwIfAborted();
      const { offset, length } = run;
      if (run.zero) {
        if (!opts.fresh) await target.writeZeroes(offset, length);
        zeroBytes += length;
      } else {
        const digest = run.digest;
        const key = digest.toString('latin1');
        // A chunk the disk holds more than once is read and checked once, then written from memory.
        const copy = await copies.take(key);
        if (copy && copy.length >= run.at + length)
          await target.write(copy.subarray(run.at, run.at + length), offset);
        else {
          let n: number;
          try {
            n = await pool.load(slot, digest, pool.ownBackend ? undefined : await repo.getChunk(digest));
          } catch (err) {
            copies.failed(key);
            throw new HavenError(
              'CORRUPT',
              `snapshot ${snapshot.id} ${name}: the data at offset ${offset} (${length} bytes) is damaged: ${errorMessage(err)}`,
            );
          }
          if (n < run.at + length) {
            copies.failed(key);
            throw new HavenError(
              'CORRUPT',
              `snapshot ${snapshot.id} ${name}: chunk at offset ${offset} has ${n} bytes, not ${run.at + length}`,
            );
          }
          const buf = pool.buffer(slot, n);
          copies.loaded(key, buf);
          await target.write(buf.subarray(run.at, run.at + length), offset);
        }
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

/** Memory for chunks a disk holds more than once, kept between their uses (see RepeatedChunks). */
const REPEAT_CACHE_BYTES = 32 * 1024 * 1024;

/**
 * Chunks a restore writes more than once (a disk's repeated blocks; deduplicated in the
 * repository), kept in memory after their first read, which checked them against their digest,
 * until their last use: each is read, decrypted, decompressed and hashed once, not once per copy.
 * Bounded: past `max` chunks held, the others are read each time as any chunk is. A use that
 * comes while the first read is under way waits for it.
 */
class RepeatedChunks {
  private readonly held = new Map<
    string,
    { data?: Buffer; loading?: Promise<Buffer | undefined>; done?: (b: Buffer | undefined) => void }
  >();

  /** `left`: how many times each repeated chunk (latin1 digest) is still to be written. */
  constructor(
    private readonly left: Map<string, number>,
    private readonly max: number,
  ) {}

  /**
   * The chunk's bytes if a first read holds them (waiting for one under way); undefined when the
   * caller is to read it (and then say `loaded` or `failed`).
   */
  async take(key: string): Promise<Buffer | undefined> {
    const n = this.left.get(key);
    if (n === undefined) return undefined;
    const h = this.held.get(key);
    if (!h) {
      if (this.held.size >= this.max) return undefined;
      let done!: (b: Buffer | undefined) => void;
      const loading = new Promise<Buffer | undefined>((r) => (done = r));
      this.held.set(key, { loading, done });
      return undefined;
    }
    const data = h.data ?? (await h.loading);
    if (data) this.use(key);
    return data;
  }

  loaded(key: string, data: Buffer): void {
    const h = this.held.get(key);
    if (!h?.done) return;
    h.data = Buffer.from(data); // the slot goes back to the pool
    h.done(h.data);
    delete h.done;
    delete h.loading;
    this.use(key);
  }

  failed(key: string): void {
    const h = this.held.get(key);
    if (!h?.done) return;
    this.held.delete(key);
    h.done(undefined);
  }

  private use(key: string): void {
    const n = this.left.get(key)! - 1;
    if (n > 0) this.left.set(key, n);
    else {
      this.left.delete(key);
      this.held.delete(key);
    }
  }
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
): Promise<{
  idx: DiskIndex;
  /** The ranges to restore, sorted and disjoint. */
  spans: Range[];
  /** Digests (latin1) of chunks the runs to restore use more than once, and how many times. */
  repeats: Map<string, number>;
}> {
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
  const seen = new Map<string, number>();
  const wanted: { digest: Buffer; offset: number }[] = [];
  const spans = ranges ? disjointRanges(ranges) : [{ offset: 0, length: idx.size }];
  for await (const r of runsOf(idx, spans)) {
    if (r.zero) continue;
    const key = r.digest.toString('latin1');
    const n = seen.get(key);
    seen.set(key, (n ?? 0) + 1);
    if (n === undefined) wanted.push({ digest: r.digest, offset: r.offset });
  }
  const repeats = new Map<string, number>();
  for (const [key, n] of seen) if (n > 1) repeats.set(key, n);
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
  return { idx, spans, repeats };
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
