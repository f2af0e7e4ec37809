import { invalidArgument, isPromise, type MaybePromise } from '../common/index.js';
import type { BlockDevice, WriteFlags, ZeroFlags } from './device.js';
import { PassThroughDevice } from './pass-through.js';

export interface ThrottleLimits {
  /** Operations per second (reads, writes, trims, zeroes); unlimited when unset. */
  iops?: number;
  /** Bytes read or written per second; unlimited when unset. */
  bytesPerSecond?: number;
  /** How much unused allowance may pile up, in seconds of the limit (default 0.25). */
  burstSeconds?: number;
}

/**
 * Limits a device to an IOPS and a bandwidth budget (token buckets), so that VMs running from
 * backup storage do not starve the backups. Requests wait in one FIFO queue (no starvation); a
 * request within budget passes synchronously. Flush and block status are not limited.
 */
export class ThrottledDevice extends PassThroughDevice {
  private ops: number;
  private bytes: number;
  private last = performance.now();
  private readonly queue: { bytes: number; go: () => void }[] = [];
  private timer: NodeJS.Timeout | undefined;
  private readonly burst: number;

  constructor(
    inner: BlockDevice,
    private readonly limits: ThrottleLimits,
  ) {
    super(inner);
    for (const [k, v] of Object.entries(limits))
      if (v !== undefined && (!Number.isFinite(v) || v <= 0))
        throw invalidArgument(`throttle ${k} must be a positive number, not ${v}`);
    this.burst = limits.burstSeconds ?? 0.25;
    this.ops = this.opsCapacity;
    this.bytes = this.bytesCapacity;
  }

  /** Never: reads sent straight from the file would pass the budget. */
  override get backingFd(): undefined {
    return undefined;
  }

  override read(buf: Uint8Array, offset: number): MaybePromise<void> {
    return this.after(buf.length, () => this.inner.read(buf, offset));
  }

  override write(
    data: Uint8Array | readonly Uint8Array[],
    offset: number,
    flags?: WriteFlags,
  ): MaybePromise<void> {
    let n = 0;
    for (const p of Array.isArray(data) ? (data as readonly Uint8Array[]) : [data as Uint8Array])
      n += p.length;
    return this.after(n, () => this.inner.write(data, offset, flags));
  }

  override trim(offset: number, length: number, flags?: WriteFlags): MaybePromise<void> {
    return this.after(0, () => this.inner.trim(offset, length, flags));
  }

  override writeZeroes(offset: number, length: number, flags?: ZeroFlags): MaybePromise<void> {
    return this.after(0, () => this.inner.writeZeroes(offset, length, flags));
  }

  override close(): MaybePromise<void> {
    if (this.timer) clearTimeout(this.timer);
    return super.close();
  }

  private get opsCapacity(): number {
    return this.limits.iops ? Math.max(1, this.limits.iops * this.burst) : Infinity;
  }

  private get bytesCapacity(): number {
    return this.limits.bytesPerSecond ? Math.max(1, this.limits.bytesPerSecond * this.burst) : Infinity;
  }

  private refill(): void {
    const now = performance.now();
    const dt = (now - this.last) / 1000;
    this.last = now;
    if (this.limits.iops) this.ops = Math.min(this.opsCapacity, this.ops + dt * this.limits.iops);
    if (this.limits.bytesPerSecond)
      this.bytes = Math.min(this.bytesCapacity, this.bytes + dt * this.limits.bytesPerSecond);
  }

  /** A request may go when one operation and (part of) its bytes are available; bytes may go into debt. */
  private fits(bytes: number): boolean {
    return this.ops >= 1 && this.bytes >= Math.min(bytes, this.bytesCapacity);
  }

  private take(bytes: number): void {
    if (this.limits.iops) this.ops -= 1;
    if (this.limits.bytesPerSecond) this.bytes -= bytes;
  }

  private after<T>(bytes: number, op: () => MaybePromise<T>): MaybePromise<T> {
    this.refill();
    if (this.queue.length === 0 && this.fits(bytes)) {
      this.take(bytes);
      return op();
    }
    return new Promise<void>((go) => {
      this.queue.push({ bytes, go });
      this.schedule();
    }).then(() => {
      const r = op();
      return isPromise(r) ? r : Promise.resolve(r);
    });
  }

  private schedule(): void {
    if (this.timer) return;
    this.refill();
    while (this.queue.length && this.fits(this.queue[0]!.bytes)) {
      const head = this.queue.shift()!;
      this.take(head.bytes);
      head.go();
    }
    if (!this.queue.length) return;
    const head = this.queue[0]!;
    const needOps = this.limits.iops ? Math.max(0, 1 - this.ops) / this.limits.iops : 0;
    const needBytes = this.limits.bytesPerSecond
      ? Math.max(0, Math.min(head.bytes, this.bytesCapacity) - this.bytes) / this.limits.bytesPerSecond
      : 0;
    this.timer = setTimeout(
      () => {
        this.timer = undefined;
        this.schedule();
      },
      Math.max(1, Math.ceil(Math.max(needOps, needBytes) * 1000)),
    );
  }
}
