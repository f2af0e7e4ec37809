import { createHash, webcrypto } from 'node:crypto';
import { HavenError, isPromise, outOfRange, type MaybePromise } from '../common/index.js';
import { EXTENT_ZERO, type BlockDevice } from './device.js';
import { deviceExtents, walkExtents } from './extents.js';

/**
 * The copy routine: one device onto another, for every offline copy in Haven (nbd copy, volume
 * import and export). The live mirror of a running volume (storage/mirror-copy.ts) is not this:
 * it races the guest's writes through the tap.
 *
 * Sparse: the source's block status says which ranges read as zeroes; those are skipped on a
 * `fresh` target (one that reads as zeroes everywhere: a file just created) and zeroed with one
 * write-zeroes request on any other. Data chunks that turn out to be zeroes in `sparseBlock`
 * pieces are treated the same way, which keeps a file source that cannot report holes sparse.
 *
 * Bounded: at most `requests` chunks of `chunkSize` bytes are in flight (default 16 × 4 MiB =
 * 64 MiB of buffers, reused; no allocation per chunk once the pool is warm).
 *
 * Verified (default): every data chunk is hashed (SHA-256, on the thread pool) as it is read;
 * afterwards the target is flushed, each chunk is read back and compared, and each zero range is
 * checked to read as zeroes. A mismatch fails the copy with CORRUPT naming the offset.
 */
export interface CopyOptions {
  /** Chunks in flight (default 16). */
  requests?: number;
  /** Bytes per chunk (default 4 MiB; at most the smaller device maximum and 32 MiB). */
  chunkSize?: number;
  /** Granularity of zero detection inside data (default 4096, as nbdcopy --sparse). */
  sparseBlock?: number;
  /** Hash what is read and read the target back to compare (default true). Off: no hashing. */
  verify?: boolean;
  /** The target reads as zeroes everywhere before the copy: zero ranges need no write. */
  fresh?: boolean;
  /** The target can be read back (default true; false for a sink: the digest is still made). */
  readBack?: boolean;
  /** How errors and the result name the two ends (default "source" and "target"). */
  sourceName?: string;
  targetName?: string;
  onProgress?: (p: CopyProgress) => void;
  signal?: AbortSignal;
}

export interface CopyProgress {
  phase: 'copy' | 'verify';
  /** Bytes of the source handled (copied, zeroed or skipped) in this phase. */
  done: number;
  total: number;
}

export interface CopyResult {
  source: string;
  destination: string;
  size: number;
  /** Bytes read from the source as data and written to the target. */
  dataBytes: number;
  /** Bytes that read as zeroes: skipped on a fresh target, zeroed otherwise. */
  zeroBytes: number;
  /** Of zeroBytes, how many needed a write-zeroes request on the target. */
  zeroedBytes: number;
  /** SHA-256 over the per-chunk hashes (offset, length, hash) in offset order; not with verify off. */
  digest?: string;
  verified: boolean;
  seconds: number;
  /** Average rate over the copy phase, bytes per second of source. */
  rate: number;
}

interface Chunk {
  offset: number;
  length: number;
  /** Known to read as zeroes from the block status. */
  zero: boolean;
}

interface Hashed {
  offset: number;
  length: number;
  hash: Buffer;
}

const MiB = 1024 * 1024;
/** Block status is asked for this much at a time. */
const STATUS_WINDOW = 1024 * MiB;

const sha256 = async (b: Uint8Array) => Buffer.from(await webcrypto.subtle.digest('SHA-256', b));
const wait = async <T>(v: MaybePromise<T>): Promise<T> => (isPromise(v) ? await v : v);

