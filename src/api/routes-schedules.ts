import type { FastifyInstance } from 'fastify';
import { HavenError } from '../common/index.js';
import type { ManualClock, ScheduleSpec, Site } from '../orchestration/index.js';
import * as s from './schemas.js';

const tags = ['schedules'];
type Id = { id: string };
const idParam = {
  type: 'object',
  required: ['id'],
  properties: { id: { type: 'string', minLength: 1, maxLength: 64 } },
} as const;

const keep = s.retentionKeep;

const createBody = {
  type: 'object',
  additionalProperties: false,
  required: ['kind', 'target'],
  properties: {
    // Not an enum: the scheduler names the kinds it knows in its answer.
    kind: { type: 'string', minLength: 1, description: 'backup, snapshot, prune, verify, gc or check' },
    target: {
      type: 'string',
      minLength: 1,
      maxLength: 4096,
      description: 'a VM or volume (backup, snapshot, check) or a repository path (prune, verify, gc)',
    },
    cron: {
      type: 'string',
      minLength: 1,
      maxLength: 200,
      description: "a cron expression (croner's syntax)",
    },
    everySeconds: { type: 'integer', minimum: 1 },
    timezone: {
      type: 'string',
      minLength: 1,
      description: 'IANA time zone of the cron expression (default UTC)',
    },
    jitterSeconds: { type: 'integer', minimum: 0, description: 'at most this much random delay per run' },
    catchUp: {
      type: 'string',
      enum: ['once', 'skip'],
      description: 'runs missed while the daemon was down: run once (default) or skip',
    },
    params: {
      type: 'object',
      additionalProperties: true,
      description:
        'repo and passphraseFile (backup, check, and a repository with a passphrase), keep (backup, snapshot, prune), rolling (verify), heartbeat/script/network/timeoutSeconds (check)',
      properties: {
        repo: { type: 'string', pattern: '^/', description: "the repository's directory on the site's host" },
        passphraseFile: { type: 'string', pattern: '^/' },
        keep,
      },
    },
  },
} as const;

const scheduleAnswer = s.open('a schedule: what runs when, its next run and what its last run did', {
  id: { type: 'string' },
  owner: { type: 'string', description: 'person, or policy:NAME:OBJECT' },
  kind: { type: 'string' },
  target: { type: 'string' },
  nextRun: { type: 'string' },
  state: { type: 'string', enum: ['idle', 'queued', 'running'] },
  lastOutcome: { type: 'string', enum: ['succeeded', 'failed', 'cancelled', 'skipped'] },
});

const clockBody = {
  type: 'object',
  additionalProperties: false,
  properties: {
    advanceSeconds: { type: 'number', minimum: 0 },
    to: { type: 'string', minLength: 1, description: 'an ISO 8601 time, not before now' },
    wait: { type: 'boolean', description: 'answer once the runs that came due have ended (default true)' },
  },
} as const;

/** Schedules (person-owned ones made here; those of policies shown), and the test clock when enabled. */
export function registerScheduleRoutes(api: FastifyInstance, site: Site): void {
  const sch = site.scheduler;
  api.get(
    '/schedules',
    {
      schema: {
        tags,
        querystring: {
          type: 'object',
          additionalProperties: false,
          properties: { owner: { type: 'string' }, kind: { type: 'string' }, target: { type: 'string' } },
        },
        response: { 200: s.list(scheduleAnswer) },
      },
    },
    async (req) => sch.list(req.query as { owner?: string; kind?: string; target?: string }),
  );
  api.post(
    '/schedules',
    { schema: { tags, body: createBody, response: { 201: scheduleAnswer } } },
    async (req, reply) => reply.code(201).send(sch.create(req.actor, req.body as ScheduleSpec)),
  );
  api.get(
    '/schedules/:id',
    { schema: { tags, params: idParam, response: { 200: scheduleAnswer } } },
    async (req) => sch.get((req.params as Id).id),
  );
  api.delete('/schedules/:id', { schema: { tags, params: idParam } }, async (req, reply) => {
    sch.delete(req.actor, (req.params as Id).id);
    return reply.code(204).send();
  });

  // The manual clock of tests and benchmarks ($HAVEN_TEST_CLOCK): absent unless the daemon runs one.
  if (!sch.clock.manual) return;
  const clock = sch.clock as ManualClock;
  const now = () => ({ now: new Date(clock.now()).toISOString(), ...sch.activeRuns() });
  api.get('/test/clock', { schema: { hide: true } }, async () => now());
  api.post('/test/clock', { schema: { hide: true, body: clockBody } }, async (req) => {
    const b = req.body as { advanceSeconds?: number; to?: string; wait?: boolean };
    if ((b.advanceSeconds === undefined) === (b.to === undefined))
      throw new HavenError('INVALID_ARGUMENT', 'give one of advanceSeconds and to');
    const to = b.to !== undefined ? Date.parse(b.to) : clock.now() + b.advanceSeconds! * 1000;
    if (!Number.isFinite(to) || to < clock.now())
      throw new HavenError('INVALID_ARGUMENT', `the test clock moves forward only (it is ${now().now})`);
    clock.set(to);
    if (b.wait !== false) {
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([
        sch.idle(),
        new Promise((_, reject) => {
          timer = setTimeout(
            () => reject(new HavenError('TIMEOUT', 'the runs that came due did not end within 120 s')),
            120_000,
          );
        }),
      ]).finally(() => clearTimeout(timer));
    }
    return now();
  });
}
