import { createHash, timingSafeEqual } from 'node:crypto';
import {
  HavenError,
  invalidArgument,
  notFound,
  permissionDenied,
  unauthenticated,
} from '../../common/index.js';
import type { Db } from '../site/database.js';
import type { EventLog } from '../site/events.js';
import { checkPassword, decoyHash, hashPassword, verifyPassword, type ScryptParams } from './password.js';
import { roleSatisfies, type Requirement, type Role } from './roles.js';
import { SessionStore, type Session, type SessionOptions } from './sessions.js';
import { LoginThrottle, type ThrottleOptions } from './throttle.js';
import { UserTokens, type UserToken } from './tokens.js';
import { SITE_TOKEN_USER, UserStore, checkRole, checkUserName, type User } from './users.js';

/** Who is asking, once their credentials held. */
export interface Principal {
  user: string;
  role: Role;
  via: 'site-token' | 'user-token' | 'session';
  /** With `via: 'session'`: the session (its CSRF token). */
  session?: Session;
}

export interface AccessOptions {
  sessions?: SessionOptions;
  throttle?: ThrottleOptions;
  /** The password hash's cost (tests may lower it). */
  scrypt?: ScryptParams;
}

/** What a client is told of a failed sign-in: never which of the name and the password was wrong. */
const BAD_SIGN_IN = 'the user name or the password is not right';

const sha256 = (s: string) => createHash('sha256').update(s).digest();

/**
 * Users, roles and credentials of a site (docs/users.md): who a bearer token or a session cookie
 * is, whether they may do what a route asks, signing in and out, and user and token management,
 * each change in the audit log. The site token stays what it was: an admin credential, named
 * "admin" in the audit log. Secrets (passwords, tokens, cookies) never reach the log or events.
 */
export class SiteAccess {
  private readonly users: UserStore;
  private readonly sessions: SessionStore;
  private readonly tokens: UserTokens;
  private readonly throttle: LoginThrottle;
  private readonly siteTokenHash: Buffer;

  constructor(
    db: Db,
    private readonly events: EventLog,
    siteToken: string,
    private readonly opts: AccessOptions = {},
  ) {
    this.siteTokenHash = sha256(siteToken);
    this.users = new UserStore(db);
    this.sessions = new SessionStore(db, opts.sessions);
    this.tokens = new UserTokens(db);
    this.throttle = new LoginThrottle(opts.throttle);
  }

  // --- who is asking

  /** The holder of a bearer token: the site token (admin), a user's token, or undefined. */
  bearer(token: string): Principal | undefined {
    if (timingSafeEqual(sha256(token), this.siteTokenHash))
      return { user: SITE_TOKEN_USER, role: 'admin', via: 'site-token' };
    const h = this.tokens.holder(token);
    return h ? { user: h.user, role: h.role, via: 'user-token' } : undefined;
  }

  /** The holder of a live console session, by its cookie's value, or undefined. */
  session(cookie: string): Principal | undefined {
    const s = this.sessions.find(cookie);
    return s ? { user: s.user, role: s.role, via: 'session', session: s } : undefined;
  }

  /** A request authenticated by a session carries that session's CSRF token. */
  csrfHolds(p: Principal, header: string | undefined): boolean {
    if (p.via !== 'session') return true;
    if (header === undefined) return false;
    return timingSafeEqual(sha256(header), sha256(p.session!.csrfToken));
  }

  /**
   * Why `p` may not do what asks `need`, or undefined when it may. `target`: the user a `self`
   * route names.
   */
  refusal(p: Principal, need: Requirement, target?: string): string | undefined {
    if (need === 'public') return undefined;
    if (need === 'self') {
      if (p.role === 'admin' || target === p.user) return undefined;
      return `only an admin or user ${target ?? '(none)'} may do this; ${describe(p)}`;
    }
    return roleSatisfies(p.role, need) ? undefined : `this needs the ${need} role; ${describe(p)}`;
  }

  // --- signing in and out

  /**
   * Signs `name` in with `password`: a new session and the cookie value that opens it. Refused
   * with UNAUTHENTICATED, saying not which was wrong; failures for a name slow its next tries.
   */
  async signIn(
    name: string,
    password: string,
    from: string,
  ): Promise<{ cookie: string; principal: Principal }> {
    const seen: { found?: { user: User; hash: string } } = {};
    const ok = await this.throttle.attempt(name, async () => {
      // Read in its turn: a change made while it waited counts.
      seen.found = /^[a-z0-9][a-z0-9._-]{0,63}$/.test(name) ? this.users.find(name) : undefined;
      // An unknown name costs what a wrong password does: the time tells nothing either.
      return verifyPassword(password, seen.found?.hash ?? (await decoyHash()));
    });
    const found = seen.found;
    if (!found || !ok) {
      this.events.append({
        actor: `${name.slice(0, 64)}@${from}`,
        action: 'user.sign-in',
        target: name.slice(0, 64),
        outcome: 'failed',
        message: `sign-in as ${name.slice(0, 64)} refused: ${BAD_SIGN_IN}`,
      });
      throw unauthenticated(BAD_SIGN_IN);
    }
    const { cookie, session } = this.sessions.open(found.user.name, found.user.role);
    this.audit(`${name}@${from}`, 'user.sign-in', name, `${name} signed in (${found.user.role})`);
    return { cookie, principal: { user: name, role: found.user.role, via: 'session', session } };
  }

