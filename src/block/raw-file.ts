import {
  closeSync,
  fdatasync,
  fdatasyncSync,
  fstatSync,
  ftruncateSync,
  openSync,
  read,
  readSync,
  writeSync,
  writev,
  writevSync,
} from 'node:fs';
import { HavenError, fromSystemError, type MaybePromise } from '../common/index.js';
import {
  DEFAULT_BLOCK_SIZES,
  checkRange,
  EXTENT_HOLE,
  EXTENT_ZERO,
  type BlockDevice,
  type Extent,
  type WriteFlags,
  type ZeroFlags,
} from './device.js';
import { EAGAIN, ENXIO, SEEK_DATA, SEEK_HOLE, nativeIo, type NativeIo } from './native.js';

export interface RawFileOptions {
  readOnly?: boolean;
  /** Create the file (sparse, of `size` bytes) if it does not exist. */
  create?: boolean;
  size?: number;
  /** Override the native addon (tests use null for the portable fallback). */
  native?: NativeIo | null;
  /**
   * Large reads and writes go to the thread pool and answer with a promise (default true). Off:
   * everything completes synchronously, for owners that rely on that (the overlay's data file).
   */
  threadPool?: boolean;
  /**
   * A streaming writer (a restore): each large write's range starts going to the disk as soon as
   * it is written, and flush() waits on the thread pool, so the final flush is short and never
   * blocks the event loop.
   */
  writeBehind?: boolean;
}

const ZERO_CHUNK = 1024 * 1024;
/** Requests this large go through the thread pool (see read). */
const LARGE_IO = 128 * 1024;
const MAX_EXTENTS = 1024;

/**
 * A raw image file as a BlockDevice. Synchronous system calls on the hot path (page-cache speed,
 * no promise per request — see docs/decisions/0002); a read that would wait for the disk goes to
 * the thread pool instead when the native addon can tell (preadv2 RWF_NOWAIT). Sparse-aware with
 * the addon: holes are reported (SEEK_DATA/SEEK_HOLE), trims and zeroes punch holes.
 */
export class RawFileDevice implements BlockDevice {
  readonly blockSizes = DEFAULT_BLOCK_SIZES;
  readonly flushCoversAll = true; // fdatasync covers writes made through any descriptor of the file
  readonly size: number;
  readonly readOnly: boolean;
  private readonly native: NativeIo | null;
  private readonly largeIo: number;
  private readonly writeBehind: boolean;
  private zeroes: Buffer | undefined;
  private closed = false;

  constructor(
    readonly path: string,
    private readonly fd: number,
    opts: RawFileOptions,
  ) {
    const st = fstatSync(fd);
    this.size = st.isBlockDevice() ? blockDeviceSize(fd) : st.size;
    this.readOnly = opts.readOnly ?? false;
    this.native = opts.native === undefined ? nativeIo() : opts.native;
    this.largeIo = opts.threadPool === false ? Infinity : LARGE_IO;
    this.writeBehind = !!opts.writeBehind && this.largeIo !== Infinity;
  }

  /** Only where large I/O may go off the event loop (the owner does not rely on synchronous reads). */
  get backingFd(): number | undefined {
    return this.native && !this.closed && this.largeIo !== Infinity ? this.fd : undefined;
  }

  read(buf: Uint8Array, offset: number): MaybePromise<void> {
    this.check(offset, buf.length);
    let done = 0;
    // Large reads: the copy out of the page cache runs on the thread pool, beside the event loop
    // (which is busy copying into sockets); small ones are cheaper done at once.
    if (buf.length >= this.largeIo) return this.readAsync(buf, offset, 0);
    if (this.native) {
      // Page cache only; whatever is not there is read on the thread pool.
      const n = this.native.preadNoWait(this.fd, buf, offset);
      if (n === buf.length) return;
      if (n < 0 && n !== -EAGAIN) throw this.ioError(-n, 'reading');
      done = Math.max(0, n);
      return this.readAsync(buf, offset, done);
    }
    while (done < buf.length) {
      const n = readSync(this.fd, buf, done, buf.length - done, offset + done);
      if (n === 0) throw new HavenError('IO', `${this.path}: unexpected end of file at ${offset + done}`);
      done += n;
    }
  }

