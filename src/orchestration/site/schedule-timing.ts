import { createHash } from 'node:crypto';
import { Cron } from 'croner';
import { invalidArgument } from '../../common/index.js';
import type { RetentionPolicy } from '../../repository/index.js';

/**
 * When a schedule runs, as pure functions of its timing and the time (no clock, no I/O): the
 * slots of a cron expression (croner, in its time zone) or of an interval (from the schedule's
 * anchor), each slot's jitter, and what to do with a slot that is due — run it, or skip it because
 * it was missed (the daemon was down) and the schedule says not to catch up. Whatever the number
 * of slots missed, the answer is at most one run: the next slot is always the first one after now.
 */
export interface Timing {
  cron?: string;
  everySeconds?: number;
  timezone?: string;
  jitterSeconds?: number;
}

/** What a schedule does with runs it missed while the daemon was down: run once (default), or skip. */
export type CatchUp = 'once' | 'skip';

/** A due slot this much past its time was missed (the daemon was down or stalled), not just late. */
export const MISSED_AFTER_MS = 60_000;

const RETENTION_KEYS = ['last', 'hourly', 'daily', 'weekly', 'monthly', 'yearly'] as const;

/** The croner object of a cron timing (paused: it is asked for times, it never fires itself). */
export function cronOf(t: Timing): Cron | undefined {
  return t.cron === undefined
    ? undefined
    : new Cron(t.cron, { paused: true, ...(t.timezone ? { timezone: t.timezone } : {}) });
}

/** Throws INVALID_ARGUMENT naming what is wrong with a timing (`what`: "schedule s-1", …). */
export function checkTiming(what: string, t: Timing): void {
  if ((t.cron === undefined) === (t.everySeconds === undefined))
    throw invalidArgument(
      `${what}: give exactly one of a cron expression (--cron) and an interval (--every)`,
    );
  if (t.everySeconds !== undefined && (!Number.isSafeInteger(t.everySeconds) || t.everySeconds <= 0))
    throw invalidArgument(`${what}: interval ${t.everySeconds}: must be a whole number of seconds above 0`);
  if (t.jitterSeconds !== undefined && (!Number.isSafeInteger(t.jitterSeconds) || t.jitterSeconds < 0))
    throw invalidArgument(`${what}: jitter ${t.jitterSeconds}: must be a whole number of seconds, 0 or more`);
  if (t.timezone !== undefined && t.cron === undefined)
    throw invalidArgument(`${what}: a time zone applies to a cron expression, not to an interval`);
  if (t.cron !== undefined) {
    let next: Date | null;
    try {
      next = cronOf(t)!.nextRun();
    } catch (err) {
      throw invalidArgument(
        `${what}: cron expression "${t.cron}"${t.timezone ? ` (time zone ${t.timezone})` : ''} is not valid: ${(err as Error).message}`,
      );
    }
    if (!next) throw invalidArgument(`${what}: cron expression "${t.cron}" never runs again`);
  }
}

/** Throws INVALID_ARGUMENT unless a retention names known periods and keeps at least one snapshot. */
export function checkKeep(what: string, keep: RetentionPolicy): void {
  for (const [k, v] of Object.entries(keep)) {
    if (!(RETENTION_KEYS as readonly string[]).includes(k))
      throw invalidArgument(`${what}: retention has no period "${k}": use ${RETENTION_KEYS.join(', ')}`);
    if (!Number.isSafeInteger(v) || (v as number) < 0)
      throw invalidArgument(`${what}: retention ${k} ${String(v)}: must be a whole number, 0 or more`);
  }
  if (!RETENTION_KEYS.some((k) => (keep[k] ?? 0) > 0))
    throw invalidArgument(`${what}: the retention keeps nothing: keep at least one (e.g. --keep-daily 7)`);
}

/**
 * The first slot strictly after `afterMs`: the cron expression's next time, or the interval's
 * next multiple from `anchorMs`. Undefined: a cron expression that never runs again.
 */
export function slotAfter(
  t: Timing,
  anchorMs: number,
  afterMs: number,
  cron = cronOf(t),
): number | undefined {
  if (t.everySeconds !== undefined) {
    const every = t.everySeconds * 1000;
    if (afterMs < anchorMs) return anchorMs;
    return anchorMs + (Math.floor((afterMs - anchorMs) / every) + 1) * every;
  }
  return cron!.nextRun(new Date(afterMs))?.getTime();
}

/**
 * The jitter of a slot: a delay from 0 to `jitterSeconds`, the same every time it is asked for
 * (a hash of the schedule and the slot), so a restart does not move a run.
 */
export function jitterMs(id: string, slotMs: number, jitterSeconds = 0): number {
  if (!jitterSeconds) return 0;
  const h = createHash('sha256').update(`${id}@${slotMs}`).digest().readUInt32BE(0);
  return h % (jitterSeconds * 1000 + 1);
}

export type Decision =
  | { run: true; nextSlot: number | undefined; missed: number }
  | { run: false; nextSlot: number | undefined; missed: number; reason: string };

/**
 * What to do at `nowMs` with a schedule whose slot `slotMs` is due (its jittered time has come):
 * run it — unless it is missed (due more than MISSED_AFTER_MS ago) and the schedule's catch-up is
 * "skip". Either way the next slot is the first after now: missed slots never queue up. `missed`
 * counts the slots that passed unrun (at most 1000 counted).
 */
export function decide(
  t: Timing,
  id: string,
  anchorMs: number,
  slotMs: number,
  nowMs: number,
  catchUp: CatchUp = 'once',
  cron = cronOf(t),
): Decision {
  const due = slotMs + jitterMs(id, slotMs, t.jitterSeconds);
  const nextSlot = slotAfter(t, anchorMs, nowMs, cron);
  if (nowMs - due <= MISSED_AFTER_MS) return { run: true, nextSlot, missed: 0 };
  let missed = 1;
  for (let s = slotAfter(t, anchorMs, slotMs, cron); s !== undefined && s <= nowMs && missed < 1000;) {
    missed++;
    s = slotAfter(t, anchorMs, s, cron);
  }
  if (catchUp === 'skip')
    return {
      run: false,
      nextSlot,
      missed,
      reason: `skipped: ${missed} run(s) missed while the daemon was down (catch-up: skip)`,
    };
  return { run: true, nextSlot, missed };
}
