import { createHash, webcrypto } from 'node:crypto';
import { HavenError, isPromise } from '../../common/index.js';
import { EXTENT_ZERO, type BlockDevice } from '../../block/index.js';
import type { TlsCredentials } from '../../nbd/index.js';
import { openDestination, openSource, type Endpoint } from './nbd-endpoints.js';

/**
 * `haven nbd copy SRC DST`: copies a disk between local files and NBD exports.
 *
 * Sparse-aware: the source's block status (base:allocation) says which ranges read as zeroes;
 * those are skipped on a fresh destination (a file we created or emptied) and zeroed with one
 * write-zeroes request on any other. Data chunks that turn out to be all zeroes are treated the
 * same way, which keeps the sparseness of a file source that cannot report holes.
 *
 * Parallel with bounded memory: `requests` chunks of `chunkSize` bytes are in flight at most
 * (default 16 × 4 MiB = 64 MiB of buffers, reused).
 *
 * Verified: every data chunk is hashed (SHA-256) as it is read from the source; afterwards the
 * destination is flushed, each chunk is read back and its hash compared, and each zero range is
 * checked to read as zeroes. A mismatch fails the copy with CORRUPT naming the offset.
 */

export interface CopyOptions {
  tls?: TlsCredentials;
  /** NBD connections per endpoint (default 4; one when the server cannot do multi-conn). */
  connections?: number;
  /** Chunks in flight (default 16). */
  requests?: number;
  /** Bytes per chunk (default 4 MiB). */
  chunkSize?: number;
  /** Granularity of zero detection inside data (default 4096, as nbdcopy --sparse). */
  sparseBlock?: number;
  /**
   * Hash what is read and read the destination back to compare (default true). Off: no hashing
   * at all. For null: the hashes still give `digest`, but nothing can be read back.
   */
  verify?: boolean;
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
  /** Bytes read from the source as data and written to the destination. */
  dataBytes: number;
  /** Bytes that read as zeroes: skipped on a fresh destination, zeroed otherwise. */
  zeroBytes: number;
  /** Of zeroBytes, how many needed a write-zeroes request on the destination. */
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

const MiB = 1024 * 1024;
/** Block status is asked for this much at a time. */
const STATUS_WINDOW = 1024 * MiB;

const sha256 = async (b: Uint8Array) => Buffer.from(await webcrypto.subtle.digest('SHA-256', b));
const awaitMaybe = async <T>(v: T | Promise<T>): Promise<T> => (isPromise(v) ? await v : v);

/**
 * Splits a buffer into alternating runs of non-zero and all-zero `block`-sized pieces (the last
 * piece may be shorter). `zero` is a zero-filled buffer at least `block` long.
 */
export function* runs(
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

/** Walks the source's extents, yielding zero ranges whole and data in chunks of at most `chunkSize`. */
async function* chunks(src: BlockDevice, chunkSize: number, signal?: AbortSignal): AsyncGenerator<Chunk> {
  let at = 0;
  while (at < src.size) {
    signal?.throwIfAborted();
    const extents = await awaitMaybe(src.blockStatus(at, Math.min(STATUS_WINDOW, src.size - at)));
    if (!extents.length)
      throw new HavenError('PROTOCOL', `block status of the source at ${at} returned nothing`);
    for (const e of extents) {
      const end = Math.min(e.offset + e.length, src.size);
      if (e.flags & EXTENT_ZERO) yield { offset: e.offset, length: end - e.offset, zero: true };
      else
        for (let o = e.offset; o < end; o += chunkSize)
          yield { offset: o, length: Math.min(chunkSize, end - o), zero: false };
      at = end;
    }
  }
}

export async function nbdCopy(
  source: string,
  destination: string,
  opts: CopyOptions & { force?: boolean } = {},
): Promise<CopyResult> {
  const ep = { tls: opts.tls, connections: opts.connections ?? 4 };
  const src = await openSource(source, ep);
  let dst: Endpoint | undefined;
  let ok = false;
  try {
    dst = await openDestination(destination, src.device.size, { ...ep, force: opts.force });
    const r = await copyDevice(src, dst, opts);
    ok = true;
    return r;
  } finally {
    await Promise.allSettled([awaitMaybe(src.device.close()), dst && awaitMaybe(dst.device.close())]);
    // A file destination appears only complete and verified.
    dst?.finish?.(ok);
  }
}

/**
 * The copy engine on two open endpoints (which stay open): sparse, parallel, verified. Volume
 * import and export use it too.
 */
export async function copyDevice(src: Endpoint, dst: Endpoint, opts: CopyOptions = {}): Promise<CopyResult> {
  const source = src.name;
  const destination = dst.name;
  const requests = Math.max(1, opts.requests ?? 16);
  const started = performance.now();
  const d = dst.device;
  const s = src.device;
  const maxChunk = Math.min(s.blockSizes.maximum, d.blockSizes.maximum, 32 * MiB);
  const chunkSize = Math.max(4096, Math.min(opts.chunkSize ?? 4 * MiB, maxChunk));
  const size = s.size;
  const zeroBuf = new Uint8Array(chunkSize);
  const sparseBlock = Math.max(512, Math.min(opts.sparseBlock ?? 4096, chunkSize));
  const pool: Uint8Array[] = [];
  const hashes: { offset: number; length: number; hash: Buffer }[] = [];
  const zeroRanges: Chunk[] = [];
  let dataBytes = 0;
  let zeroBytes = 0;
  let zeroedBytes = 0;
  let done = 0;
  const fresh = dst.fresh;
  const hash = opts.verify !== false;
  const progress = (phase: CopyProgress['phase']) => opts.onProgress?.({ phase, done, total: size });

  const zeroRange = async (c: Chunk) => {
    zeroBytes += c.length;
    zeroRanges.push(c);
    if (!fresh) {
      await awaitMaybe(d.writeZeroes(c.offset, c.length));
      zeroedBytes += c.length;
    }
  };

  const copyOne = async (c: Chunk) => {
    if (c.zero) return zeroRange(c);
    const buf = pool.pop() ?? new Uint8Array(chunkSize);
    try {
      const view = buf.subarray(0, c.length);
      await awaitMaybe(s.read(view, c.offset));
      if (Buffer.compare(view, zeroBuf.subarray(0, c.length)) === 0) return await zeroRange(c);
      // WebCrypto hashes on the libuv thread pool (from a copy), off the event loop.
      const hashing = hash
        ? sha256(view).then((h) => {
            hashes.push({ offset: c.offset, length: c.length, hash: h });
          })
        : undefined;
      // Write only the runs of non-zero blocks; zero runs are skipped (fresh) or zeroed.
      const writes: Promise<void>[] = [];
      for (const run of runs(view, sparseBlock, zeroBuf)) {
        const at = c.offset + run.start;
        if (!run.zero) {
          writes.push(awaitMaybe(d.write(view.subarray(run.start, run.end), at)));
          dataBytes += run.end - run.start;
        } else {
          zeroBytes += run.end - run.start;
          if (!fresh) {
            writes.push(awaitMaybe(d.writeZeroes(at, run.end - run.start)));
            zeroedBytes += run.end - run.start;
          }
        }
      }
      await Promise.all([hashing, ...writes]);
    } finally {
      pool.push(buf);
    }
  };

  await runBounded(chunks(s, chunkSize, opts.signal), requests, async (c) => {
    opts.signal?.throwIfAborted();
    await copyOne(c);
    done += c.length;
    progress('copy');
  });
  await awaitMaybe(d.flush());
  const copySeconds = (performance.now() - started) / 1000;

  hashes.sort((a, b) => a.offset - b.offset);
  const digest = createHash('sha256');
  for (const h of hashes) {
    const head = Buffer.alloc(16);
    head.writeBigUInt64BE(BigInt(h.offset), 0);
    head.writeBigUInt64BE(BigInt(h.length), 8);
    digest.update(head).update(h.hash);
  }

  let verified = false;
  if (hash && dst.kind !== 'null') {
    done = 0;
    const items: (Chunk | (typeof hashes)[number])[] = [...hashes, ...zeroRanges];
    await runBounded(items, requests, async (item) => {
      opts.signal?.throwIfAborted();
      if ('hash' in item) {
        const buf = pool.pop() ?? new Uint8Array(chunkSize);
        try {
          const view = buf.subarray(0, item.length);
          await awaitMaybe(d.read(view, item.offset));
          if (!(await sha256(view)).equals(item.hash))
            throw new HavenError(
              'CORRUPT',
              `verification failed: ${destination} differs from ${source} in the ${item.length} bytes at offset ${item.offset}`,
            );
        } finally {
          pool.push(buf);
        }
      } else await verifyZero(d, item, pool, chunkSize, zeroBuf, destination);
      done += item.length;
      progress('verify');
    });
    verified = true;
  }
  const seconds = (performance.now() - started) / 1000;
  return {
    source,
    destination,
    size,
    dataBytes,
    zeroBytes,
    zeroedBytes,
    digest: hash ? digest.digest('hex') : undefined,
    verified,
    seconds,
    rate: copySeconds > 0 ? size / copySeconds : 0,
  };
}

/** Checks that a range of the destination reads as zeroes, trusting its block status where it says so. */
async function verifyZero(
  d: BlockDevice,
  c: Chunk,
  pool: Uint8Array[],
  chunkSize: number,
  zeroBuf: Uint8Array,
  name: string,
) {
  const end = c.offset + c.length;
  for (let at = c.offset; at < end;) {
    const extents = await awaitMaybe(d.blockStatus(at, end - at));
    for (const e of extents) {
      const eEnd = Math.min(e.offset + e.length, end);
      if (!(e.flags & EXTENT_ZERO)) {
        const buf = pool.pop() ?? new Uint8Array(chunkSize);
        try {
          for (let o = e.offset; o < eEnd; o += chunkSize) {
            const view = buf.subarray(0, Math.min(chunkSize, eEnd - o));
            await awaitMaybe(d.read(view, o));
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
      at = eEnd;
    }
  }
}

/** Runs `fn` over the items with at most `limit` running at once; the first failure stops it. */
async function runBounded<T>(
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
  if (failed !== undefined) throw failed;
}
