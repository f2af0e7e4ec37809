import type { MaybePromise } from '../common/index.js';
import type { BlockDevice, BlockSizes, Extent, WriteFlags, ZeroFlags } from './device.js';

/**
 * A device that forwards everything to the device it wraps (nbdkit's "next"), so that a
 * wrapping device (tap, throttle, backed) extends it and states only what it changes. Each
 * method returns what the inner one returns, unchanged: a synchronous inner device stays
 * synchronous (no promise, no allocation per request).
 *
 * `cache` exists only when the inner device has it. `backingFd` is forwarded: the NBD server
 * then reads large replies straight from that file, past this device. So a subclass that
 * changes what a read returns or when it happens, or that may swap its inner device, must
 * state `backingFd` undefined.
 */
export class PassThroughDevice implements BlockDevice {
  /** Advisory cache of the inner device; absent when the inner device has none. */
  declare cache?: (offset: number, length: number) => MaybePromise<void>;

  constructor(protected readonly inner: BlockDevice) {
    this.adopt(inner);
  }

  get size(): number {
    return this.inner.size;
  }
  get readOnly(): boolean {
    return this.inner.readOnly;
  }
  get blockSizes(): BlockSizes {
    return this.inner.blockSizes;
  }
  get flushCoversAll(): boolean {
    return this.inner.flushCoversAll;
  }
  get backingFd(): number | undefined {
    return this.inner.backingFd;
  }

  read(buf: Uint8Array, offset: number): MaybePromise<void> {
    return this.inner.read(buf, offset);
  }
  write(data: Uint8Array | readonly Uint8Array[], offset: number, flags?: WriteFlags): MaybePromise<void> {
    return this.inner.write(data, offset, flags);
  }
  flush(): MaybePromise<void> {
    return this.inner.flush();
  }
  writeBack(): Promise<void> {
    return this.inner.writeBack?.() ?? Promise.resolve();
  }
  trim(offset: number, length: number, flags?: WriteFlags): MaybePromise<void> {
    return this.inner.trim(offset, length, flags);
  }
  writeZeroes(offset: number, length: number, flags?: ZeroFlags): MaybePromise<void> {
    return this.inner.writeZeroes(offset, length, flags);
  }
  blockStatus(offset: number, length: number): MaybePromise<Extent[]> {
    return this.inner.blockStatus(offset, length);
  }
  close(): MaybePromise<void> {
    return this.inner.close();
  }

  /** Puts `next` behind this device (`cache` follows it); returns the old one. */
  protected setInner(next: BlockDevice): BlockDevice {
    const old = this.inner;
    (this as unknown as { inner: BlockDevice }).inner = next;
    this.adopt(next);
    return old;
  }

  private adopt(inner: BlockDevice): void {
    if (inner.cache) this.cache = (offset, length) => this.inner.cache!(offset, length);
    // Set to undefined rather than deleted: a delete would slow every property access after it.
    else if (this.cache) this.cache = undefined;
  }
}
