import { PassThroughDevice, type BlockDevice, type WriteFlags, type ZeroFlags } from '../block/index.js';
import { HavenError, isPromise, type MaybePromise } from '../common/index.js';

/** One change to a volume, as the tap saw it. */
export interface TapEvent {
  /** Strictly increasing per volume; a write issued after another completed has a higher number. */
  seq: number;
  /**
   * 'resync': a change failed part-way (e.g. the pool filled up), so the range's content is
   * whatever the volume now holds; a subscriber keeping a copy must read the range again.
   */
  op: 'write' | 'zero' | 'resync';
  offset: number;
  length: number;
  /** The written bytes (op 'write'); views valid only during the callback: copy what you keep. */
  data?: readonly Uint8Array[];
}

/** A change on its way to the device; `held` while it waits for TapDevice.hold's release. */
interface InFlight {
  start: number;
  end: number;
  done: Promise<void>;
  held: boolean;
}

/** Anything that wants to know which ranges changed: dirty bitmaps (changed-block tracking). */
export interface ChangeTracker {
  markDirty(offset: number, length: number): void;
}

/**
 * Told of each change after it is applied and before it is acknowledged. A promise returned
 * holds the acknowledgement until it settles (synchronous replication); most return nothing.
 */
export type TapSubscriber = (event: TapEvent) => void | Promise<void>;

/**
 * The I/O tap: every write, trim and write-zeroes of a volume passes through here. It numbers
 * them, marks the change trackers (dirty bitmaps) and tells subscribers (replication), in order.
 *
 * Ordering: a number is given when the request arrives. Overlapping requests are applied to the
 * volume in number order: one that overlaps a request still in flight waits for it. (The volume
 * devices of a pool complete synchronously, so nothing is ever in flight between two requests
 * there and this costs nothing; the rule matters for asynchronous devices below.)
 *
 * Trackers are marked before the change is applied, so a backup that reads a bitmap never misses a
 * change that is already on the volume. Subscribers are told after it is applied and before it
 * is acknowledged.
 */
export class TapDevice extends PassThroughDevice {
  private nextSeq: number;
  private readonly trackers = new Set<ChangeTracker>();
  private readonly subscribers = new Set<TapSubscriber>();
  private readonly flushBarriers = new Set<() => MaybePromise<void>>();
  private inflight: InFlight[] = [];
  /** While set (hold), new changes wait for it before they reach the device. */
  private gate: Promise<void> | undefined;

  constructor(inner: BlockDevice, opts: { firstSeq?: number; shared?: boolean } = {}) {
    super(inner);
    this.nextSeq = opts.firstSeq ?? 1;
    this.shared = opts.shared ?? false;
  }

  /** A shared tap (the one of a volume, used by every writer) ignores close: its owner closes the volume. */
  private readonly shared: boolean;

  /** Never: the inner device may be replaced under a connection that would keep reading its file. */
  override get backingFd(): undefined {
    return undefined;
  }
  /** The number the next change will get. */
  get sequence(): number {
    return this.nextSeq;
  }

  addTracker(t: ChangeTracker): void {
    this.trackers.add(t);
  }
  removeTracker(t: ChangeTracker): void {
    this.trackers.delete(t);
  }

  /**
   * Puts another device behind the tap (a volume moved to another pool): every writer and NBD
   * client keeps its handle and goes on. Only between requests: refused while a change is in
   * flight (the pool devices complete synchronously, so a caller in one turn of the event loop
   * always finds none).
   */
  replaceInner(next: BlockDevice): BlockDevice {
    if (this.inflight.some((e) => !e.held))
      throw new HavenError('CONFLICT', 'the volume has changes in flight');
    return this.setInner(next);
  }

  /**
   * Holds every new change before it reaches the device, and resolves once the changes already
   * in flight have completed: then nothing is in flight, and replaceInner may switch devices
   * (asynchronous devices, e.g. RBD, always have changes in flight under load). The held changes
   * keep their numbers and go to whatever device is inside when `release` is called. Reads and
   * flushes are not held.
   */
  async hold(): Promise<() => void> {
    if (this.gate) throw new HavenError('CONFLICT', 'the volume is held already');
    let open!: () => void;
    this.gate = new Promise<void>((r) => (open = r));
    const release = () => {
      this.gate = undefined;
      open();
    };
    try {
      await Promise.all(this.inflight.filter((e) => !e.held).map((e) => e.done));
    } catch (err) {
      release();
      throw err;
    }
    return release;
  }

  /** Whether a change is in flight (so replaceInner would refuse). */
  get busy(): boolean {
    return this.inflight.length > 0;
  }

