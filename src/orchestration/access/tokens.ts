import { createHash, randomBytes } from 'node:crypto';
import { notFound } from '../../common/index.js';
import { now, type Db } from '../site/database.js';
import type { Role } from './roles.js';

/** A user's API token as listed (the token itself is shown once, when made). */
export interface UserToken {
  id: string;
  user: string;
  createdAt: string;
  lastUsedAt?: string;
}

interface TokenRow {
  id: string;
  user: string;
  created_at: string;
  last_used_at: string | null;
}

/** What a user token's holder is. */
export interface TokenHolder {
  tokenId: string;
  user: string;
  role: Role;
}

/** Every user token starts with this, so that a secret scanner (or a person) knows one. */
export const TOKEN_PREFIX = 'hvu_';
/** Its last use is written at most this often. */
const TOUCH_MS = 60_000;

const digest = (token: string) => createHash('sha256').update(token).digest('hex');

/**
 * Per-user API tokens for scripts: 256 random bits, stored as their SHA-256 (a high-entropy
 * secret needs no slow hash), each with an id to list and revoke it by. A token acts as its user,
 * with the user's role at the time of the request.
 */
export class UserTokens {
  constructor(private readonly db: Db) {}

  create(user: string): UserToken & { token: string } {
    const id = randomBytes(8).toString('hex');
    const token = TOKEN_PREFIX + randomBytes(32).toString('base64url');
    const t = now();
    this.db
      .prepare('INSERT INTO user_tokens (id, user, hash, created_at) VALUES (?, ?, ?, ?)')
      .run(id, user, digest(token), t);
    return { id, user, createdAt: t, token };
  }

  list(user: string): UserToken[] {
    return (
      this.db
        .prepare('SELECT * FROM user_tokens WHERE user = ? ORDER BY created_at, id')
        .all(user) as TokenRow[]
    ).map(toToken);
  }

  delete(user: string, id: string): void {
    if (this.db.prepare('DELETE FROM user_tokens WHERE user = ? AND id = ?').run(user, id).changes === 0)
      throw notFound(`user ${user} has no token ${id}`);
  }

  /** The holder of `token`, or undefined when it is no user's. */
  holder(token: string): TokenHolder | undefined {
    if (!token.startsWith(TOKEN_PREFIX)) return undefined;
    const r = this.db
      .prepare(
        'SELECT t.id, t.user, u.role, t.last_used_at FROM user_tokens t JOIN users u ON u.name = t.user WHERE t.hash = ?',
      )
      .get(digest(token)) as
      { id: string; user: string; role: Role; last_used_at: string | null } | undefined;
    if (!r) return undefined;
    if (!r.last_used_at || Date.now() - Date.parse(r.last_used_at) > TOUCH_MS)
      this.db.prepare('UPDATE user_tokens SET last_used_at = ? WHERE id = ?').run(now(), r.id);
    return { tokenId: r.id, user: r.user, role: r.role };
  }
}

function toToken(r: TokenRow): UserToken {
  return {
    id: r.id,
    user: r.user,
    createdAt: r.created_at,
    ...(r.last_used_at ? { lastUsedAt: r.last_used_at } : {}),
  };
}