  write(data: Uint8Array | readonly Uint8Array[], offset: number, flags?: WriteFlags): MaybePromise<void> {
    const parts = Array.isArray(data) ? (data as readonly Uint8Array[]) : [data as Uint8Array];
    let total = 0;
    for (const p of parts) total += p.length;
    this.checkWrite(offset, total);
    if (total >= this.largeIo) return this.writeAsync(parts, total, offset, flags?.fua === true);
    try {
      let n =
        parts.length === 1
          ? writeSync(this.fd, parts[0]!, 0, total, offset)
          : writevSync(this.fd, parts, offset);
      if (n < total) n += this.finishShortWrite(parts, n, offset);
      if (flags?.fua) fdatasyncSync(this.fd);
    } catch (err) {
      throw fromSystemError(err, `writing ${this.path} at ${offset}`);
    }
  }

  flush(): MaybePromise<void> {
    if (this.readOnly) return;
    if (this.writeBehind)
      return new Promise((resolve, reject) =>
        fdatasync(this.fd, (err) =>
          err ? reject(fromSystemError(err, `flushing ${this.path}`)) : resolve(),
        ),
      );
    try {
      fdatasyncSync(this.fd);
    } catch (err) {
      throw fromSystemError(err, `flushing ${this.path}`);
    }
  }

  trim(offset: number, length: number, flags?: WriteFlags): void {
    this.writeZeroes(offset, length, flags);
  }

  writeZeroes(offset: number, length: number, flags?: ZeroFlags): void {
    this.checkWrite(offset, length);
    if (length === 0) return;
    const mode = flags?.noHole ? 2 : 1;
    const r = this.native ? this.native.fallocate(this.fd, mode, offset, length) : -1;
    if (r !== 0) {
      if (flags?.fastZero)
        throw new HavenError('UNSUPPORTED', `${this.path}: zeroing this range would need writing zeroes`);
      try {
        this.writeZeroBytes(offset, length);
      } catch (err) {
        throw fromSystemError(err, `zeroing ${this.path} at ${offset}`);
      }
    }
    if (flags?.fua) this.flush();
  }

  blockStatus(offset: number, length: number): Extent[] {
    this.check(offset, Math.min(length, 1));
    const end = Math.min(offset + length, this.size);
    if (!this.native) return [{ offset, length: end - offset, flags: 0 }];
    const out: Extent[] = [];
    let pos = offset;
    while (pos < end && out.length < MAX_EXTENTS) {
      const data = this.native.seek(this.fd, pos, SEEK_DATA);
      if (data === -ENXIO) {
        out.push({ offset: pos, length: end - pos, flags: EXTENT_HOLE | EXTENT_ZERO });
        break;
      }
      if (data < 0) return out.length ? out : [{ offset, length: end - offset, flags: 0 }];
      if (data > pos) {
        const stop = Math.min(data, end);
        out.push({ offset: pos, length: stop - pos, flags: EXTENT_HOLE | EXTENT_ZERO });
        pos = stop;
        continue;
      }
      const hole = this.native.seek(this.fd, pos, SEEK_HOLE);
      const stop = Math.min(hole < 0 ? end : hole, end);
      out.push({ offset: pos, length: stop - pos, flags: 0 });
      pos = stop;
    }
    return out;
  }

  close(): MaybePromise<void> {
    if (this.closed) return;
    this.closed = true;
    const flushed = this.readOnly ? undefined : this.flush();
    if (!flushed) return closeSync(this.fd);
    return flushed.finally(() => closeSync(this.fd));
  }

