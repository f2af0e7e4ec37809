import { createHash } from 'node:crypto';
import { setImmediate as turn } from 'node:timers/promises';
import { EXTENT_ZERO, type BlockDevice } from '../../block/index.js';
import { HavenError } from '../../common/index.js';
import type { TapDevice, TapEvent } from '../../storage/index.js';
import { RecordKind } from './journal-format.js';
import type { ReplicationJournal } from './journal.js';
import { allZero, sumAt, zeroSum } from './checksums.js';

export interface ScanSource {
  /** The volume's tap: the scan sees through it any change that races a read. */
  tap: TapDevice;
  /** Where to read (default: the tap). */
  device?: BlockDevice;
  /** The ranges to scan, ascending and disjoint (a dirty bitmap's); default: the whole volume. */
  ranges?: readonly { offset: number; length: number }[];
}

export interface ScanOptions {
  /** Bytes read per step (the memory the scan holds). */
  stepBytes?: number;
  /**
   * Zeroed ranges become zero records (a replica that may hold data there: a resync); false
   * (default): skipped (a fresh, all-zero replica: the initial sync).
   */
  zeroes?: boolean;
  /** Resume: the volume and offset to start at (what onProgress last said). */
  from?: { volume: number; offset: number };
  /** After each step: where the scan goes on from, for resuming it. */
  onProgress?: (at: { volume: number; offset: number; readBytes: number }) => void;
  /** The journal is full: resolves when there may be room (the target acknowledged). */
  waitForRoom?: () => Promise<void>;
  signal?: AbortSignal;
  /**
   * A compare sync: the target's sums per extent of each volume (checksums.ts, of what it holds
   * now). The scan goes extent by extent; an extent whose content, read now, has the target's
   * sum is not sent; one that differs is sent whole (a zero record when it is all zero).
   */
  compare?: { extentBytes: number; sums: readonly Buffer[] };
}

export interface ScanResult {
  readBytes: number;
  zeroBytes: number;
  /** Bytes not sent because the target holds them already (a compare sync). */
  sameBytes: number;
  /** Steps read again because a change raced the read. */
  rereads: number;
}

/**
 * A scan of a group's volumes into its journal (decision 0012, 5): reads ranges of the source
 * and appends them as resync records with their bytes — the initial sync, a resync of a dirty
 * bitmap's ranges, a repair; with `compare`, only the extents whose sums differ from the
 * target's (decision 0014, 5). Each step's bytes are appended in the same synchronous stretch that
 * follows their read, and a change to the range that came while the read was under way (an
 * asynchronous device) makes the step read again: so a guest write to the range always gets a
 * later sequence than the scan's copy of it, and wins. Holes and zeroes are not read (block
 * status). Memory: one step.
 */
