import { EventEmitter } from 'node:events';
import { now, selectNewest, type Db } from './database.js';

/** One entry of the audit log: who did what to what, when, and how it ended. */
export interface SiteEvent {
  id: number;
  time: string;
  actor: string;
  action: string;
  target: string;
  outcome: 'ok' | 'failed' | 'info' | 'warning';
  message: string;
  details?: Record<string, unknown>;
}

export interface EventQuery {
  /** Only events with an id above this (for polling). */
  after?: number;
  action?: string;
  target?: string;
  actor?: string;
  outcome?: SiteEvent['outcome'];
  /** Newest first, at most this many (default 100, at most 1000). */
  limit?: number;
}

interface EventRow {
  id: number;
  time: string;
  actor: string;
  action: string;
  target: string;
  outcome: SiteEvent['outcome'];
  message: string;
  details: string | null;
}

/**
 * The site's append-only event and audit log. Nothing updates or deletes an entry; callers never
 * put secrets into `details`. Emits 'event' (SiteEvent) for live followers.
 */
export class EventLog extends EventEmitter {
  private readonly insert;

  constructor(private readonly db: Db) {
    super();
    this.insert = db.prepare(
      'INSERT INTO events (time, actor, action, target, outcome, message, details) VALUES (?, ?, ?, ?, ?, ?, ?)',
    );
  }

  append(e: Omit<SiteEvent, 'id' | 'time'>): SiteEvent {
    const time = now();
    const r = this.insert.run(
      time,
      e.actor,
      e.action,
      e.target,
      e.outcome,
      e.message,
      e.details ? JSON.stringify(e.details) : null,
    );
    const event: SiteEvent = { id: Number(r.lastInsertRowid), time, ...e };
    this.emit('event', event);
    return event;
  }

  query(q: EventQuery = {}): SiteEvent[] {
    const rows = selectNewest<EventRow>(
      this.db,
      'events',
      { ...q },
      ['action', 'target', 'actor', 'outcome'],
      'id DESC',
      q.after !== undefined ? { where: ['id > ?'], args: [q.after] } : undefined,
    );
    return rows.map((r) => ({
      id: r.id,
      time: r.time,
      actor: r.actor,
      action: r.action,
      target: r.target,
      outcome: r.outcome,
      message: r.message,
      ...(r.details ? { details: JSON.parse(r.details) as Record<string, unknown> } : {}),
    }));
  }
}