  private readAsync(buf: Uint8Array, offset: number, done: number): Promise<void> {
    return new Promise((resolve, reject) => {
      const step = () =>
        read(this.fd, buf, done, buf.length - done, offset + done, (err, n) => {
          if (err) return reject(fromSystemError(err, `reading ${this.path} at ${offset + done}`));
          if (n === 0)
            return reject(new HavenError('IO', `${this.path}: unexpected end of file at ${offset + done}`));
          done += n;
          if (done < buf.length) step();
          else resolve();
        });
      step();
    });
  }

  private writeAsync(
    parts: readonly Uint8Array[],
    total: number,
    offset: number,
    fua: boolean,
  ): Promise<void> {
    return new Promise((resolve, reject) => {
      const fail = (err: unknown) => reject(fromSystemError(err, `writing ${this.path} at ${offset}`));
      writev(this.fd, parts as Uint8Array[], offset, (err, n) => {
        if (err) return fail(err);
        try {
          if (n < total) this.finishShortWrite(parts, n, offset);
        } catch (e) {
          return fail(e);
        }
        if (this.writeBehind) this.native?.startWriteback(this.fd, offset, total);
        if (!fua) return resolve();
        fdatasync(this.fd, (e) => (e ? fail(e) : resolve()));
      });
    });
  }

  private finishShortWrite(parts: readonly Uint8Array[], written: number, offset: number): number {
    // Rare: the kernel wrote less than asked. Write the rest piece by piece.
    let skip = written;
    let n = 0;
    for (const p of parts) {
      if (skip >= p.length) {
        skip -= p.length;
        continue;
      }
      const view = p.subarray(skip);
      skip = 0;
      let d = 0;
      while (d < view.length) d += writeSync(this.fd, view, d, view.length - d, offset + written + n + d);
      n += view.length;
    }
    return n;
  }

  private writeZeroBytes(offset: number, length: number): void {
    const zeroes = (this.zeroes ??= Buffer.alloc(ZERO_CHUNK));
    for (let done = 0; done < length;) {
      const n = Math.min(ZERO_CHUNK, length - done);
      done += writeSync(this.fd, zeroes, 0, n, offset + done);
    }
  }

  private check(offset: number, length: number): void {
    if (this.closed) throw new HavenError('CONFLICT', `${this.path} is closed`);
    checkRange(offset, length, this.size, this.path);
  }

  private checkWrite(offset: number, length: number): void {
    this.check(offset, length);
    if (this.readOnly) throw new HavenError('READ_ONLY', `${this.path} is open read-only`);
  }

  private ioError(errno: number, what: string): HavenError {
    return new HavenError('IO', `${what} ${this.path}: errno ${errno}`);
  }
}

/** Opens (or creates, sparse) a raw image file. */
export function openRawFile(path: string, opts: RawFileOptions = {}): RawFileDevice {
  let fd: number;
  try {
    fd = openSync(path, opts.readOnly ? 'r' : opts.create ? 'a+' : 'r+');
    if (opts.create && !opts.readOnly) {
      // 'a+' would append every write: reopen for positional writes now that the file exists.
      closeSync(fd);
      fd = openSync(path, 'r+');
      if (opts.size !== undefined && fstatSync(fd).size === 0) ftruncateSync(fd, opts.size);
    }
  } catch (err) {
    throw fromSystemError(err, `opening ${path}`);
  }
  return new RawFileDevice(path, fd, opts);
}

/** A block device's size: Node cannot seek to the end, so probe with one-byte reads. */
function blockDeviceSize(fd: number): number {
  const one = new Uint8Array(1);
  let lo = 0;
  let hi = 1;
  while (readSync(fd, one, 0, 1, hi * 512 - 1) === 1) hi *= 2;
  while (hi - lo > 1) {
    const mid = Math.floor((lo + hi) / 2);
    if (readSync(fd, one, 0, 1, mid * 512 - 1) === 1) lo = mid;
    else hi = mid;
  }
  return lo * 512;
}