  /** Resolves once the changes in flight now have completed (failed ones too). */
  async settled(): Promise<void> {
    await Promise.all(this.inflight.map((e) => e.done));
  }

  /** Subscribes to every change from now on; returns the unsubscribe function. */
  subscribe(fn: TapSubscriber): () => void {
    this.subscribers.add(fn);
    return () => this.subscribers.delete(fn);
  }

  /**
   * Adds what a FLUSH must also wait for (a replication journal: a flushed write is never on the
   * volume without being in the journal too); returns the removal function.
   */
  addFlushBarrier(fn: () => MaybePromise<void>): () => void {
    this.flushBarriers.add(fn);
    return () => this.flushBarriers.delete(fn);
  }

  override flush(): MaybePromise<void> {
    if (!this.flushBarriers.size) return this.inner.flush();
    return all([this.inner.flush(), ...[...this.flushBarriers].map((f) => f())]);
  }

  /** A FUA change is durable once applied: what the barriers hold of it too. */
  private fua(flags: WriteFlags | undefined, r: MaybePromise<void>): MaybePromise<void> {
    if (!flags?.fua || !this.flushBarriers.size) return r;
    const barriers = () => all([...this.flushBarriers].map((f) => f()));
    return isPromise(r) ? r.then(barriers) : barriers();
  }

  override write(
    data: Uint8Array | readonly Uint8Array[],
    offset: number,
    flags?: WriteFlags,
  ): MaybePromise<void> {
    const parts = Array.isArray(data) ? (data as readonly Uint8Array[]) : [data as Uint8Array];
    let length = 0;
    for (const p of parts) length += p.length;
    return this.fua(
      flags,
      this.change('write', offset, length, parts, () => this.inner.write(data, offset, flags)),
    );
  }

  override trim(offset: number, length: number, flags?: WriteFlags): MaybePromise<void> {
    return this.fua(
      flags,
      this.change('zero', offset, length, undefined, () => this.inner.trim(offset, length, flags)),
    );
  }

  override writeZeroes(offset: number, length: number, flags?: ZeroFlags): MaybePromise<void> {
    return this.fua(
      flags,
      this.change('zero', offset, length, undefined, () => this.inner.writeZeroes(offset, length, flags)),
    );
  }

  override close(): MaybePromise<void> {
    if (!this.shared) return super.close();
  }

  private change(
    op: TapEvent['op'],
    offset: number,
    length: number,
    data: readonly Uint8Array[] | undefined,
    apply: () => MaybePromise<void>,
  ): MaybePromise<void> {
    if (this.readOnly || offset < 0 || offset + length > this.size) return apply(); // the device refuses it
    const seq = this.nextSeq++;
    const end = offset + length;
    const blockers = this.inflight.filter((r) => r.start < end && offset < r.end).map((r) => r.done);
    const done = () => this.publish({ seq, op, offset, length, ...(data ? { data } : {}) });
    const failed = (err: unknown) => {
      const told = this.publish({ seq, op: 'resync', offset, length });
      if (isPromise(told)) told.catch(() => undefined);
      throw err;
    };
    const run = (): MaybePromise<void> => {
      for (const t of this.trackers) t.markDirty(offset, length);
      let r: MaybePromise<void>;
      try {
        r = apply();
      } catch (err) {
        return failed(err);
      }
      if (isPromise(r)) return r.then(done, failed);
      return done();
    };
    let entry: InFlight | undefined;
    const gate = this.gate;
    if (gate) {
      const held: InFlight = { start: offset, end, done: gate, held: true };
      entry = held;
      blockers.push(
        gate.then(() => {
          held.held = false; // on its way to the device now
        }),
      );
    }
    const result = blockers.length ? Promise.all(blockers).then(run) : run();
    if (!isPromise(result)) return;
    entry ??= { start: offset, end, done: result, held: false };
    entry.done = result.catch(() => undefined);
    this.inflight.push(entry);
    return result.finally(() => (this.inflight = this.inflight.filter((e) => e !== entry)));
  }

  private publish(ev: TapEvent): MaybePromise<void> {
    let waits: Promise<void>[] | undefined;
    for (const s of this.subscribers) {
      const w = s(ev);
      if (isPromise(w)) (waits ??= []).push(w);
    }
    if (waits) return Promise.all(waits).then(() => undefined);
  }
}

/** Waits for those of `waits` that are promises; synchronous when none is. */
function all(waits: MaybePromise<void>[]): MaybePromise<void> {
  const pending = waits.filter(isPromise);
  if (pending.length) return Promise.all(pending).then(() => undefined);
}
