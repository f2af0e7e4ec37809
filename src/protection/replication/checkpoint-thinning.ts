/** A checkpoint as thinning sees it. */
export interface DatedCheckpoint {
  seq: number;
  /** Milliseconds since the epoch. */
  time: number;
  name?: string;
  /** The same image holds through a later checkpoint (nothing written between): its time. */
  through?: { time: number };
}

export interface ThinningOptions {
  /** Everything older than this is dropped (but the newest). */
  keepMs: number;
  /** Every checkpoint younger than this is kept (default 10 min). */
  denseMs?: number;
}

const MINUTE = 60_000;
const HOUR = 60 * MINUTE;

/** Past the dense stretch: one checkpoint per bucket of this size, by age. */
function bucketMs(ageMs: number): number {
  if (ageMs <= HOUR) return MINUTE;
  if (ageMs <= 24 * HOUR) return 10 * MINUTE;
  return HOUR;
}

/**
 * The checkpoints to delete so that a history of days stays a few hundred snapshots per volume
 * (a checkpoint every second for a week would be 600,000): all of the last `denseMs`, then the
 * newest of each minute for the first hour, of each 10 minutes for the first day, of each hour
 * after; named checkpoints are kept for the whole window; nothing past `keepMs` but the newest.
 * Buckets are by absolute time, so the one kept in a bucket never changes as time goes on: a
 * checkpoint once thinned out was never the only one of its bucket.
 */
export function thinCheckpoints<T extends DatedCheckpoint>(list: readonly T[], opts: ThinningOptions): T[] {
  const newest = list.at(-1);
  if (!newest) return [];
  const now = newest.through?.time ?? newest.time;
  const dense = opts.denseMs ?? 10 * MINUTE;
  const kept = new Set<T>([newest]);
  const bucketsSeen = new Set<string>();
  for (let i = list.length - 1; i >= 0; i--) {
    const c = list[i]!;
    const age = now - c.time;
    if (age > opts.keepMs) continue;
    if (age <= dense || c.name) {
      kept.add(c);
      continue;
    }
    const size = bucketMs(age);
    const bucket = `${size}:${Math.floor(c.time / size)}`;
    if (bucketsSeen.has(bucket)) continue;
    bucketsSeen.add(bucket); // newest first: the first seen of a bucket is its newest
    kept.add(c);
  }
  return list.filter((c) => !kept.has(c));
}
