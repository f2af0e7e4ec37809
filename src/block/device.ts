import { outOfRange, type MaybePromise } from '../common/index.js';

/**
 * The one contract every disk in Haven implements: files, overlays (differencing disks),
 * repository-backed devices, NBD clients, throttles, the I/O tap. Behaviour composes by wrapping
 * a device in another device (as nbdkit filters wrap "next"), never by flags on a core.
 *
 * Offsets and lengths are JavaScript numbers: exact up to 2^53 bytes (8 PiB). Anything beyond
 * that is refused with OUT_OF_RANGE where it enters (the NBD codec), never truncated.
 *
 * Methods return MaybePromise: a device that can finish at once (a page-cached file) returns
 * undefined/the value synchronously, so the NBD server's hot path allocates no promise.
 * Errors are HavenError: OUT_OF_RANGE (beyond size), READ_ONLY, NO_SPACE, IO, UNSUPPORTED.
 */
export interface BlockDevice {
  /** Size in bytes. Fixed for the life of the handle unless `resize` is called. */
  readonly size: number;
  readonly readOnly: boolean;
  /** Block sizes the device prefers (advertised over NBD as NBD_INFO_BLOCK_SIZE). */
  readonly blockSizes: BlockSizes;
  /**
   * True when a flush through this handle makes durable the writes completed through every
   * handle of the same device (so the NBD server may advertise multi-conn).
   */
  readonly flushCoversAll: boolean;

  /** Fill `buf` from `offset`. Reads of trimmed or never-written ranges return zeroes. */
  read(buf: Uint8Array, offset: number): MaybePromise<void>;
  /**
   * Write `data` (one buffer, or several written back to back, as received off a socket) at
   * `offset`. With `fua`, the data is durable before the call completes.
   */
  write(data: Uint8Array | readonly Uint8Array[], offset: number, flags?: WriteFlags): MaybePromise<void>;
  /** Make every completed write durable. */
  flush(): MaybePromise<void>;
  /**
   * Optional: writes the device's completed writes back to disk on the thread pool, so that a
   * flush after it (which may wait on the event loop) finds little left to do. It makes nothing
   * durable that a flush would not: only flush is a promise of durability.
   */
  writeBack?(): Promise<void>;
  /** The range's content is no longer needed; afterwards it reads as zeroes. May free space. */
  trim(offset: number, length: number, flags?: WriteFlags): MaybePromise<void>;
  /**
   * Make the range read as zeroes. `noHole`: allocate instead of punching a hole.
   * `fastZero`: fail at once with UNSUPPORTED rather than zeroing slowly (by writing zeroes).
   */
  writeZeroes(offset: number, length: number, flags?: ZeroFlags): MaybePromise<void>;
  /**
   * Allocation of the range starting at `offset`: one or more contiguous extents, the first
   * starting at `offset`, together covering at least one byte and at most `length` bytes.
   */
  blockStatus(offset: number, length: number): MaybePromise<Extent[]>;
  /**
   * The open file holding the device's bytes at the same offsets (a raw image), if there is one
   * and the native addon can send from it: the NBD server then sends large reads straight from
   * the file to the socket. Undefined for every device whose bytes are not laid out so.
   */
  readonly backingFd?: number | undefined;
  /** Advisory: bring the range into a cache, if the device has one. */
  cache?(offset: number, length: number): MaybePromise<void>;
  /** Release the handle; pending writes are flushed. */
  close(): MaybePromise<void>;
}

export interface BlockSizes {
  minimum: number;
  preferred: number;
  maximum: number;
}

export interface WriteFlags {
  fua?: boolean;
}

export interface ZeroFlags extends WriteFlags {
  noHole?: boolean;
  fastZero?: boolean;
}

/** Extent flags, identical in value to NBD's base:allocation flags. */
export const EXTENT_HOLE = 1; // not allocated: reads come from below (or zero)
export const EXTENT_ZERO = 2; // reads as zeroes

export interface Extent {
  offset: number;
  length: number;
  /** EXTENT_HOLE | EXTENT_ZERO; for a dirty-bitmap view, 1 means dirty. */
  flags: number;
}

/**
 * A read-only view of a named dirty bitmap (changed-block tracking), as NBD exports it in the
 * `qemu:dirty-bitmap:<name>` meta context: extents with flags 1 (dirty) or 0 (clean).
 */
export interface BitmapView {
  readonly name: string;
  /** Bytes covered by one bit. */
  readonly granularity: number;
  /** Same shape as BlockDevice.blockStatus: extents from `offset`, within `length`. */
  status(offset: number, length: number): Extent[];
}

export const DEFAULT_BLOCK_SIZES: BlockSizes = { minimum: 1, preferred: 4096, maximum: 32 * 1024 * 1024 };

/**
 * Throws OUT_OF_RANGE unless [offset, offset + length) lies within `size` bytes and both are
 * exact whole numbers (offsets past 2^53 are refused, never rounded).
 */
export function checkRange(offset: number, length: number, size: number, what: string): void {
  if (
    !Number.isSafeInteger(offset) ||
    !Number.isSafeInteger(length) ||
    offset < 0 ||
    length < 0 ||
    offset + length > size
  )
    throw outOfRange(`range ${offset}+${length} is outside ${what} (size ${size})`);
}
