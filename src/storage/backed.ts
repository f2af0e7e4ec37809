import { setImmediate as yieldToIo } from 'node:timers/promises';
import {
  EXTENT_ZERO,
  PassThroughDevice,
  type BlockDevice,
  type Extent,
  type WriteFlags,
  type ZeroFlags,
} from '../block/index.js';
import { HavenError, isPromise, type MaybePromise } from '../common/index.js';

/**
 * A volume running over a read-only base (instant recovery: a backup): a cluster the volume has
 * not mapped yet reads from the base; a write to such a cluster first fills it from the base
 * (copy on write, whole cluster), so that from then on the volume alone holds it. The base is
 * never written. fill() copies what is left in the background; once it has, the volume no longer
 * needs the base (unmapped clusters then are zero in the base too, and read as zeroes).
 *
 * "Mapped" is the volume's own allocation, so snapshots of the volume (backup checkpoints) work
 * over the same base with the same rule. Zeroes written by the guest are written allocated, so
 * that a zeroed cluster never falls through to the base again.
 *
 * The inner device (of the pass-through) is the volume: size, flags, flush and close are its.
 */
export class BackedDevice extends PassThroughDevice {
  private readonly fills = new Map<number, Promise<void>>();
  /** Bytes filled from the base (copy on write and fill()). */
  filledBytes = 0;

  constructor(
    volume: BlockDevice,
    private readonly base: BlockDevice,
    readonly clusterSize: number,
  ) {
    super(volume);
    if (base.size < volume.size)
      throw new HavenError(
        'INVALID_ARGUMENT',
        `the base (${base.size} bytes) is smaller than the volume (${volume.size})`,
      );
  }

  /** Never: clusters the volume has not mapped read from the base. */
  override get backingFd(): undefined {
    return undefined;
  }

  /** Advisory only, and the base is where unmapped clusters are: none rather than the volume's. */
  override cache = undefined;

  override read(buf: Uint8Array, offset: number): MaybePromise<void> {
    const pending: Promise<void>[] = [];
    this.runs(offset, buf.length, (mapped, at, len) => {
      const part = buf.subarray(at - offset, at - offset + len);
      const r = mapped ? this.inner.read(part, at) : this.base.read(part, at);
      if (isPromise(r)) pending.push(r);
    });
    if (pending.length) return Promise.all(pending).then(() => undefined);
  }

  override write(
    data: Uint8Array | readonly Uint8Array[],
    offset: number,
    flags?: WriteFlags,
  ): MaybePromise<void> {
    const parts = Array.isArray(data) ? (data as readonly Uint8Array[]) : [data as Uint8Array];
    let length = 0;
    for (const p of parts) length += p.length;
    const ready = this.prepare(offset, length);
    if (!ready) return this.inner.write(data, offset, flags);
    return ready.then(() => this.inner.write(data, offset, flags));
  }

  override writeZeroes(offset: number, length: number, flags?: ZeroFlags): MaybePromise<void> {
    // Allocated zeroes: an unmapped cluster would read the base again.
    const zero = () => this.inner.writeZeroes(offset, length, { ...flags, noHole: true });
    const ready = this.prepare(offset, length);
    return ready ? ready.then(zero) : zero();
  }

  override trim(offset: number, length: number, flags?: WriteFlags): MaybePromise<void> {
    return this.writeZeroes(offset, length, flags?.fua ? { fua: true } : {});
  }

  override async blockStatus(offset: number, length: number): Promise<Extent[]> {
    const out: Extent[] = [];
    const parts: { mapped: boolean; at: number; len: number }[] = [];
    this.runs(offset, Math.min(length, this.size - offset), (mapped, at, len) =>
      parts.push({ mapped, at, len }),
    );
    for (const p of parts) {
      const list = p.mapped
        ? await this.inner.blockStatus(p.at, p.len)
        : await this.base.blockStatus(p.at, p.len);
      for (const e of list) {
        const prev = out[out.length - 1];
        if (prev && prev.flags === e.flags && prev.offset + prev.length === e.offset) prev.length += e.length;
        else out.push({ ...e });
      }
    }
    return out;
  }

