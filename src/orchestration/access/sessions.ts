import { createHash, randomBytes } from 'node:crypto';
import type { Db } from '../site/database.js';
import type { Role } from './roles.js';

export interface SessionOptions {
  /** A session unused this long ends (default 12 h). */
  idleMs?: number;
  /** A session ends this long after sign-in however much it is used (default 7 days). */
  maxMs?: number;
  /** The clock (ms; default Date.now). */
  now?: () => number;
}

export const DEFAULT_IDLE_MS = 12 * 3600_000;
const DEFAULT_MAX_MS = 7 * 24 * 3600_000;
/** A session's last use is written at most this often (not on every request), or a tenth of its idle time. */
const TOUCH_MS = 60_000;

/** A live session: whose it is, their role now, and the CSRF token its unsafe requests must carry. */
export interface Session {
  /** The SHA-256 of the cookie value: what the database keys it by (never the value itself). */
  id: string;
  user: string;
  role: Role;
  csrfToken: string;
}

interface SessionRow {
  hash: string;
  user: string;
  role: Role;
  csrf: string;
  created_ms: number;
  seen_ms: number;
}

export const sessionId = (cookie: string): string => createHash('sha256').update(cookie).digest('hex');

/**
 * Console sessions, kept server side: the browser holds a random 256-bit value in a cookie, the
 * database its hash (so a copy of the database opens no session), the user, a CSRF token, and
 * when it began and was last used. The role is the user's current one, read at every request.
 */
export class SessionStore {
  private readonly idleMs: number;
  private readonly maxMs: number;
  private readonly now: () => number;
  private readonly touchMs: number;

  constructor(
    private readonly db: Db,
    opts: SessionOptions = {},
  ) {
    this.idleMs = opts.idleMs ?? DEFAULT_IDLE_MS;
    this.maxMs = opts.maxMs ?? DEFAULT_MAX_MS;
    this.now = opts.now ?? Date.now;
    this.touchMs = Math.min(TOUCH_MS, this.idleMs / 10);
  }

  /** A new session of `user`: the cookie value (given to the browser once) and the session. */
  open(user: string, role: Role): { cookie: string; session: Session } {
    const t = this.now();
    this.db
      .prepare('DELETE FROM sessions WHERE seen_ms < ? OR created_ms < ?')
      .run(t - this.idleMs, t - this.maxMs);
    const cookie = randomBytes(32).toString('base64url');
    const csrfToken = randomBytes(32).toString('base64url');
    const id = sessionId(cookie);
    this.db
      .prepare('INSERT INTO sessions (hash, user, csrf, created_ms, seen_ms) VALUES (?, ?, ?, ?, ?)')
      .run(id, user, csrfToken, t, t);
    return { cookie, session: { id, user, role, csrfToken } };
  }

  /** The live session the cookie value opens, or undefined (unknown, ended, or its user deleted). */
  find(cookie: string): Session | undefined {
    const id = sessionId(cookie);
    const r = this.db
      .prepare(
        'SELECT s.hash, s.user, u.role, s.csrf, s.created_ms, s.seen_ms FROM sessions s JOIN users u ON u.name = s.user WHERE s.hash = ?',
      )
      .get(id) as SessionRow | undefined;
    if (!r) return undefined;
    const t = this.now();
    if (t - r.seen_ms > this.idleMs || t - r.created_ms > this.maxMs) {
      this.close(id);
      return undefined;
    }
    if (t - r.seen_ms > this.touchMs)
      this.db.prepare('UPDATE sessions SET seen_ms = ? WHERE hash = ?').run(t, id);
    return { id, user: r.user, role: r.role, csrfToken: r.csrf };
  }

  close(id: string): void {
    this.db.prepare('DELETE FROM sessions WHERE hash = ?').run(id);
  }

  /** Ends every session of `user` but `keep` (the one changing its password). */
  closeAllOf(user: string, keep?: string): void {
    this.db.prepare('DELETE FROM sessions WHERE user = ? AND hash IS NOT ?').run(user, keep ?? null);
  }
}
