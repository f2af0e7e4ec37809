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
   * On the thread pool, receives the socket's next `length` bytes into the file at `offset`.
   * `done(received, sockErrno, fileErrno)`: bytes taken off the socket (after a file error the
   * rest is still received and dropped); sockErrno EAGAIN: the client paused, the rest is the
   * caller's to receive. Nothing else may read the socket until `done` runs.
   */
  recvToFile(
    sockFd: number,
    fileFd: number,
    offset: number,
    length: number,
    done: (received: number, sockErrno: number, fileErrno: number) => void,
  ): void;
  /** A duplicate of a descriptor (close-on-exec), or -errno. */
  dup(fd: number): number;
  close(fd: number): number;
}

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
    cached = require('../../../build/Release/haven_io.node') as NativeIo;
  } catch {
    cached = null;
  }
  return cached;
}
