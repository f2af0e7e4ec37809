/**
 * What time it is, and a timer at a time: the wall clock by default; a manual clock that tests
 * (and the scheduler benchmark) move by hand, so that a month of schedules runs in seconds.
 * Whatever is dated by the scheduler (the runs, the backups they make) follows this clock.
 */
export interface Clock {
  /** Milliseconds since the epoch. */
  now(): number;
  /** Calls `fn` once the clock reaches `atMs` (at once if it has); the returned function cancels it. */
  at(atMs: number, fn: () => void): () => void;
  /** Whether tests move it (`ManualClock`). */
  readonly manual: boolean;
}

/** setTimeout's longest delay; a later time is reached in steps. */
const MAX_DELAY_MS = 2 ** 31 - 1;

/** The wall clock: one Node timer per `at` (unref'd: a timer never keeps the process alive). */
export const wallClock: Clock = {
  manual: false,
  now: () => Date.now(),
  at(atMs, fn) {
    let timer: NodeJS.Timeout | undefined;
    const arm = () => {
      const delay = atMs - Date.now();
      if (delay <= 0) {
        timer = undefined;
        fn();
        return;
      }
      timer = setTimeout(arm, Math.min(delay, MAX_DELAY_MS));
      timer.unref();
    };
    // Never synchronously: a caller arming a timer is not re-entered.
    timer = setTimeout(arm, Math.max(0, Math.min(atMs - Date.now(), MAX_DELAY_MS)));
    timer.unref();
    return () => {
      if (timer) clearTimeout(timer);
      timer = undefined;
    };
  },
};

/**
 * A clock that stands still until `advance` or `set` moves it; the timers it passes fire in
 * time order, each with the clock at its own time, before `advance` returns.
 */
export class ManualClock implements Clock {
  readonly manual = true;
  private t: number;
  private timers: { atMs: number; seq: number; fn: () => void }[] = [];
  private seq = 0;

  constructor(startMs: number) {
    this.t = startMs;
  }

  now(): number {
    return this.t;
  }

  at(atMs: number, fn: () => void): () => void {
    const timer = { atMs, seq: this.seq++, fn };
    this.timers.push(timer);
    // A timer already due fires on the next turn, as the wall clock's would.
    if (atMs <= this.t) queueMicrotask(() => this.fire(this.t));
    return () => {
      this.timers = this.timers.filter((x) => x !== timer);
    };
  }

  /** Moves the clock forward by `ms` (never back), firing the timers it passes. */
  advance(ms: number): number {
    if (!(ms >= 0)) throw new RangeError(`a clock only moves forward, not by ${ms} ms`);
    return this.set(this.t + ms);
  }

  /** Moves the clock to `ms` (at least its time now), firing the timers it passes. */
  set(ms: number): number {
    if (ms < this.t)
      throw new RangeError(`a clock only moves forward: ${new Date(ms).toISOString()} is before now`);
    this.fire(ms);
    this.t = ms;
    return this.t;
  }

  private fire(until: number): void {
    for (;;) {
      let next: (typeof this.timers)[number] | undefined;
      for (const x of this.timers)
        if (x.atMs <= until && (!next || x.atMs < next.atMs || (x.atMs === next.atMs && x.seq < next.seq)))
          next = x;
      if (!next) return;
      this.timers = this.timers.filter((x) => x !== next);
      this.t = Math.max(this.t, next.atMs);
      next.fn();
    }
  }
}
