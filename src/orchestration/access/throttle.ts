import { setTimeout as sleep } from 'node:timers/promises';
import { unauthenticated } from '../../common/index.js';

export interface ThrottleOptions {
  /** The wait after the first failure; it doubles with each further one (default 250 ms). */
  baseMs?: number;
  /** The longest wait (default 2 s). */
  capMs?: number;
  /** Attempts for one name waiting their turn at once; more are refused at once (default 3). */
  maxPending?: number;
  /** Failures older than this are forgotten (default 15 min). */
  forgetMs?: number;
}

interface Entry {
  failures: number;
  lastFailureMs: number;
  /** Attempts started and not ended. */
  pending: number;
  /** Ends when the last attempt started has ended. */
  tail: Promise<void>;
}

/** How many names it remembers failures of; past that, the oldest are forgotten. */
const MAX_ENTRIES = 10_000;

/**
 * Slows down guessing a user's password: the attempts for one name take turns (parallel tries
 * gain nothing), and after a failure the next waits, twice as long with each further failure
 * (250 ms, 500 ms, … up to 2 s). Beyond three attempts waiting at once, more are refused at once
 * rather than queued: nobody hangs. Keyed by the name given, whether or not such a user exists,
 * so it says nothing about that; a success clears it.
 */
export class LoginThrottle {
  private readonly entries = new Map<string, Entry>();
  private readonly baseMs: number;
  private readonly capMs: number;
  private readonly maxPending: number;
  private readonly forgetMs: number;

  constructor(opts: ThrottleOptions = {}) {
    this.baseMs = opts.baseMs ?? 250;
    this.capMs = opts.capMs ?? 2_000;
    this.maxPending = opts.maxPending ?? 3;
    this.forgetMs = opts.forgetMs ?? 15 * 60_000;
  }

  /** Runs `check` (does the password hold?) in `name`'s turn, after the wait its failures ask. */
  async attempt(name: string, check: () => Promise<boolean>): Promise<boolean> {
    const e = this.entry(name);
    if (e.pending >= this.maxPending)
      throw unauthenticated(`too many sign-ins as ${name} at once: try again in a few seconds`);
    e.pending++;
    const before = e.tail;
    let release!: () => void;
    e.tail = new Promise((r) => (release = r));
    try {
      await before;
      const wait = e.failures === 0 ? 0 : e.lastFailureMs + this.delay(e.failures) - Date.now();
      if (wait > 0) await sleep(wait);
      const ok = await check();
      if (ok) e.failures = 0;
      else {
        e.failures++;
        e.lastFailureMs = Date.now();
      }
      return ok;
    } finally {
      e.pending--;
      release();
      if (e.pending === 0 && e.failures === 0) this.entries.delete(name);
    }
  }

  private entry(name: string): Entry {
    let e = this.entries.get(name);
    if (e && e.pending === 0 && Date.now() - e.lastFailureMs > this.forgetMs) e.failures = 0;
    if (!e) {
      e = { failures: 0, lastFailureMs: 0, pending: 0, tail: Promise.resolve() };
      this.entries.set(name, e);
      if (this.entries.size > MAX_ENTRIES)
        for (const [k, v] of this.entries)
          if (v.pending === 0) {
            this.entries.delete(k);
            break;
          }
    }
    return e;
  }

  private delay(failures: number): number {
    return Math.min(this.baseMs * 2 ** Math.min(failures - 1, 20), this.capMs);
  }
}