/** Copies `source` onto `target` (both stay open); the target must hold at least the source's size. */
export async function copyBlocks(
  source: BlockDevice,
  target: BlockDevice,
  opts: CopyOptions = {},
): Promise<CopyResult> {
  const sourceName = opts.sourceName ?? 'source';
  const targetName = opts.targetName ?? 'target';
  if (target.readOnly) throw new HavenError('READ_ONLY', `${targetName} is read-only`);
  if (target.size < source.size)
    throw outOfRange(`${targetName} holds ${target.size} bytes, less than ${sourceName}'s ${source.size}`);
  const requests = Math.max(1, opts.requests ?? 16);
  const started = performance.now();
  const maxChunk = Math.min(source.blockSizes.maximum, target.blockSizes.maximum, 32 * MiB);
  const chunkSize = Math.max(4096, Math.min(opts.chunkSize ?? 4 * MiB, maxChunk));
  const size = source.size;
  const zeroBuf = new Uint8Array(chunkSize);
  const sparseBlock = Math.max(512, Math.min(opts.sparseBlock ?? 4096, chunkSize));
  const pool: Uint8Array[] = [];
  const hashes: Hashed[] = [];
  const zeroRanges: Chunk[] = [];
  let dataBytes = 0;
  let zeroBytes = 0;
  let zeroedBytes = 0;
  let done = 0;
  const fresh = !!opts.fresh;
  const hash = opts.verify !== false;
  const progress = (phase: CopyProgress['phase']) => opts.onProgress?.({ phase, done, total: size });

  const zeroRange = async (c: Chunk) => {
    zeroBytes += c.length;
    zeroRanges.push(c);
    if (!fresh) {
      await wait(target.writeZeroes(c.offset, c.length));
      zeroedBytes += c.length;
    }
  };

  const copyOne = async (c: Chunk) => {
    if (c.zero) return zeroRange(c);
    const buf = pool.pop() ?? new Uint8Array(chunkSize);
    try {
      const view = buf.subarray(0, c.length);
      await wait(source.read(view, c.offset));
      if (Buffer.compare(view, zeroBuf.subarray(0, c.length)) === 0) return await zeroRange(c);
      // WebCrypto hashes on the libuv thread pool (from a copy), off the event loop.
      const hashing = hash
        ? sha256(view).then((h) => void hashes.push({ offset: c.offset, length: c.length, hash: h }))
        : undefined;
      // Write only the runs of non-zero blocks; zero runs are skipped (fresh) or zeroed.
      const writes: Promise<void>[] = [];
      for (const run of zeroRuns(view, sparseBlock, zeroBuf)) {
        const at = c.offset + run.start;
        const len = run.end - run.start;
        if (!run.zero) {
          writes.push(wait(target.write(view.subarray(run.start, run.end), at)));
          dataBytes += len;
        } else {
          zeroBytes += len;
          if (!fresh) {
            writes.push(wait(target.writeZeroes(at, len)));
            zeroedBytes += len;
          }
        }
      }
      await Promise.all([hashing, ...writes]);
    } finally {
      pool.push(buf);
    }
  };

  await runBounded(chunks(source, chunkSize, opts.signal), requests, async (c) => {
    opts.signal?.throwIfAborted();
    await copyOne(c);
    done += c.length;
    progress('copy');
  });
  await wait(target.flush());
  const copySeconds = (performance.now() - started) / 1000;

  hashes.sort((a, b) => a.offset - b.offset);
  const digest = createHash('sha256');
  const head = Buffer.alloc(16);
  for (const h of hashes) {
    head.writeBigUInt64BE(BigInt(h.offset), 0);
    head.writeBigUInt64BE(BigInt(h.length), 8);
    digest.update(head).update(h.hash);
  }

  let verified = false;
  if (hash && opts.readBack !== false) {
    done = 0;
    const items: (Chunk | Hashed)[] = [...hashes, ...zeroRanges];
    await runBounded(items, requests, async (item) => {
      opts.signal?.throwIfAborted();
      if ('hash' in item) {
        const buf = pool.pop() ?? new Uint8Array(chunkSize);
        try {
          const view = buf.subarray(0, item.length);
          await wait(target.read(view, item.offset));
          if (!(await sha256(view)).equals(item.hash))
            throw new HavenError(
              'CORRUPT',
              `verification failed: ${targetName} differs from ${sourceName} in the ${item.length} bytes at offset ${item.offset}`,
            );
        } finally {
          pool.push(buf);
        }
      } else await verifyZero(target, item, pool, chunkSize, zeroBuf, targetName);
      done += item.length;
      progress('verify');
    });
    verified = true;
  }
  const seconds = (performance.now() - started) / 1000;
  return {
    source: sourceName,
    destination: targetName,
    size,
    dataBytes,
    zeroBytes,
    zeroedBytes,
    ...(hash ? { digest: digest.digest('hex') } : {}),
    verified,
    seconds,
    rate: copySeconds > 0 ? size / copySeconds : 0,
  };
}