  /**
   * Copies from the base every cluster the volume has not mapped yet and that holds data there,
   * beside the guest's I/O (a cluster at a time, yielding between). Returns the bytes copied.
   */
  async fill(
    opts: { signal?: AbortSignal; onProgress?: (done: number, total: number) => void } = {},
  ): Promise<number> {
    const todo = await this.remaining();
    const total = todo.length * this.clusterSize;
    let done = 0;
    for (const c of todo) {
      opts.signal?.throwIfAborted();
      await this.fillCluster(c);
      done += this.clusterSize;
      opts.onProgress?.(done, total);
      await yieldToIo();
    }
    return done;
  }

  /** Clusters not mapped in the volume whose base range holds data. */
  private async remaining(): Promise<number[]> {
    const cs = this.clusterSize;
    const out: number[] = [];
    const unmapped: { at: number; len: number }[] = [];
    this.runs(0, this.size, (mapped, at, len) => {
      if (!mapped) unmapped.push({ at, len });
    });
    for (const u of unmapped)
      for (let at = u.at; at < u.at + u.len;) {
        const list = await this.base.blockStatus(at, u.at + u.len - at);
        for (const e of list) {
          if (!(e.flags & EXTENT_ZERO))
            for (let c = Math.floor(e.offset / cs); c * cs < e.offset + e.length; c++)
              if (out[out.length - 1] !== c) out.push(c);
          at = e.offset + e.length;
        }
        if (!list.length) break;
      }
    return out;
  }

  /** Fills the clusters a change touches that the volume has not mapped; undefined if none. */
  private prepare(offset: number, length: number): Promise<void> | undefined {
    const cs = this.clusterSize;
    const waits: Promise<void>[] = [];
    for (let c = Math.floor(offset / cs); c * cs < offset + length && c * cs < this.size; c++) {
      const inFlight = this.fills.get(c);
      if (inFlight) waits.push(inFlight);
      else if (!this.isMapped(c)) {
        // A change covering the whole cluster needs nothing from the base.
        if (offset <= c * cs && offset + length >= Math.min((c + 1) * cs, this.size)) continue;
        waits.push(this.fillCluster(c));
      }
    }
    return waits.length ? Promise.all(waits).then(() => undefined) : undefined;
  }

  private fillCluster(c: number): Promise<void> {
    const existing = this.fills.get(c);
    if (existing) return existing;
    const p = (async () => {
      if (this.isMapped(c)) return;
      const at = c * this.clusterSize;
      const len = Math.min(this.clusterSize, this.size - at);
      const buf = Buffer.allocUnsafe(len);
      await this.base.read(buf, at);
      // Checked again: nothing else fills this cluster (the lock), and a guest write to it waits.
      if (!this.isMapped(c)) {
        const r = this.inner.write(buf, at);
        if (isPromise(r)) await r;
        this.filledBytes += len;
      }
    })().finally(() => this.fills.delete(c));
    this.fills.set(c, p);
    return p;
  }

  private isMapped(c: number): boolean {
    const list = this.inner.blockStatus(c * this.clusterSize, 1);
    if (isPromise(list)) throw new HavenError('INTERNAL', 'the volume must answer block status at once');
    return list.length > 0 && (list[0]!.flags & EXTENT_ZERO) === 0;
  }

  /** Splits a range into runs of clusters the volume has mapped or not. */
  private runs(offset: number, length: number, fn: (mapped: boolean, at: number, len: number) => void): void {
    const end = Math.min(offset + length, this.size);
    for (let at = offset; at < end;) {
      const list = this.inner.blockStatus(at, end - at);
      if (isPromise(list)) throw new HavenError('INTERNAL', 'the volume must answer block status at once');
      if (!list.length) break;
      for (const e of list) {
        const len = Math.min(e.offset + e.length, end) - at;
        fn((e.flags & EXTENT_ZERO) === 0, at, len);
        at += len;
        if (at >= end) break;
      }
    }
  }
}
