import type { Database } from 'better-sqlite3';
import { invalidArgument, notFound } from '../../common/index.js';
import { ruleInfo, RULES } from './rules.js';
import type { Alert, AlertStore } from './store.js';

/** A silence: the alerts of a rule (or one alert) still record, but notify no one until it expires. */
export interface Silence {
  id: number;
  rule?: string;
  alert?: number;
  comment?: string;
  actor: string;
  createdAt: string;
  expiresAt: string;
}

interface SilenceRow {
  id: number;
  rule: string | null;
  alert: number | null;
  comment: string | null;
  actor: string;
  created_at: string;
  expires_at: string;
}

const toSilence = (r: SilenceRow): Silence => ({
  id: r.id,
  ...(r.rule !== null ? { rule: r.rule } : {}),
  ...(r.alert !== null ? { alert: r.alert } : {}),
  ...(r.comment !== null ? { comment: r.comment } : {}),
  actor: r.actor,
  createdAt: r.created_at,
  expiresAt: r.expires_at,
});

/** At most this long (a silence meant forever is a rule to delete, not a silence). */
const MAX_SILENCE_SECONDS = 366 * 24 * 3600;

export class Silences {
  constructor(
    private readonly db: Database,
    private readonly alerts: AlertStore,
  ) {}

  /** `target`: a rule name or an alert's id (digits). */
  add(
    actor: string,
    target: string,
    forSeconds: number,
    comment: string | undefined,
    nowMs: number,
  ): Silence {
    if (!Number.isFinite(forSeconds) || forSeconds <= 0 || forSeconds > MAX_SILENCE_SECONDS)
      throw invalidArgument(
        `a silence lasts more than 0 s and at most 366 days, not ${forSeconds} s: give e.g. --for 2h`,
      );
    let rule: string | null = null;
    let alert: number | null = null;
    if (/^\d+$/.test(target)) {
      alert = Number(target);
      if (!this.alerts.get(alert)) throw notFound(`no alert ${target}: see haven alert list`);
    } else if (ruleInfo(target)) rule = target;
    else
      throw invalidArgument(
        `unknown alert rule ${target}: give an alert's id or one of ${RULES.map((r) => r.name).join(', ')}`,
      );
    const created = new Date(nowMs).toISOString();
    const expires = new Date(nowMs + forSeconds * 1000).toISOString();
    const r = this.db
      .prepare(
        'INSERT INTO alert_silences (rule, alert, comment, actor, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?)',
      )
      .run(rule, alert, comment ?? null, actor, created, expires);
    return this.get(Number(r.lastInsertRowid));
  }

  get(id: number): Silence {
    const r = this.db.prepare('SELECT * FROM alert_silences WHERE id = ?').get(id) as SilenceRow | undefined;
    if (!r) throw notFound(`no silence ${id}: see haven alert silences`);
    return toSilence(r);
  }

  /** The silences in force at `nowMs` (expired ones are kept out of the way, not listed). */
  active(nowMs: number): Silence[] {
    return (
      this.db
        .prepare('SELECT * FROM alert_silences WHERE expires_at > ? ORDER BY id')
        .all(new Date(nowMs).toISOString()) as SilenceRow[]
    ).map(toSilence);
  }

  remove(id: number): Silence {
    const s = this.get(id);
    this.db.prepare('DELETE FROM alert_silences WHERE id = ?').run(id);
    return s;
  }

  /** The silence holding `a`'s notifications back at `nowMs`, if any. */
  matching(a: Pick<Alert, 'id' | 'rule'>, nowMs: number): Silence | undefined {
    return this.active(nowMs).find((s) => s.alert === a.id || s.rule === a.rule);
  }

  /** Expired silences go after a day, so the table does not grow. */
  prune(nowMs: number): void {
    this.db
      .prepare('DELETE FROM alert_silences WHERE expires_at < ?')
      .run(new Date(nowMs - 24 * 3600 * 1000).toISOString());
  }
}
