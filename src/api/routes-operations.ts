import type { FastifyInstance } from 'fastify';
import type { Job, JobState, Site } from '../orchestration/index.js';
import * as s from './schemas.js';

const idParam = { type: 'object', required: ['id'], properties: { id: { type: 'string' } } } as const;
const limit = { type: 'string', pattern: '^[0-9]{1,4}$' } as const;

/** The site, jobs (with a live stream of a job's progress) and the event log. */
export function registerOperationRoutes(api: FastifyInstance, site: Site): void {
  api.get('/site', { schema: { tags: ['site'], response: { 200: s.siteAnswer } } }, async () => site.info());

  const tags = ['jobs'];
  api.get(
    '/jobs',
    {
      schema: {
        tags,
        querystring: {
          type: 'object',
          additionalProperties: false,
          properties: {
            state: { type: 'string', enum: ['running', 'succeeded', 'failed', 'cancelled'] },
            kind: { type: 'string' },
            target: { type: 'string' },
            limit,
          },
        },
        response: { 200: s.list(s.jobAnswer) },
      },
    },
    async (req) => {
      const { limit: max, ...q } = req.query as {
        state?: JobState;
        kind?: string;
        target?: string;
        limit?: string;
      };
      return site.jobs.list({ ...q, ...(max ? { limit: Number(max) } : {}) });
    },
  );
  api.get('/jobs/:id', { schema: { tags, params: idParam, response: { 200: s.jobAnswer } } }, async (req) =>
    site.jobs.get((req.params as { id: string }).id),
  );
  api.get('/jobs/:id/log', { schema: { tags, params: idParam } }, async (req) =>
    site.jobs.logOf((req.params as { id: string }).id),
  );
  api.post(
    '/jobs/:id/cancel',
    { schema: { tags, params: idParam, response: { 202: s.jobAnswer } } },
    async (req, reply) =>
      reply.code(202).send(site.jobs.cancel((req.params as { id: string }).id, req.actor)),
  );
  api.post(
    '/jobs/:id/resume',
    {
      schema: {
        tags,
        summary: 'resume a job that waits for an operator (a plan step)',
        params: idParam,
        response: { 200: s.jobAnswer },
      },
    },
    async (req) => site.jobs.resume((req.params as { id: string }).id, req.actor),
  );
  api.get(
    '/jobs/:id/watch',
    {
      schema: {
        tags,
        summary: 'server-sent events: the job at every change, until it ends',
        params: idParam,
      },
    },
    async (req, reply) => {
      const id = (req.params as { id: string }).id;
      const first = site.jobs.get(id); // 404 before the stream starts
      reply.hijack();
      const res = reply.raw;
      res.writeHead(200, {
        'content-type': 'text/event-stream',
        'cache-control': 'no-store',
        connection: 'keep-alive',
      });
      const send = (job: Job) => res.write(`event: job\ndata: ${JSON.stringify(job)}\n\n`);
      const onUpdate = (job: Job) => {
        if (job.id !== id) return;
        send(job);
        if (job.state !== 'running') end();
      };
      const end = () => {
        site.jobs.off('update', onUpdate);
        res.end();
      };
      send(first);
      if (first.state !== 'running') return end();
      site.jobs.on('update', onUpdate);
      res.on('close', () => site.jobs.off('update', onUpdate));
    },
  );

  api.get(
    '/events',
    {
      schema: {
        tags: ['events'],
        querystring: {
          type: 'object',
          additionalProperties: false,
          properties: {
            after: { type: 'string', pattern: '^[0-9]{1,15}$' },
            action: { type: 'string' },
            target: { type: 'string' },
            actor: { type: 'string' },
            outcome: { type: 'string', enum: ['ok', 'failed', 'info', 'warning'] },
            limit,
          },
        },
        response: { 200: s.list(s.eventAnswer) },
      },
    },
    async (req) => {
      const q = req.query as Record<string, string | undefined>;
      return site.events.query({
        ...(q.after ? { after: Number(q.after) } : {}),
        ...(q.limit ? { limit: Number(q.limit) } : {}),
        ...(q.action ? { action: q.action } : {}),
        ...(q.target ? { target: q.target } : {}),
        ...(q.actor ? { actor: q.actor } : {}),
        ...(q.outcome ? { outcome: q.outcome as 'ok' } : {}),
      });
    },
  );
}
