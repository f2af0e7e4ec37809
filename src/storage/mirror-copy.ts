import { setImmediate as yieldToIo } from 'node:timers/promises';
import { EXTENT_ZERO, type BlockDevice } from '../block/index.js';
import { HavenError, errorMessage, isPromise } from '../common/index.js';
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
 * every change that passes the volume's tap to the target synchronously, before the change is
 * acknowledged (as VMware's mirror driver and QEMU's write-blocking mirror do). Because the pool
 * devices complete synchronously, each copy step (read the source, write the target) runs in one
 * turn of the event loop, and no write can fall between its read and its write; with every write
 * mirrored, the target equals the source when the pass ends, whatever the write load: the copy
 * converges. The caller then switches in the same turn and stops the mirror.
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
  const sync = (r: unknown, what: string) => {
    if (isPromise(r)) throw new HavenError('INTERNAL', `${what} did not complete synchronously`);
  };
  const copyRange = (offset: number, length: number) => {
    for (let at = offset; at < offset + length; at += STEP) {
      const n = Math.min(STEP, offset + length - at);
      sync(source.read(buf.subarray(0, n), at), 'reading the source');
      sync(target.write(buf.subarray(0, n), at), 'writing the target');
    }
  };
  const state: MirrorCopy = {
    copiedBytes: 0,
    mirroredBytes: 0,
    check() {
      if (failure)
        throw new HavenError('IO', `mirroring writes to the new pool failed: ${errorMessage(failure)}`);
    },
    stop: () => undefined,
  };
  const mirror = (ev: TapEvent) => {
    if (failure) return;
    try {
      // A failure here must not fail the guest's write (the source has it): the move fails instead.
      if (ev.op === 'write') sync(target.write(ev.data!, ev.offset), 'mirroring a write');
      else if (ev.op === 'zero') sync(target.writeZeroes(ev.offset, ev.length), 'mirroring zeroes');
      else copyRange(ev.offset, ev.length); // resync: whatever the source holds now
      state.mirroredBytes += ev.length;
    } catch (err) {
      failure = err;
    }
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
        copyRange(at, n);
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
        } else await yieldToIo(); // guest I/O goes on between steps
      }
    await syncing;
    syncFailed();
    state.check();
    return state;
  } catch (err) {
    state.stop();
    throw err;
  }
}
