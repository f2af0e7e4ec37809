import type { FastifyInstance } from 'fastify';
import { unauthenticated } from '../common/index.js';
import type { Site } from '../orchestration/index.js';
import { sessionCookieHeader } from './auth.js';
import * as s from './schemas-users.js';

/**
 * The console's session: sign in (a cookie, HttpOnly, SameSite=Strict, Secure over TLS, and the
 * CSRF token), who am I, sign out. Public routes: their handlers decide.
 */
export function registerSessionRoutes(api: FastifyInstance, site: Site, opts: { secure: boolean }): void {
  const tags = ['session'];
  api.post(
    '/session',
    {
      schema: {
        tags,
        summary: 'sign in: a console session (cookie haven_session) and its CSRF token',
        security: [],
        body: s.signInBody,
        response: { 200: s.sessionAnswer },
      },
    },
    async (req, reply) => {
      const b = req.body as { user: string; password: string };
      const { cookie, principal } = await site.access.signIn(b.user, b.password, req.ip);
      void reply.header('set-cookie', sessionCookieHeader(cookie, opts.secure));
      return { user: principal.user, role: principal.role, csrfToken: principal.session!.csrfToken };
    },
  );
  api.get(
    '/session',
    {
      schema: { tags, summary: 'who is signed in (or holds the token)', response: { 200: s.sessionAnswer } },
    },
    async (req) => {
      const p = req.caller;
      if (!p) throw unauthenticated('not signed in: sign in with POST /api/v1/session');
      return { user: p.user, role: p.role, ...(p.session ? { csrfToken: p.session.csrfToken } : {}) };
    },
  );
  api.delete('/session', { schema: { tags, summary: 'sign out' } }, async (req, reply) => {
    if (req.caller) site.access.signOut(req.caller, req.actor);
    return reply.header('set-cookie', sessionCookieHeader(undefined, opts.secure)).code(204).send();
  });
}
