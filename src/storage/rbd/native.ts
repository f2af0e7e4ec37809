import { createRequire } from 'node:module';
import { HavenError, type HavenErrorCode } from '../../common/index.js';

/** Opaque librados/librbd handles of the addon (native/haven_rbd.c). */
export type ClusterHandle = { readonly __cluster: unique symbol };
export type IoctxHandle = { readonly __ioctx: unique symbol };
export type ImageHandle = { readonly __image: unique symbol };

/**
 * The librbd addon. Synchronous calls answer a value or -errno; asynchronous requests (read,
 * writev, flush, discard, writeZeroes) answer 0 when queued (or -errno at once) and complete
 * through the `onComplete(id, result)` given to init.
 */
export interface NativeRbd {
  init(onComplete: (id: number, result: number) => void): void;
  ref(): void;
  unref(): void;
  strerror(errno: number): string;
  connect(
    conf: string,
    mountTimeoutSeconds: number,
    osdTimeoutSeconds: number,
    cb: (err: number, cluster: ClusterHandle | null) => void,
  ): void;
  /** The same, on the calling thread: the cluster, or -errno. */
  connectSync(conf: string, mountTimeoutSeconds: number, osdTimeoutSeconds: number): ClusterHandle | number;
  shutdown(c: ClusterHandle): void;
  monCommand(c: ClusterHandle, json: string): [number, string, string];
  clusterStat(c: ClusterHandle): [number, number, number, number] | number;
  ioctx(c: ClusterHandle, pool: string): IoctxHandle | number;
  ioctxDestroy(io: IoctxHandle): void;
  list(io: IoctxHandle): [string, string][] | number;
  create(io: IoctxHandle, name: string, size: number, order: number): number;
  clone(pio: IoctxHandle, parent: string, snap: string, cio: IoctxHandle, child: string): number;
  remove(io: IoctxHandle, name: string): number;
  /** rbd_remove on the thread pool (it deletes every object of the image). */
  removeAsync(io: IoctxHandle, name: string, cb: (err: number) => void): void;
  rename(io: IoctxHandle, from: string, to: string): number;
  open(io: IoctxHandle, name: string, snapshot: string | null, readOnly: boolean): ImageHandle | number;
  close(img: ImageHandle): number;
  /** [size, id, created (seconds since the epoch), object size] */
  stat(img: ImageHandle): [number, string, number, number] | number;
  parent(img: ImageHandle): [string, string, string] | null | number;
  resize(img: ImageHandle, size: number): number;
  snapCreate(img: ImageHandle, name: string): number;
  snapRemove(img: ImageHandle, name: string): number;
  snapRollback(img: ImageHandle, name: string): number;
  /** [id, name, size, created] */
  snapList(img: ImageHandle): [number, string, number, number][] | number;
  /** Of an image opened at a snapshot: [pool, image, in trash] */
  children(img: ImageHandle): [string, string, boolean][] | number;
  metaSet(img: ImageHandle, key: string, value: string): number;
  metaRemove(img: ImageHandle, key: string): number;
  /** key, value, key, value, … */
  metaList(img: ImageHandle): string[] | number;
  read(img: ImageHandle, buf: Uint8Array, offset: number, id: number): number;
  writev(img: ImageHandle, bufs: readonly Uint8Array[], offset: number, id: number): number;
  flush(img: ImageHandle, id: number): number;
  discard(img: ImageHandle, offset: number, length: number, id: number): number;
  writeZeroes(img: ImageHandle, offset: number, length: number, thick: boolean, id: number): number;
  /** Triples of offset, length, exists (1) or reads as zeroes (0). */
  diff(
    img: ImageHandle,
    fromSnapshot: string | null,
    offset: number,
    length: number,
    wholeObject: boolean,
    includeParent: boolean,
    cb: (err: number, extents: Float64Array) => void,
  ): void;
  diffSync(
    img: ImageHandle,
    fromSnapshot: string | null,
    offset: number,
    length: number,
    wholeObject: boolean,
    includeParent: boolean,
  ): Float64Array | number;
}

