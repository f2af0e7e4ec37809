import type { FastifyInstance } from 'fastify';
import type { Site } from '../orchestration/index.js';
import { nameParam } from './schemas.js';
import * as s from './schemas-users.js';

type Name = { name: string };

/** Users (admins manage them), a user's password, and their API tokens (theirs or an admin's to manage). */
export function registerUserRoutes(api: FastifyInstance, site: Site): void {
  const tags = ['users'];
  const access = site.access;

  api.get(
    '/users',
    { schema: { tags, response: { 200: { type: 'array', items: s.userAnswer } } } },
    async () => access.listUsers(),
  );
  api.post(
    '/users',
    { schema: { tags, body: s.addUserBody, response: { 201: s.userAnswer } } },
    async (req, reply) =>
      reply
        .code(201)
        .send(await access.addUser(req.actor, req.body as { name: string; role: string; password: string })),
  );
  api.get(
    '/users/:name',
    { schema: { tags, params: nameParam, response: { 200: s.userAnswer } } },
    async (req) => access.getUser((req.params as Name).name),
  );
  api.delete('/users/:name', { schema: { tags, params: nameParam } }, async (req, reply) => {
    await access.deleteUser(req.actor, (req.params as Name).name);
    return reply.code(204).send();
  });
  api.put(
    '/users/:name/password',
    {
      schema: {
        tags,
        summary: "a new password (an admin's, or the user's own with the current one); other sessions end",
        params: nameParam,
        body: s.passwordBody,
        response: { 200: s.userAnswer },
      },
    },
    async (req) => {
      const b = req.body as { password: string; currentPassword?: string };
      return access.setPassword(
        req.caller!,
        req.actor,
        (req.params as Name).name,
        b.password,
        b.currentPassword,
      );
    },
  );
  api.put(
    '/users/:name/role',
    { schema: { tags, params: nameParam, body: s.roleBody, response: { 200: s.userAnswer } } },
    async (req) => access.setRole(req.actor, (req.params as Name).name, (req.body as { role: string }).role),
  );

  api.get(
    '/users/:name/tokens',
    { schema: { tags, params: nameParam, response: { 200: { type: 'array', items: s.tokenAnswer } } } },
    async (req) => access.listTokens((req.params as Name).name),
  );
  api.post(
    '/users/:name/tokens',
    {
      schema: {
        tags,
        summary: 'a new API token acting as the user (shown once)',
        params: nameParam,
        response: { 201: s.newTokenAnswer },
      },
    },
    async (req, reply) =>
      reply.code(201).send(await access.createToken(req.actor, (req.params as Name).name)),
  );
  api.delete(
    '/users/:name/tokens/:id',
    { schema: { tags, params: s.userTokenParam } },
    async (req, reply) => {
      const p = req.params as Name & { id: string };
      await access.deleteToken(req.actor, p.name, p.id);
      return reply.code(204).send();
    },
  );
}
