import type { FastifyInstance } from 'fastify';
import type { Site } from '../orchestration/index.js';
import * as s from './schemas.js';

type Name = { name: string };
type Id = { id: string };
const tags = ['dr'];
const idParam = { type: 'object', required: ['id'], properties: { id: { type: 'string' } } } as const;

const planBody = {
  type: 'object',
  additionalProperties: false,
  required: ['name', 'steps'],
  properties: {
    name: s.name,
    steps: {
      type: 'array',
      minItems: 1,
      items: { type: 'object' },
      description: 'the steps, in order (docs/dr.md)',
    },
  },
} as const;

/** DR plans and their runs. */
export function registerPlanRoutes(api: FastifyInstance, site: Site): void {
  const p = site.plans;
  api.get('/plans', { schema: { tags } }, async () => p.list());
  api.get('/plans/:name', { schema: { tags, params: s.nameParam } }, async (req) =>
    p.show((req.params as Name).name),
  );
  api.post(
    '/plans',
    { schema: { tags, summary: 'define a plan (its steps are checked now)', body: planBody } },
    async (req, reply) => {
      const b = req.body as { name: string; steps: unknown[] };
      return reply.code(201).send(p.create(req.actor, b.name, b.steps));
    },
  );
  api.delete('/plans/:name', { schema: { tags, params: s.nameParam } }, async (req, reply) => {
    p.delete(req.actor, (req.params as Name).name);
    return reply.code(204).send();
  });
  api.post(
    '/plans/:name/run',
    { schema: { tags, summary: 'run a plan (a job)', params: s.nameParam, response: { 202: s.jobAnswer } } },
    async (req, reply) => reply.code(202).send(p.run(req.actor, (req.params as Name).name)),
  );
  api.get('/plan-runs', { schema: { tags } }, async (req) =>
    p.runs((req.query as { plan?: string } | undefined)?.plan),
  );
  api.post(
    '/plan-runs/:id/retry',
    {
      schema: {
        tags,
        summary: 'go on with a failed run from the step that failed (a job)',
        params: idParam,
        response: { 202: s.jobAnswer },
      },
    },
    async (req, reply) => reply.code(202).send(p.retry(req.actor, (req.params as Id).id)),
  );
  api.post('/plan-runs/:id/abort', { schema: { tags, params: idParam } }, async (req) =>
    p.abort(req.actor, (req.params as Id).id),
  );
}
