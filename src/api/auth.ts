import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { requirementOf, type Principal, type Requirement, type Site } from '../orchestration/index.js';
import { API_PREFIX } from './client.js';
import { METRICS_PATH } from './routes-metrics.js';
import { ACCEPT_PEER_PATH } from './routes-peers.js';

/** The console session's cookie, and the header its unsafe requests carry the CSRF token in. */
export const SESSION_COOKIE = 'haven_session';
export const CSRF_HEADER = 'x-csrf-token';

/** The OpenAPI document's name, on every operation, for what the route asks of its caller. */
export const ROLE_EXTENSION = 'x-haven-role';

declare module 'fastify' {
  interface FastifyRequest {
    /** Who is asking, for jobs and the audit log: USER@ADDRESS ("admin@…" for the site token). */
    actor: string;
    /** Their credentials' holder (undefined only on a public route asked without any). */
    caller: Principal | undefined;
  }
}

const SAFE_METHODS = new Set(['GET', 'HEAD', 'OPTIONS']);
const NO_TOKEN =
  'an API token is required (Authorization: Bearer <token>), or a console session (POST /api/v1/session)';

/**
 * Authentication and roles of every request to the API (/api/…) and /metrics; other paths (the
 * console's static files) are left alone. A caller is the holder of a bearer token (the site
 * token: admin; or a user's token) or of a console session cookie; a request the cookie
 * authenticates with a method other than GET, HEAD or OPTIONS carries the session's CSRF token
 * in X-CSRF-Token. What each route asks is decided in one place, the orchestration layer's role
 * table (`requirementOf`), and written into the OpenAPI document as `x-haven-role`.
 */
export function installAuth(app: FastifyInstance, site: Site): void {
  app.decorateRequest('actor', '');
  app.decorateRequest('caller', undefined);
  app.decorateRequest('pairingToken', '');

  app.addHook('onRoute', (route) => {
    const path = tablePath(route.url);
    if (path === undefined) return;
    const method = Array.isArray(route.method) ? route.method[0]! : route.method;
    const schema = (route.schema ??= {}) as Record<string, unknown>;
    schema[ROLE_EXTENSION] = requirementOf(method, path);
  });

  app.addHook('onRequest', async (req, reply) => {
    const url = req.url.split('?')[0]!;
    if (!(url === '/api' || url.startsWith('/api/') || url === METRICS_PATH)) return;
    const path = req.routeOptions.url !== undefined ? tablePath(req.routeOptions.url) : undefined;
    // An unknown path: its 404, to whoever may read.
    const need: Requirement = path !== undefined ? requirementOf(req.method, path) : 'viewer';
    const who = identify(req, site);
    if (need === 'public') {
      req.caller = who.principal;
      req.actor = `${who.principal?.user ?? 'anonymous'}@${req.ip}`;
      return;
    }
    if (!who.principal) {
      // The one exception: a site pairing with this one may show a one-time pairing token
      // instead, on this one route; the handler spends it.
      if (who.bearer !== undefined && req.method === 'POST' && path === ACCEPT_PEER_PATH) {
        const problem = site.peers.pairingTokenProblem(who.bearer);
        if (problem === undefined) {
          req.actor = `pairing-token@${req.ip}`;
          req.pairingToken = who.bearer;
          return;
        }
        return refuse(reply, 401, 'UNAUTHENTICATED', problem);
      }
      return refuse(reply, 401, 'UNAUTHENTICATED', who.problem ?? NO_TOKEN);
    }
    const p = who.principal;
    if (!SAFE_METHODS.has(req.method) && !site.access.csrfHolds(p, header(req, CSRF_HEADER)))
      return refuse(
        reply,
        403,
        'PERMISSION_DENIED',
        `${req.method} ${url}: a console session's request must carry its CSRF token in the X-CSRF-Token header (GET /api/v1/session gives it)`,
      );
    const refusal = site.access.refusal(p, need, (req.params as { name?: string } | undefined)?.name);
    if (refusal !== undefined)
      return refuse(reply, 403, 'PERMISSION_DENIED', `${req.method} ${url}: ${refusal}`);
    req.caller = p;
    req.actor = `${p.user}@${req.ip}`;
  });
}

/** The value of a console session cookie in the request, if any. */
export function sessionCookie(req: FastifyRequest): string | undefined {
  for (const part of (req.headers.cookie ?? '').split(';')) {
    const eq = part.indexOf('=');
    if (eq > 0 && part.slice(0, eq).trim() === SESSION_COOKIE) return part.slice(eq + 1).trim() || undefined;
  }
  return undefined;
}

/** The Set-Cookie value of a session (a value), or of its end (none). */
export function sessionCookieHeader(value: string | undefined, secure: boolean): string {
  return [
    `${SESSION_COOKIE}=${value ?? ''}`,
    'HttpOnly',
    'SameSite=Strict',
    'Path=/',
    ...(secure ? ['Secure'] : []),
    ...(value === undefined ? ['Max-Age=0'] : []),
  ].join('; ');
}

interface Identity {
  principal?: Principal;
  /** The bearer token given, when it is nobody's (a pairing token, perhaps). */
  bearer?: string;
  /** Why the credentials given hold not. */
  problem?: string;
}

/** Who the request's credentials name: the Authorization header first, else the session cookie. */
function identify(req: FastifyRequest, site: Site): Identity {
  const authorization = req.headers.authorization;
  if (authorization !== undefined) {
    const m = /^Bearer\s+(\S+)$/i.exec(authorization);
    if (!m) return { problem: NO_TOKEN };
    const principal = site.access.bearer(m[1]!);
    return principal ? { principal } : { bearer: m[1]!, problem: 'the API token is not valid' };
  }
  const cookie = sessionCookie(req);
  if (cookie === undefined) return {};
  const principal = site.access.session(cookie);
  return principal
    ? { principal }
    : { problem: 'the console session has ended (signed out, or idle too long): sign in again' };
}

/** A route's path as the role table names it: below the API prefix, or /metrics; else undefined. */
function tablePath(url: string): string | undefined {
  if (url === METRICS_PATH) return url;
  return url.startsWith(API_PREFIX + '/') ? url.slice(API_PREFIX.length) : undefined;
}

function header(req: FastifyRequest, name: string): string | undefined {
  const v = req.headers[name];
  return Array.isArray(v) ? v[0] : v;
}

function refuse(reply: FastifyReply, status: 401 | 403, code: string, message: string): FastifyReply {
  if (status === 401) void reply.header('www-authenticate', 'Bearer realm="haven"');
  void reply.code(status).send({ error: { code, message } });
  return reply;
}
