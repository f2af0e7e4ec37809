/**
 * A result that may be ready now or later. Hot paths (the NBD server over a page-cached file)
 * complete synchronously and return the value itself, avoiding a promise per request; slow
 * devices return a promise. Callers use `isPromise` to take the fast path.
 */
export type MaybePromise<T> = T | Promise<T>;

export function isPromise<T>(v: MaybePromise<T>): v is Promise<T> {
  return typeof (v as Promise<T> | undefined)?.then === 'function';
}