export async function scanGroup(
  journal: ReplicationJournal,
  sources: readonly ScanSource[],
  opts: ScanOptions = {},
): Promise<ScanResult> {
  const compare = opts.compare;
  const step = compare?.extentBytes ?? opts.stepBytes ?? 1024 * 1024;
  const buf = Buffer.alloc(step);
  const result: ScanResult = { readBytes: 0, zeroBytes: 0, sameBytes: 0, rereads: 0 };
  // The range being read now, and whether a change hit it meanwhile.
  let reading: { volume: number; start: number; end: number } | undefined;
  let raced = false;
  const watch = (volume: number) => (ev: TapEvent) => {
    if (
      reading &&
      reading.volume === volume &&
      ev.offset < reading.end &&
      reading.start < ev.offset + ev.length
    )
      raced = true;
  };
  const unsubscribe = sources.map((s, i) => s.tap.subscribe(watch(i)));
  const waitForRoom = async () => {
    if (!opts.waitForRoom)
      throw new HavenError(
        'NO_SPACE',
        `the replication journal is full (${journal.maxBytes} bytes) and the scan cannot wait`,
      );
    await opts.waitForRoom();
  };
  const append = async (kind: RecordKind, volume: number, offset: number, length: number) => {
    while (journal.append(kind, volume, offset, length) === undefined) await waitForRoom();
  };
  /**
   * One extent of a compare sync: read (or known zero by block status), summed and compared in
   * the synchronous stretch after the read, and appended there when it differs; read again when a
   * change raced the read, or when the journal was full (what was read may be stale by then).
   */
  const compareExtent = async (
    v: number,
    device: BlockDevice,
    at: number,
    length: number,
    theirs: Buffer,
  ) => {
    const data = buf.subarray(0, length);
    for (;;) {
      reading = { volume: v, start: at, end: at + length };
      raced = false;
      const zero = await allZero(device, at, length);
      if (!zero) await device.read(data, at);
      if (raced) {
        result.rereads++;
        continue;
      }
      reading = undefined;
      const ours = zero ? zeroSum(length) : createHash('sha256').update(data).digest();
      if (ours.equals(theirs)) {
        result.sameBytes += length;
        return;
      }
      const seq = zero
        ? journal.append(RecordKind.zero, v, at, length)
        : journal.append(RecordKind.resync, v, at, length, [data]);
      if (seq !== undefined) {
        if (zero) result.zeroBytes += length;
        else result.readBytes += length;
        return;
      }
      await waitForRoom();
    }
  };
  try {
    for (let v = opts.from?.volume ?? 0; v < sources.length; v++) {
      const src = sources[v]!;
      const device = src.device ?? src.tap;
      const ranges = src.ranges ?? [{ offset: 0, length: device.size }];
      const resumeAt = opts.from && v === opts.from.volume ? opts.from.offset : 0;
      // A compare goes in whole extents (a resume point saved by another kind of scan may not be on one).
      const startAt = compare ? Math.floor(resumeAt / step) * step : resumeAt;
      for (const r of compare ? ranges.map((x) => alignRange(x, step, device.size)) : ranges) {
        for (let at = Math.max(r.offset, startAt); at < r.offset + r.length;) {
          opts.signal?.throwIfAborted();
          const end = Math.min(r.offset + r.length, at + step);
          if (compare) {
            await compareExtent(v, device, at, end - at, sumAt(compare.sums[v]!, at / step));
            at = end;
            opts.onProgress?.({ volume: v, offset: at, readBytes: result.readBytes });
            // Hashing equal extents never waits for anything: let the guests' I/O in.
            await turn();
            continue;
          }
          for (const e of await device.blockStatus(at, end - at)) {
            const eStart = Math.max(at, e.offset);
            const eEnd = Math.min(end, e.offset + e.length);
            if (eEnd <= eStart) continue;
            if (e.flags & EXTENT_ZERO) {
              if (opts.zeroes) await append(RecordKind.zero, v, eStart, eEnd - eStart);
              result.zeroBytes += eEnd - eStart;
              continue;
            }
            const data = buf.subarray(0, eEnd - eStart);
            for (;;) {
              reading = { volume: v, start: eStart, end: eEnd };
              raced = false;
              await device.read(data, eStart);
              if (raced) {
                result.rereads++;
                continue;
              }
              // Nothing ran between the read's end and here: no change can fall between them.
              reading = undefined;
              if (journal.append(RecordKind.resync, v, eStart, data.length, [data]) !== undefined) break;
              // Full: once there is room, what was read may be stale: read it again.
              await waitForRoom();
            }
            result.readBytes += data.length;
          }
          at = end;
          opts.onProgress?.({ volume: v, offset: at, readBytes: result.readBytes });
          // Reads from the page cache resolve without waiting for a turn of the event loop: a
          // long scan would hold the guests' I/O off for its whole length (218 ms seen) without this.
          await turn();
        }
      }
    }
  } finally {
    for (const u of unsubscribe) u();
  }
  return result;
}

/** A range widened to whole extents (the last one ends at the volume's end). */
function alignRange(r: { offset: number; length: number }, extent: number, size: number) {
  const offset = Math.floor(r.offset / extent) * extent;
  return { offset, length: Math.min(size, Math.ceil((r.offset + r.length) / extent) * extent) - offset };
}
