import { createRequire } from 'node:module';

/** The native I/O addon (native/haven_io.c); every function returns -errno on failure. */
export interface NativeIo {
  seek(fd: number, offset: number, whence: typeof SEEK_DATA | typeof SEEK_HOLE): number;
  /** mode 1: punch a hole (keep size); mode 2: zero range (keep size). */
  fallocate(fd: number, mode: 1 | 2, offset: number, length: number): number;
  /** Reads only from the page cache: -EAGAIN (-11) on a miss. */
  preadNoWait(fd: number, buf: Uint8Array, offset: number): number;
  /** Starts writing a range's dirty pages to the disk without waiting (sync_file_range; length 0: to the end). */
  startWriteback(fd: number, offset: number, length: number): number;
  /**
   * On the thread pool, sends `count` replies to a socket: each one's header (`headerLength`
   * bytes of `headers`), then `lengths[i]` bytes of `fileFd` from `offsets[i]` (sendfile, no copy
   * through user space). `done(sent, errno)`: bytes sent in all and 0, or the bytes sent before
   * a failure and its errno (EAGAIN: the socket stayed full, the rest is the caller's to send).
   * Nothing else may write to the socket until `done` runs.
   */
  sendFile(
    sockFd: number,
    fileFd: number,
    headers: Uint8Array,
    headerLength: number,
    offsets: Float64Array,
    lengths: Float64Array,
    count: number,
    done: (sent: number, errno: number) => void,
  ): void;
  /**
   * On the thread pool, receives write payloads from the socket straight into the file (see
   * native/haven_io.c recvWrites): first the rest of the write `state` names; with
   * `state[RECV.LOOP]` set the job also sends that write's reply and goes on with the following
   * large writes, leaving unsent reply bytes at the start of `replies`. `done(sockErrno)`: 0, or
   * the socket's errno (EAGAIN: the client paused mid-payload, `state` says what is left).
   * Nothing else may read the socket (nor, in loop mode, write it) until `done` runs.
   */
  recvWrites(
    sockFd: number,
    fileFd: number,
    size: number,
    state: Float64Array,
    replies: Uint8Array,
    done: (sockErrno: number) => void,
  ): void;
  /** A duplicate of a descriptor (close-on-exec), or -errno. */
  dup(fd: number): number;
  close(fd: number): number;
}

/** Indexes of recvWrites' state array (native/haven_io.c's S_ enum). */
export const RECV = {
  OFFSET: 0,
  REMAINING: 1,
  COOKIE_HI: 2,
  COOKIE_LO: 3,
  FUA: 4,
  ERRNO: 5,
  LOOP: 6,
  REPLIED: 7,
  WRITES: 8,
  BYTES: 9,
  UNSENT: 10,
  COUNT: 11,
} as const;

export const SEEK_DATA = 3;
export const SEEK_HOLE = 4;
export const ENXIO = 6;
export const EAGAIN = 11;
export const EOPNOTSUPP = 95;

let cached: NativeIo | null | undefined;

/**
 * The addon, or null where it was not built (or HAVEN_NO_NATIVE=1): callers then use portable
 * fallbacks (no hole detection, zeroes written instead of punched).
 */
export function nativeIo(): NativeIo | null {
  if (cached !== undefined) return cached;
  if (process.env.HAVEN_NO_NATIVE === '1') return (cached = null);
  try {
    const require = createRequire(import.meta.url);
    const addon = require('../../../build/Release/haven_io.node') as Record<string, unknown>;
    // A plain object holding the same functions: the addon's own properties are read-only, and
    // tests observe the native jobs by wrapping one (send-order.test.ts).
    const io: Record<string, unknown> = {};
    for (const k of Object.getOwnPropertyNames(addon)) io[k] = addon[k];
    cached = io as unknown as NativeIo;
  } catch {
    cached = null;
  }
  return cached;
}