let cached: { rbd: NativeRbd } | { error: string } | undefined;

/**
 * The librbd addon, loaded once; throws UNSUPPORTED naming why when it was not built (no
 * librbd-dev when `npm install` ran: scripts/setup installs it) — only RBD pools need it.
 */
export function nativeRbd(): NativeRbd {
  if (!cached) {
    try {
      const require = createRequire(import.meta.url);
      const rbd = require('../../../../build/Release/haven_rbd.node') as NativeRbd;
      rbd.init(complete);
      cached = { rbd };
    } catch (err) {
      cached = { error: (err as Error).message.split('\n')[0]! };
    }
  }
  if ('error' in cached)
    throw new HavenError(
      'UNSUPPORTED',
      `RBD pools need Haven's librbd addon (build/Release/haven_rbd.node), which is not available: ${cached.error}. Install librbd-dev and librados-dev (scripts/setup does) and run npm install again`,
    );
  return cached.rbd;
}

/** Whether the addon is available (RBD pools can be used). */
export function rbdAvailable(): boolean {
  try {
    nativeRbd();
    return true;
  } catch {
    return false;
  }
}

// ---- completions ---------------------------------------------------------------------------

type Done = (result: number) => void;
/** Pending requests by id; ids are reused through a free list, so the table stays small. */
const pending: (Done | undefined)[] = [];
const free: number[] = [];
let inflight = 0;

function complete(id: number, result: number): void {
  const done = pending[id];
  pending[id] = undefined;
  free.push(id);
  if (--inflight === 0 && cached && 'rbd' in cached) cached.rbd.unref();
  done?.(result);
}

/**
 * Issues one asynchronous request: `issue(id)` queues it with librbd (answering 0, or -errno when
 * refused at once); the promise settles with the request's result (>= 0), or rejects with the
 * error that `fail` makes of -errno (`settled` runs first). The event loop is kept alive while requests are in flight.
 */
export function request(
  rbd: NativeRbd,
  issue: (id: number) => number,
  fail: (errno: number) => Error,
  settled?: () => void,
): Promise<number> {
  return new Promise<number>((resolve, reject) => {
    const id = free.pop() ?? pending.length;
    pending[id] = (r) => {
      settled?.();
      if (r < 0) reject(fail(-r));
      else resolve(r);
    };
    if (inflight++ === 0) rbd.ref();
    const r = issue(id);
    if (r < 0) complete(id, r);
  });
}

const CODES: Record<number, HavenErrorCode> = {
  2: 'NOT_FOUND', // ENOENT
  1: 'UNAUTHENTICATED', // EPERM
  13: 'UNAUTHENTICATED', // EACCES
  16: 'CONFLICT', // EBUSY
  17: 'CONFLICT', // EEXIST
  22: 'INVALID_ARGUMENT', // EINVAL
  28: 'NO_SPACE', // ENOSPC
  30: 'READ_ONLY', // EROFS
  39: 'CONFLICT', // ENOTEMPTY
  95: 'UNSUPPORTED', // EOPNOTSUPP
  110: 'TIMEOUT', // ETIMEDOUT
  122: 'NO_SPACE', // EDQUOT
};

/** A HavenError for librbd's -errno: "what: the errno text (ENAME)". */
export function rbdError(rbd: NativeRbd, errno: number, what: string, code?: HavenErrorCode): HavenError {
  const e = Math.abs(errno);
  return new HavenError(code ?? CODES[e] ?? 'IO', `${what}: ${rbd.strerror(e)} (errno ${e})`);
}

/** The value, or a HavenError for a -errno answer. */
export function check<T>(rbd: NativeRbd, r: T | number, what: string): T {
  if (typeof r === 'number' && r < 0) throw rbdError(rbd, r, what);
  return r as T;
}
