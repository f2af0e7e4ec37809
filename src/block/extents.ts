import { HavenError, isPromise, type MaybePromise } from '../common/index.js';
import { EXTENT_ZERO, type BlockDevice, type Extent } from './device.js';

/**
 * The one walk over a device's block status (or any source of extents in the same shape: a
 * dirty-bitmap context, a BitmapView). Every caller that needs "the extents of [from, end)" uses
 * this instead of its own loop, so the edge cases live in one place: answers are asked for in
 * windows (a server may cap a reply, and a 16 TiB request is refused by some), an extent that
 * runs past the end is clipped, an empty answer or one that does not start where it was asked is
 * a protocol error (never an endless loop), and the walk stops between windows when aborted.
 */
export type StatusFn = (offset: number, length: number) => MaybePromise<Extent[]>;

export interface WalkOptions {
  /** First byte (default 0). */
  from?: number;
  /** End of the walk (default: the device's size). */
  end?: number;
  /** Bytes asked for per call (default 1 GiB). */
  window?: number;
  signal?: AbortSignal;
}

const GiB = 2 ** 30;

/** Yields the extents of [from, end) in order, clipped to the range and contiguous. */
export async function* walkExtents(
  status: StatusFn,
  end: number,
  opts: Omit<WalkOptions, 'end'> = {},
): AsyncGenerator<Extent> {
  const window = opts.window ?? GiB;
  for (let at = opts.from ?? 0; at < end;) {
    opts.signal?.throwIfAborted();
    const r = status(at, Math.min(window, end - at));
    for (const e of checked(isPromise(r) ? await r : r, at, end)) {
      yield e;
      at = e.offset + e.length;
    }
  }
}

/** The same walk over a source that answers at once (a BitmapView, a local volume). */
export function* walkExtentsSync(
  status: (offset: number, length: number) => Extent[],
  end: number,
  opts: Omit<WalkOptions, 'end' | 'signal'> = {},
): Generator<Extent> {
  const window = opts.window ?? GiB;
  for (let at = opts.from ?? 0; at < end;)
    for (const e of checked(status(at, Math.min(window, end - at)), at, end)) {
      yield e;
      at = e.offset + e.length;
    }
}

/** One answer's extents from `at`, clipped at `end`; a protocol error unless contiguous and non-empty. */
function* checked(list: Extent[], at: number, end: number): Generator<Extent> {
  if (!list.length) throw new HavenError('PROTOCOL', `block status at offset ${at} returned no extent`);
  for (const e of list) {
    if (e.offset !== at || e.length <= 0)
      throw new HavenError(
        'PROTOCOL',
        `block status at offset ${at} returned an extent at ${e.offset}+${e.length}: not contiguous`,
      );
    const len = Math.min(e.length, end - at);
    yield { offset: at, length: len, flags: e.flags };
    at += len;
    if (at >= end) return;
  }
}

/** The block status of a device (base:allocation), as a walk. */
export function deviceExtents(device: BlockDevice, opts: WalkOptions = {}): AsyncGenerator<Extent> {
  return walkExtents((o, l) => device.blockStatus(o, l), opts.end ?? device.size, opts);
}

export interface ByteRange {
  offset: number;
  length: number;
}

/**
 * The ranges of a walk whose extents match `keep`, adjacent ones merged: e.g. what may hold data
 * (`allocatedRanges`) or what a dirty bitmap marks (`(f) => (f & 1) !== 0`).
 */
export async function collectRanges(
  extents: AsyncIterable<Extent>,
  keep: (flags: number) => boolean,
): Promise<ByteRange[]> {
  const out: ByteRange[] = [];
  for await (const e of extents) if (keep(e.flags)) merge(out, e);
  return out;
}

/** collectRanges over a synchronous walk. */
export function collectRangesSync(extents: Iterable<Extent>, keep: (flags: number) => boolean): ByteRange[] {
  const out: ByteRange[] = [];
  for (const e of extents) if (keep(e.flags)) merge(out, e);
  return out;
}

function merge(out: ByteRange[], e: Extent): void {
  const last = out[out.length - 1];
  if (last && last.offset + last.length === e.offset) last.length += e.length;
  else out.push({ offset: e.offset, length: e.length });
}

/** The ranges of a device that may hold data (not known to read as zeroes), merged. */
export function allocatedRanges(device: BlockDevice, opts: WalkOptions = {}): Promise<ByteRange[]> {
  return collectRanges(deviceExtents(device, opts), (f) => (f & EXTENT_ZERO) === 0);
}
