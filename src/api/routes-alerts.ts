import type { FastifyInstance } from 'fastify';
import type { AddChannelRequest, Site } from '../orchestration/index.js';
import * as s from './schemas.js';

const tags = ['alerts'];
type Id = { id: string };
const idParam = {
  type: 'object',
  required: ['id'],
  properties: { id: { type: 'string', pattern: '^[0-9]{1,15}$' } },
} as const;
const absolutePath = {
  type: 'string',
  pattern: '^/',
  description: 'an absolute path the site daemon reads',
} as const;

const alertAnswer = s.open('an alert: one per rule and object while open', {
  id: { type: 'integer' },
  rule: { type: 'string' },
  object: { type: 'string' },
  state: { type: 'string', enum: ['open', 'resolved'] },
});
const silenceAnswer = s.open('a silence: matching alerts record but do not notify until it expires', {
  id: { type: 'integer' },
  expiresAt: { type: 'string' },
});
const channelAnswer = s.open('a notification channel (the paths of its secret files, never secrets)', {
  id: { type: 'integer' },
  kind: { type: 'string', enum: ['webhook', 'email'] },
});

const silenceBody = {
  type: 'object',
  additionalProperties: false,
  required: ['target', 'forSeconds'],
  properties: {
    target: { type: 'string', minLength: 1, description: "a rule name (e.g. job.failed) or an alert's id" },
    forSeconds: { type: 'number', minimum: 0.001, description: 'seconds it holds' },
    comment: { type: 'string', maxLength: 1000 },
  },
} as const;

// One shape for both kinds (the daemon checks which fields each kind needs, and says so).
const channelBody = {
  type: 'object',
  additionalProperties: false,
  required: ['kind'],
  properties: {
    kind: { type: 'string', enum: ['webhook', 'email'] },
    url: { type: 'string', description: 'webhook: the http(s) URL the signed JSON is POSTed to' },
    secretFile: {
      ...absolutePath,
      description: 'webhook: the HMAC-SHA256 secret, in a file the daemon reads',
    },
    smtp: { type: 'string', description: 'email: the SMTP server, HOST:PORT' },
    from: { type: 'string', description: 'email: the sender address' },
    to: { type: 'array', minItems: 1, items: { type: 'string' }, description: 'email: the recipients' },
    user: { type: 'string', minLength: 1, description: 'email: the SMTP user' },
    passwordFile: {
      ...absolutePath,
      description: "email: the SMTP user's password, in a file the daemon reads",
    },
    tls: { type: 'boolean', description: 'email: require TLS (implicit on port 465, else STARTTLS)' },
  },
} as const;

/** Alerts, silences and notification channels. */
export function registerAlertRoutes(api: FastifyInstance, site: Site): void {
  const a = site.alerts;
  api.get(
    '/alerts',
    {
      schema: {
        tags,
        querystring: {
          type: 'object',
          additionalProperties: false,
          properties: {
            state: { type: 'string', enum: ['open', 'resolved'] },
            rule: { type: 'string' },
            limit: { type: 'string', pattern: '^[0-9]{1,4}$' },
          },
        },
        response: { 200: s.list(alertAnswer) },
      },
    },
    async (req) => {
      const { limit, ...q } = req.query as { state?: 'open' | 'resolved'; rule?: string; limit?: string };
      return a.list({ ...q, ...(limit ? { limit: Number(limit) } : {}) });
    },
  );
  api.get(
    '/alerts/rules',
    { schema: { tags, response: { 200: s.list(s.open('an alert rule')) } } },
    async () => a.rules(),
  );
  api.get('/alerts/silences', { schema: { tags, response: { 200: s.list(silenceAnswer) } } }, async () =>
    a.silences(),
  );
  api.post(
    '/alerts/silences',
    {
      schema: {
        tags,
        summary: 'silence a rule or an alert for a while',
        body: silenceBody,
        response: { 201: silenceAnswer },
      },
    },
    async (req, reply) => {
      const b = req.body as { target: string; forSeconds: number; comment?: string };
      return reply.code(201).send(a.silence(req.actor, b.target, b.forSeconds, b.comment));
    },
  );
  api.delete(
    '/alerts/silences/:id',
    { schema: { tags, params: idParam, response: { 200: silenceAnswer } } },
    async (req) => a.unsilence(req.actor, Number((req.params as Id).id)),
  );
  api.get('/alerts/channels', { schema: { tags, response: { 200: s.list(channelAnswer) } } }, async () =>
    a.channels(),
  );
  api.post(
    '/alerts/channels',
    {
      schema: {
        tags,
        summary: 'send alerts to a webhook or by e-mail',
        body: channelBody,
        response: { 201: channelAnswer },
      },
    },
    async (req, reply) => reply.code(201).send(a.addChannel(req.actor, req.body as AddChannelRequest)),
  );
  api.delete(
    '/alerts/channels/:id',
    { schema: { tags, params: idParam, response: { 200: channelAnswer } } },
    async (req) => a.removeChannel(req.actor, Number((req.params as Id).id)),
  );
  api.post(
    '/alerts/channels/:id/test',
    { schema: { tags, summary: 'send a test notification now (once)', params: idParam } },
    async (req) => a.testChannel(req.actor, Number((req.params as Id).id)),
  );
  api.get('/alerts/:id', { schema: { tags, params: idParam, response: { 200: alertAnswer } } }, async (req) =>
    a.get(Number((req.params as Id).id)),
  );
}
