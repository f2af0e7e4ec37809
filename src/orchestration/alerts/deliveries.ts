import type { Database } from 'better-sqlite3';
import { errorMessage, logger } from '../../common/index.js';
import type { Channel, Channels } from './channels.js';
import type { Notification } from './senders.js';

const log = logger('alerts');

export interface DeliveryOptions {
  /** The first retry waits this long; each next one twice as long (default 1 s) … */
  retryBaseMs?: number;
  /** … up to this (default 5 min). */
  retryMaxMs?: number;
  /** Attempts before a delivery is given up (default 10: about 17 min with the defaults). */
  maxAttempts?: number;
  /** Deliveries waiting at most; beyond, the oldest is dropped (default 1000). */
  maxPending?: number;
}

export type Send = (c: Channel, n: Notification, delivery: number) => Promise<void>;
/** A delivery given up or dropped: the engine puts it in the event log. */
export type Lost = (c: Channel, n: Notification, why: string) => void;

interface DeliveryRow {
  id: number;
  channel: number;
  payload: string;
  attempts: number;
  next_at: number;
}

/** At most this many deliveries in flight at once. */
const PARALLEL = 4;

/**
 * The queue of notifications to send: one row per channel and notification in the site database
 * (a restart sends what was pending), retried with exponential backoff, bounded. One timer,
 * armed for the earliest due delivery; nothing polls.
 */
export class Deliveries {
  private timer: NodeJS.Timeout | undefined;
  private readonly inFlight = new Map<number, Promise<void>>();
  private closed = false;
  private readonly o: Required<DeliveryOptions>;

  constructor(
    private readonly db: Database,
    private readonly channels: Channels,
    private readonly send: Send,
    private readonly lost: Lost,
    opts: DeliveryOptions = {},
  ) {
    this.o = {
      retryBaseMs: opts.retryBaseMs ?? 1000,
      retryMaxMs: opts.retryMaxMs ?? 300_000,
      maxAttempts: opts.maxAttempts ?? 10,
      maxPending: opts.maxPending ?? 1000,
    };
  }

  /** Queues `n` for every channel (or the given ones) and sends at once. */
  enqueue(n: Notification, to: Channel[] = this.channels.list()): void {
    if (this.closed) return;
    const insert = this.db.prepare(
      'INSERT INTO alert_deliveries (channel, payload, next_at, created_at) VALUES (?, ?, ?, ?)',
    );
    for (const c of to) {
      this.bound(c);
      insert.run(c.id, JSON.stringify(n), Date.now(), new Date().toISOString());
    }
    this.arm(0);
  }

  /** Sends what a previous daemon left pending. */
  start(): void {
    this.arm(0);
  }

  pending(): number {
    return (this.db.prepare('SELECT count(*) AS n FROM alert_deliveries').get() as { n: number }).n;
  }

  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.timer);
    await Promise.allSettled([...this.inFlight.values()]);
  }

  private bound(c: Channel): void {
    const over = this.pending() - this.o.maxPending + 1;
    if (over <= 0) return;
    const oldest = this.db
      .prepare('SELECT * FROM alert_deliveries ORDER BY id LIMIT ?')
      .all(over) as DeliveryRow[];
    for (const r of oldest) {
      this.db.prepare('DELETE FROM alert_deliveries WHERE id = ?').run(r.id);
      this.lost(
        this.channelOr(r.channel, c),
        JSON.parse(r.payload) as Notification,
        `dropped: more than ${this.o.maxPending} deliveries waiting`,
      );
    }
  }

  private channelOr(id: number, fallback: Channel): Channel {
    try {
      return this.channels.get(id);
    } catch {
      return fallback;
    }
  }

  /** Arms the one timer for the earliest due delivery (or `inMs`). */
  private arm(inMs?: number): void {
    if (this.closed) return;
    clearTimeout(this.timer);
    let wait = inMs;
    if (wait === undefined) {
      const busy = [...this.inFlight.keys()];
      const next = this.db
        .prepare(
          `SELECT min(next_at) AS t FROM alert_deliveries${busy.length ? ` WHERE id NOT IN (${busy.join(',')})` : ''}`,
        )
        .get() as { t: number | null };
      if (next.t === null) return;
      wait = Math.max(0, next.t - Date.now());
    }
    this.timer = setTimeout(() => this.run(), Math.min(wait, 2 ** 31 - 1)).unref();
  }

  private run(): void {
    if (this.closed) return;
    const room = PARALLEL - this.inFlight.size;
    if (room > 0) {
      const busy = [...this.inFlight.keys()];
      const due = this.db
        .prepare(
          `SELECT * FROM alert_deliveries WHERE next_at <= ?${busy.length ? ` AND id NOT IN (${busy.join(',')})` : ''} ORDER BY next_at, id LIMIT ${room}`,
        )
        .all(Date.now()) as DeliveryRow[];
      for (const r of due) {
        const p = this.attempt(r).finally(() => {
          this.inFlight.delete(r.id);
          this.arm();
        });
        this.inFlight.set(r.id, p);
      }
    }
    this.arm();
  }

  private async attempt(r: DeliveryRow): Promise<void> {
    const n = JSON.parse(r.payload) as Notification;
    let c: Channel;
    try {
      c = this.channels.get(r.channel);
    } catch {
      this.db.prepare('DELETE FROM alert_deliveries WHERE id = ?').run(r.id); // channel removed
      return;
    }
    try {
      await this.send(c, n, r.id);
      this.db.prepare('DELETE FROM alert_deliveries WHERE id = ?').run(r.id);
      log.debug(
        { delivery: r.id, channel: c.id, type: n.type, attempts: r.attempts + 1 },
        'notification sent',
      );
    } catch (err) {
      if (this.closed) return; // the next daemon tries again
      const attempts = r.attempts + 1;
      const why = errorMessage(err);
      if (attempts >= this.o.maxAttempts) {
        this.db.prepare('DELETE FROM alert_deliveries WHERE id = ?').run(r.id);
        this.lost(c, n, `given up after ${attempts} attempts: ${why}`);
        return;
      }
      const delay = Math.min(this.o.retryBaseMs * 2 ** (attempts - 1), this.o.retryMaxMs);
      this.db
        .prepare('UPDATE alert_deliveries SET attempts = ?, next_at = ?, last_error = ? WHERE id = ?')
        .run(attempts, Date.now() + delay, why, r.id);
      log.warn(
        { delivery: r.id, channel: c.id, attempts, retryInMs: delay, err: why },
        'notification failed; retrying',
      );
    }
  }
}
