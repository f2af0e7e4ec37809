import type { Database } from 'better-sqlite3';
import type { RuleName, Severity } from './rules.js';

type Db = Database;

/** An alert as the API shows it: one per rule and object while open, with how often it was seen. */
export interface Alert {
  id: number;
  rule: RuleName;
  object: string;
  state: 'open' | 'resolved';
  severity: Severity;
  message: string;
  details?: Record<string, unknown>;
  /** How many times it was seen while open (each failed event; a state check counts once). */
  count: number;
  firstSeen: string;
  lastSeen: string;
  resolvedAt?: string;
  /** Whether its firing was sent to the notification channels (not when silenced). */
  notified: boolean;
  /** The silence that holds its notifications back now, if any. */
  silencedBy?: number;
}

interface AlertRow {
  id: number;
  rule: string;
  object: string;
  state: 'open' | 'resolved';
  severity: Severity;
  message: string;
  details: string | null;
  count: number;
  first_seen: string;
  last_seen: string;
  resolved_at: string | null;
  notified: number;
}

const toAlert = (r: AlertRow): Alert => ({
  id: r.id,
  rule: r.rule as RuleName,
  object: r.object,
  state: r.state,
  severity: r.severity,
  message: r.message,
  ...(r.details ? { details: JSON.parse(r.details) as Record<string, unknown> } : {}),
  count: r.count,
  firstSeen: r.first_seen,
  lastSeen: r.last_seen,
  ...(r.resolved_at ? { resolvedAt: r.resolved_at } : {}),
  notified: r.notified === 1,
});

/** The alerts table: the one open alert of a rule and object, and the resolved ones before it. */
export class AlertStore {
  constructor(private readonly db: Db) {}

  open(rule: string, object: string): Alert | undefined {
    const r = this.db
      .prepare("SELECT * FROM alerts WHERE rule = ? AND object = ? AND state = 'open'")
      .get(rule, object) as AlertRow | undefined;
    return r && toAlert(r);
  }

  openAll(): Alert[] {
    return (this.db.prepare("SELECT * FROM alerts WHERE state = 'open'").all() as AlertRow[]).map(toAlert);
  }

  get(id: number): Alert | undefined {
    const r = this.db.prepare('SELECT * FROM alerts WHERE id = ?').get(id) as AlertRow | undefined;
    return r && toAlert(r);
  }

  /** Open alerts per rule (for the metrics gauge: no row limit, one grouped query). */
  openByRule(): Map<string, number> {
    const rows = this.db
      .prepare("SELECT rule, count(*) AS n FROM alerts WHERE state = 'open' GROUP BY rule")
      .all() as { rule: string; n: number }[];
    return new Map(rows.map((r) => [r.rule, r.n]));
  }

  list(q: { state?: 'open' | 'resolved'; rule?: string; limit?: number }): Alert[] {
    const where: string[] = [];
    const args: string[] = [];
    for (const k of ['state', 'rule'] as const) {
      const v = q[k];
      if (v === undefined) continue;
      where.push(`${k} = ?`);
      args.push(v);
    }
    const limit = Math.min(Math.max(q.limit ?? 100, 1), 1000);
    return (
      this.db
        .prepare(
          `SELECT * FROM alerts ${where.length ? 'WHERE ' + where.join(' AND ') : ''} ORDER BY id DESC LIMIT ${limit}`,
        )
        .all(...args) as AlertRow[]
    ).map(toAlert);
  }

  insert(a: {
    rule: string;
    object: string;
    severity: Severity;
    message: string;
    details?: Record<string, unknown>;
    time: string;
  }): Alert {
    const r = this.db
      .prepare(
        "INSERT INTO alerts (rule, object, state, severity, message, details, count, first_seen, last_seen) VALUES (?, ?, 'open', ?, ?, ?, 1, ?, ?)",
      )
      .run(
        a.rule,
        a.object,
        a.severity,
        a.message,
        a.details ? JSON.stringify(a.details) : null,
        a.time,
        a.time,
      );
    return this.get(Number(r.lastInsertRowid))!;
  }

  /** Seen again while open: the newest message, and one more in the count when `counts`. */
  seen(
    id: number,
    message: string,
    details: Record<string, unknown> | undefined,
    time: string,
    counts: boolean,
  ): void {
    this.db
      .prepare(
        'UPDATE alerts SET message = ?, details = COALESCE(?, details), last_seen = ?, count = count + ? WHERE id = ?',
      )
      .run(message, details ? JSON.stringify(details) : null, time, counts ? 1 : 0, id);
  }

  /** Resolved: its message stays the one that says why it fired. */
  resolve(id: number, time: string): Alert {
    this.db
      .prepare("UPDATE alerts SET state = 'resolved', resolved_at = ?, last_seen = ? WHERE id = ?")
      .run(time, time, id);
    return this.get(id)!;
  }

  markNotified(id: number): void {
    this.db.prepare('UPDATE alerts SET notified = 1 WHERE id = ?').run(id);
  }
}
