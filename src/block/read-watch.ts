import { errorMessage, isPromise, type MaybePromise } from '../common/index.js';
import { PassThroughDevice } from './pass-through.js';

/**
 * Remembers the first read that failed on the device it wraps (and counts them), passing every
 * request and its error on unchanged: a recoverability check reads it to tell "the backup could
 * not be read" from "the guest did not come up". A synchronous inner read stays synchronous.
 */
export class ReadWatchDevice extends PassThroughDevice {
  failedReads = 0;
  firstError: { offset: number; length: number; message: string } | undefined;

  override read(buf: Uint8Array, offset: number): MaybePromise<void> {
    let r: MaybePromise<void>;
    try {
      r = this.inner.read(buf, offset);
    } catch (err) {
      this.note(buf.length, offset, err);
      throw err;
    }
    if (!isPromise(r)) return r;
    return r.catch((err: unknown) => {
      this.note(buf.length, offset, err);
      throw err;
    });
  }

  private note(length: number, offset: number, err: unknown): void {
    this.failedReads++;
    this.firstError ??= { offset, length, message: errorMessage(err) };
  }
}
