import type { FastifyInstance } from 'fastify';
import { invalidArgument } from '../common/index.js';
import type { ObjectiveSpec, Site } from '../orchestration/index.js';
import { reportHtml, reportText } from '../orchestration/index.js';
import * as s from './schemas.js';

type Name = { name: string };

const seconds = (description: string) =>
  ({ type: 'number', minimum: 0.001, maximum: 366 * 86400, description }) as const;

const objectiveBody = {
  type: 'object',
  additionalProperties: false,
  required: ['name'],
  properties: {
    name: s.name,
    description: { type: 'string', maxLength: 500 },
    rpoSeconds: seconds('the replica at most this old'),
    historySeconds: seconds('checkpoints kept at least this long (the point-in-time history window)'),
    rehearsalMaxAgeSeconds: seconds('the last successful rehearsal at most this old (rehearsal cadence)'),
    rtoSeconds: seconds('the last rehearsal or takeover recovered within this'),
    backupMaxAgeSeconds: seconds("each VM's newest backup at most this old"),
    replace: { type: 'boolean', description: 'replace an objective of that name' },
  },
} as const;

const targetBody = {
  type: 'object',
  additionalProperties: false,
  properties: { group: s.name, service: s.name },
} as const;

function target(body: unknown): { kind: 'group' | 'service'; target: string } {
  const b = (body ?? {}) as { group?: string; service?: string };
  if ((b.group === undefined) === (b.service === undefined))
    throw invalidArgument('give a group or a service (one of them)');
  return b.group !== undefined ? { kind: 'group', target: b.group } : { kind: 'service', target: b.service! };
}

/** Service objectives (create, apply, compliance) and the kept reports of DR operations. */
export function registerObjectiveRoutes(api: FastifyInstance, site: Site): void {
  const tags = ['objectives'];
  api.get('/objectives', { schema: { tags } }, async () => site.objectives.list());
  api.post(
    '/objectives',
    { schema: { tags, summary: 'a named service objective', body: objectiveBody } },
    async (req, reply) => {
      const { name, replace, ...spec } = req.body as ObjectiveSpec & { name: string; replace?: boolean };
      return reply.code(201).send(site.objectives.create(req.actor, name, spec, { replace: !!replace }));
    },
  );
  api.get(
    '/objectives/compliance',
    {
      schema: {
        tags,
        summary: 'the compliance of every group and service an objective applies to, judged now',
      },
    },
    async () => site.objectives.compliance(),
  );
  api.get(
    '/objectives/:name',
    {
      schema: {
        tags,
        summary: 'an objective and the compliance of its targets, judged now',
        params: s.nameParam,
      },
    },
    async (req) => {
      const name = (req.params as Name).name;
      await site.objectives.compliance(name);
      return site.objectives.get(name);
    },
  );
  api.delete('/objectives/:name', { schema: { tags, params: s.nameParam } }, async (req, reply) => {
    site.objectives.delete(req.actor, (req.params as Name).name);
    return reply.code(204).send();
  });
  api.post(
    '/objectives/:name/apply',
    {
      schema: {
        tags,
        summary: 'apply the objective to a group or business service (here and at its peers)',
        params: s.nameParam,
        body: targetBody,
      },
    },
    async (req) => site.objectives.apply(req.actor, (req.params as Name).name, target(req.body)),
  );
  api.post(
    '/objectives/unapply',
    { schema: { tags, summary: 'no objective for a group or business service', body: targetBody } },
    async (req) => site.objectives.apply(req.actor, undefined, target(req.body)),
  );

  const reportQuery = {
    type: 'object',
    additionalProperties: false,
    properties: {
      kind: { type: 'string', enum: ['takeover', 'rehearse', 'migrate', 'evacuate'] },
      target: { type: 'string' },
      outcome: { type: 'string', enum: ['succeeded', 'failed', 'cancelled'] },
      limit: { type: 'integer', minimum: 1, maximum: 1000 },
    },
  } as const;
  api.get(
    '/dr/reports',
    {
      schema: {
        tags: ['dr'],
        summary: 'the kept reports of DR operations, newest first',
        querystring: reportQuery,
      },
    },
    async (req) => site.dr.reports.list(req.query as { kind?: string; target?: string; limit?: number }),
  );
  api.get(
    '/dr/reports/:id',
    {
      schema: {
        tags: ['dr'],
        summary: "a DR operation's report (JSON, or ?format=text or ?format=html for people)",
        params: { type: 'object', properties: { id: { type: 'string', maxLength: 100 } } },
        querystring: {
          type: 'object',
          additionalProperties: false,
          properties: { format: { type: 'string', enum: ['json', 'text', 'html'] } },
        },
      },
    },
    async (req, reply) => {
      const r = site.dr.reports.get((req.params as { id: string }).id);
      const format = (req.query as { format?: string }).format;
      if (format === 'text') return reply.type('text/plain; charset=utf-8').send(reportText(r));
      if (format === 'html')
        return reply
          .type('text/html; charset=utf-8')
          .header('content-security-policy', "default-src 'none'; style-src 'unsafe-inline'")
          .send(reportHtml(r));
      return r;
    },
  );
}
