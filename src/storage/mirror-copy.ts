import { setImmediate as yieldToIo } from 'node:timers/promises';
import { EXTENT_ZERO, type BlockDevice } from '../block/index.js';
import { HavenError, errorMessage, isPromise, type MaybePromise } from '../common/index.js';
import type { TapDevice, TapEvent } from './tap.js';

/**
 * Bytes copied per turn of the event loop. A guest request that arrives during a step waits for
 * it, so steps are small: 64 KiB (one cluster) takes ~0.1 ms warm and ~0.5 ms from the disk,
 * where 1 MiB took 1–3 ms and tripled the guest's write latency during a move, for no copy speed
 * gained (the copy is bound by the disk, not by the turns; see docs/decisions/0010-migrate-*).
 */
const STEP = 64 * 1024;
/** Copied bytes per write-behind batch: small, so a guest flush meets little of the copy. */
const SYNC_EVERY = 4 * 1024 * 1024;

export interface MirrorCopy {
  copiedBytes: number;
  mirroredBytes: number;
  /** Throws if mirroring a guest write failed (the copy is then not a copy). */
  check(): void;
  /** Stops mirroring (after the switch, or to give up). */
  stop(): void;
}

/**
 * Copies a volume's allocated data to a target device while the volume is in use, mirroring
 * every change that passes the volume's tap to the target before the change is acknowledged (as
 * VMware's mirror driver and QEMU's write-blocking mirror do). With every write mirrored, the
 * target equals the source when the pass ends, whatever the write load: the copy converges. The
 * caller then switches (TapDevice.hold) and stops the mirror.
 *
 * Devices that complete synchronously (Haven's file pools) run each copy step (read the source,
 * write the target) in one turn of the event loop, so no write can fall between its read and its
 * write. Asynchronous devices (an RBD pool on either side) get the same guarantee from ordering:
 * a copy step waits for the mirrored changes in flight that overlap it, and a mirrored change
 * waits for the copy step that overlaps it, so a step can never write stale data over a newer
 * mirrored change.
 */
export async function mirrorCopy(opts: {
  tap: TapDevice;
  source: BlockDevice;
  target: BlockDevice;
  signal?: AbortSignal;
  onProgress?: (done: number, total: number) => void;
  /**
   * Makes what was copied so far durable off the event loop; called every SYNC_EVERY bytes, so
   * that the disk never has much of the copy queued ahead of the guest's own flushes.
   */
  sync?: () => Promise<void>;
}): Promise<MirrorCopy> {
  const { tap, source, target } = opts;
  const buf = Buffer.allocUnsafe(STEP);
  let failure: unknown;
  /** Reads the source and writes the target, synchronously when both devices are. */
  const copyRange = (offset: number, length: number, into: Buffer): MaybePromise<void> => {
    for (let at = offset; at < offset + length; at += STEP) {
      const n = Math.min(STEP, offset + length - at);
      const b = into.subarray(0, n);
      const r = source.read(b, at);
      if (isPromise(r))
        return r
          .then(() => target.write(b, at))
          .then(() => copyRange(at + n, offset + length - at - n, into));
      const w = target.write(b, at);
      if (isPromise(w)) return w.then(() => copyRange(at + n, offset + length - at - n, into));
    }
  };
  /** The copy step under way, if it has not completed synchronously. */
  let step: { start: number; end: number; done: Promise<void> } | undefined;
  const mirroring = new Set<{ start: number; end: number; done: Promise<void> }>();
  const state: MirrorCopy = {
    copiedBytes: 0,
    mirroredBytes: 0,
    check() {
      if (failure)
        throw new HavenError('IO', `mirroring writes to the new pool failed: ${errorMessage(failure)}`);
    },
    stop: () => undefined,
  };
  const apply = (ev: TapEvent): MaybePromise<void> => {
    if (ev.op === 'write') return target.write(ev.data!, ev.offset);
    if (ev.op === 'zero') return target.writeZeroes(ev.offset, ev.length);
    return copyRange(ev.offset, ev.length, Buffer.allocUnsafe(STEP)); // resync: whatever the source holds now
  };
  const mirror = (ev: TapEvent): MaybePromise<void> => {
    if (failure) return;
    const fail = (err: unknown) => {
      failure ??= err; // a failure must not fail the guest's write (the source has it): the move fails instead
    };
    const start = ev.offset;
    const end = ev.offset + ev.length;
    const run = (): MaybePromise<void> => {
      if (failure) return;
      try {
        const r = apply(ev);
        if (!isPromise(r)) {
          state.mirroredBytes += ev.length;
          return;
        }
        const entry = { start, end, done: Promise.resolve() };
        entry.done = r
          .then(() => {
            state.mirroredBytes += ev.length;
          }, fail)
          .finally(() => mirroring.delete(entry));
        mirroring.add(entry);
        return entry.done;
      } catch (err) {
        fail(err);
      }
    };
    // The tap's data views are valid only during the callback: keep a copy to write later.
    if (step && step.start < end && start < step.end) {
      const later = ev.op === 'write' ? { ...ev, data: [Buffer.concat(ev.data!)] } : ev;
      return step.done.then(() => {
        ev = later;
        return run();
      });
    }
    return run();
  };
  state.stop = tap.subscribe(mirror);
  try {
    // Allocated extents, listed after the mirror is on: data written later is mirrored.
    const extents: { offset: number; length: number }[] = [];
    for (let at = 0; at < source.size;) {
      const list = await source.blockStatus(at, Math.min(source.size - at, 2 ** 30));
      if (!list.length) throw new HavenError('PROTOCOL', 'block status returned no extent');
      for (const e of list) {
        if (!(e.flags & EXTENT_ZERO)) extents.push({ offset: e.offset, length: e.length });
        at = e.offset + e.length;
      }
    }
    const total = extents.reduce((n, e) => n + e.length, 0);
    let unsynced = 0;
    let syncing: Promise<void> | undefined;
    let syncFailure: unknown;
    const syncFailed = () => {
      if (syncFailure)
        throw new HavenError('IO', `writing the copy to the disk failed: ${errorMessage(syncFailure)}`);
    };
    for (const e of extents)
      for (let at = e.offset; at < e.offset + e.length; at += STEP) {
        opts.signal?.throwIfAborted();
        state.check();
        const n = Math.min(STEP, e.offset + e.length - at);
        // Mirrored changes in flight over this range land first (then the read sees them).
        for (;;) {
          const over = [...mirroring].filter((m) => m.start < at + n && at < m.end);
          if (!over.length) break;
          await Promise.all(over.map((m) => m.done));
        }
        const r = copyRange(at, n, buf);
        if (isPromise(r)) {
          const done = r.then(
            () => undefined,
            (err: unknown) => {
              failure ??= err;
            },
          );
          step = { start: at, end: at + n, done };
          await done;
          step = undefined;
          state.check();
        }
        state.copiedBytes += n;
        opts.onProgress?.(state.copiedBytes, total);
        unsynced += n;
        if (opts.sync && unsynced >= SYNC_EVERY) {
          // One batch on its way to the disk while the next is copied; guest I/O goes on.
          unsynced = 0;
          await syncing;
          syncFailed();
          syncing = opts.sync().catch((err: unknown) => {
            syncFailure ??= err;
          });
        } else if (!isPromise(r)) await yieldToIo(); // guest I/O goes on between steps
      }
    await syncing;
    syncFailed();
    // Mirrored changes still in flight are part of the copy.
    while (mirroring.size) await Promise.all([...mirroring].map((m) => m.done));
    state.check();
    return state;
  } catch (err) {
    state.stop();
    throw err;
  }
}