/**
 * Splits a buffer into alternating runs of non-zero and all-zero `block`-sized pieces (the last
 * piece may be shorter). `zero` is a zero-filled buffer at least `block` long.
 */
export function* zeroRuns(
  buf: Uint8Array,
  block: number,
  zero: Uint8Array,
): Generator<{ start: number; end: number; zero: boolean }> {
  let start = 0;
  let cur: boolean | undefined;
  for (let at = 0; at < buf.length; at += block) {
    const end = Math.min(buf.length, at + block);
    const z = Buffer.compare(buf.subarray(at, end), zero.subarray(0, end - at)) === 0;
    if (cur !== undefined && z !== cur) {
      yield { start, end: at, zero: cur };
      start = at;
    }
    cur = z;
  }
  if (cur !== undefined) yield { start, end: buf.length, zero: cur };
}

/** The source's extents as work: zero ranges whole, data in chunks of at most `chunkSize`. */
async function* chunks(src: BlockDevice, chunkSize: number, signal?: AbortSignal): AsyncGenerator<Chunk> {
  for await (const e of deviceExtents(src, { window: STATUS_WINDOW, ...(signal ? { signal } : {}) })) {
    const end = e.offset + e.length;
    if (e.flags & EXTENT_ZERO) yield { offset: e.offset, length: e.length, zero: true };
    else
      for (let o = e.offset; o < end; o += chunkSize)
        yield { offset: o, length: Math.min(chunkSize, end - o), zero: false };
  }
}

/** Checks that a range of the target reads as zeroes, trusting its block status where it says so. */
async function verifyZero(
  d: BlockDevice,
  c: Chunk,
  pool: Uint8Array[],
  chunkSize: number,
  zeroBuf: Uint8Array,
  name: string,
): Promise<void> {
  for await (const e of walkExtents((o, l) => d.blockStatus(o, l), c.offset + c.length, { from: c.offset })) {
    if (e.flags & EXTENT_ZERO) continue;
    const eEnd = e.offset + e.length;
    const buf = pool.pop() ?? new Uint8Array(chunkSize);
    try {
      for (let o = e.offset; o < eEnd; o += chunkSize) {
        const view = buf.subarray(0, Math.min(chunkSize, eEnd - o));
        await wait(d.read(view, o));
        if (Buffer.compare(view, zeroBuf.subarray(0, view.length)) !== 0)
          throw new HavenError(
            'CORRUPT',
            `verification failed: ${name} does not read as zeroes at offset ${o}`,
          );
      }
    } finally {
      pool.push(buf);
    }
  }
}

/** Runs `fn` over the items with at most `limit` running at once; the first failure stops it. */
export async function runBounded<T>(
  items: AsyncIterable<T> | Iterable<T>,
  limit: number,
  fn: (item: T) => Promise<void>,
): Promise<void> {
  const it =
    Symbol.asyncIterator in items
      ? (items as AsyncIterable<T>)[Symbol.asyncIterator]()
      : (items as Iterable<T>)[Symbol.iterator]();
  let failed: unknown;
  let pulling: Promise<unknown> = Promise.resolve();
  // Pulls are serialised: an async generator must not be advanced concurrently.
  const next = () => {
    const p = pulling.then(() => it.next());
    pulling = p.catch(() => undefined);
    return p as Promise<IteratorResult<T>>;
  };
  const worker = async () => {
    while (failed === undefined) {
      const r = await next();
      if (r.done) return;
      try {
        await fn(r.value);
      } catch (e) {
        failed ??= e;
      }
    }
  };
  await Promise.all(Array.from({ length: limit }, worker));
  // An aborted walk must not keep its generator suspended.
  if (failed !== undefined) {
    await it.return?.();
    throw failed;
  }
}
