import { conflict, invalidArgument, notFound } from '../../common/index.js';
import { now, type Db } from '../site/database.js';
import { ROLES, isRole, type Role } from './roles.js';

/** A user as the API shows it (never the password hash). */
export interface User {
  name: string;
  role: Role;
  createdAt: string;
  updatedAt: string;
}

interface UserRow {
  name: string;
  role: Role;
  password: string;
  created_at: string;
  updated_at: string;
}

const NAME = /^[a-z0-9][a-z0-9._-]{0,63}$/;

/**
 * The name the site token acts as in the audit log ("admin@ADDRESS"): no user may take it, so
 * that an entry always tells the site token from a person.
 */
export const SITE_TOKEN_USER = 'admin';

export function checkUserName(name: string): void {
  if (!NAME.test(name))
    throw invalidArgument(
      `user name "${name}" is not valid: use 1-64 lower-case letters, digits, '.', '_' or '-', starting with a letter or digit`,
    );
  if (name === SITE_TOKEN_USER)
    throw invalidArgument(
      `user name "${name}" is the site token's in the audit log: choose another (an admin user may be called anything else)`,
    );
}

export function checkRole(role: string): Role {
  if (!isRole(role)) throw invalidArgument(`unknown role "${role}": use ${ROLES.join(', ')}`);
  return role;
}

/** The users table: names, roles, password hashes (made and checked by the caller). */
export class UserStore {
  constructor(private readonly db: Db) {}

  list(): User[] {
    return (this.db.prepare('SELECT * FROM users ORDER BY name').all() as UserRow[]).map(toUser);
  }

  get(name: string): User {
    return toUser(this.row(name));
  }

  /** The row with its hash, or undefined: for signing in, where a missing user is no error. */
  find(name: string): { user: User; hash: string } | undefined {
    const r = this.db.prepare('SELECT * FROM users WHERE name = ?').get(name) as UserRow | undefined;
    return r ? { user: toUser(r), hash: r.password } : undefined;
  }

  add(name: string, role: Role, hash: string): User {
    checkUserName(name);
    const t = now();
    const r = this.db
      .prepare(
        'INSERT INTO users (name, role, password, created_at, updated_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING',
      )
      .run(name, role, hash, t, t);
    if (r.changes === 0) throw conflict(`user ${name} exists already`);
    return this.get(name);
  }

  setHash(name: string, hash: string): User {
    this.row(name);
    this.db.prepare('UPDATE users SET password = ?, updated_at = ? WHERE name = ?').run(hash, now(), name);
    return this.get(name);
  }

  setRole(name: string, role: Role): User {
    this.row(name);
    this.db.prepare('UPDATE users SET role = ?, updated_at = ? WHERE name = ?').run(role, now(), name);
    return this.get(name);
  }

  /** Deletes the user; their sessions and tokens go with them (ON DELETE CASCADE). */
  delete(name: string): void {
    if (this.db.prepare('DELETE FROM users WHERE name = ?').run(name).changes === 0) throw noUser(name);
  }

  private row(name: string): UserRow {
    const r = this.db.prepare('SELECT * FROM users WHERE name = ?').get(name) as UserRow | undefined;
    if (!r) throw noUser(name);
    return r;
  }
}

const noUser = (name: string) => notFound(`no user ${name}`);

function toUser(r: UserRow): User {
  return { name: r.name, role: r.role, createdAt: r.created_at, updatedAt: r.updated_at };
}