  signOut(p: Principal, actor: string): void {
    if (p.via !== 'session') return;
    this.sessions.close(p.session!.id);
    this.audit(actor, 'user.sign-out', p.user, `${p.user} signed out`);
  }

  // --- users

  listUsers(): User[] {
    return this.users.list();
  }

  getUser(name: string): User {
    return this.users.get(name);
  }

  async addUser(actor: string, req: { name: string; role: string; password: string }): Promise<User> {
    return this.audited(actor, 'user.create', req.name, async () => {
      checkUserName(req.name);
      const role = checkRole(req.role);
      checkPassword(req.password);
      const u = this.users.add(req.name, role, await this.hash(req.password));
      return { result: u, message: `user ${u.name} created (${u.role})` };
    });
  }

  /**
   * A new password for `name`: an admin sets anyone's; a user changing their own gives the
   * current one. Every other session of the user ends; their API tokens stay.
   */
  async setPassword(
    by: Principal,
    actor: string,
    name: string,
    password: string,
    currentPassword?: string,
  ): Promise<User> {
    return this.audited(actor, 'user.password', name, async () => {
      const found = this.users.find(name);
      if (!found) throw notFound(`no user ${name}`);
      if (by.role !== 'admin') {
        if (currentPassword === undefined)
          throw invalidArgument('give your current password (currentPassword) to change it');
        if (!(await this.throttle.attempt(name, () => verifyPassword(currentPassword, found.hash))))
          throw permissionDenied('the current password is not right');
      }
      checkPassword(password);
      const u = this.users.setHash(name, await this.hash(password));
      this.sessions.closeAllOf(name, by.user === name ? by.session?.id : undefined);
      return { result: u, message: `password of user ${name} changed; its other sessions ended` };
    });
  }

  setRole(actor: string, name: string, role: string): Promise<User> {
    return this.audited(actor, 'user.role', name, () => {
      const u = this.users.setRole(name, checkRole(role));
      return Promise.resolve({ result: u, message: `user ${name} is now ${u.role}` });
    });
  }

  deleteUser(actor: string, name: string): Promise<void> {
    return this.audited(actor, 'user.delete', name, () => {
      this.users.delete(name);
      return Promise.resolve({
        result: undefined,
        message: `user ${name} deleted, with its sessions and tokens`,
      });
    });
  }

  // --- API tokens

  createToken(actor: string, user: string): Promise<UserToken & { token: string }> {
    return this.audited(actor, 'user.token.create', user, () => {
      this.users.get(user); // NOT_FOUND names it
      const t = this.tokens.create(user);
      return Promise.resolve({ result: t, message: `API token ${t.id} of user ${user} created` });
    });
  }

  listTokens(user: string): UserToken[] {
    this.users.get(user);
    return this.tokens.list(user);
  }

  deleteToken(actor: string, user: string, id: string): Promise<void> {
    return this.audited(actor, 'user.token.delete', user, () => {
      this.users.get(user);
      this.tokens.delete(user, id);
      return Promise.resolve({ result: undefined, message: `API token ${id} of user ${user} revoked` });
    });
  }

  // ---

  private hash(password: string): Promise<string> {
    return hashPassword(password, this.opts.scrypt);
  }

  private audit(actor: string, action: string, target: string, message: string): void {
    this.events.append({ actor, action, target, outcome: 'ok', message });
  }

  private async audited<T>(
    actor: string,
    action: string,
    target: string,
    fn: () => Promise<{ result: T; message: string }>,
  ): Promise<T> {
    try {
      const { result, message } = await fn();
      this.audit(actor, action, target, message);
      return result;
    } catch (err) {
      if (err instanceof HavenError && err.code !== 'INTERNAL')
        this.events.append({
          actor,
          action,
          target,
          outcome: 'failed',
          message: `${action} ${target}: ${err.message}`,
        });
      throw err;
    }
  }
}

function describe(p: Principal): string {
  return p.via === 'site-token' ? 'the site token is admin' : `user ${p.user} is ${p.role}`;
}
