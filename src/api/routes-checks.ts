import type { FastifyInstance } from 'fastify';
import type { CheckRequest, Site } from '../orchestration/index.js';
import * as s from './schemas.js';

const tags = ['recovery'];

const checkBody = {
  type: 'object',
  additionalProperties: false,
  required: ['vm', 'repo'],
  properties: {
    vm: { ...s.name, description: 'the VM whose backup is checked' },
    ...s.repoFields,
    snapshot: { type: 'string', minLength: 1, description: 'a VM backup of it (default: its newest)' },
    heartbeat: {
      type: 'string',
      minLength: 1,
      maxLength: 1000,
      description:
        'agent (default: its guest agent answers a ping), console:REGEX (its serial console matches) or tcp:HOST:PORT',
    },
    script: {
      type: 'string',
      minLength: 1,
      description: 'an executable on the site host run after the heartbeat; exit 0 passes',
    },
    timeoutSeconds: {
      type: 'number',
      minimum: 1,
      maximum: 86400,
      description: 'for the heartbeat, and again for the script (default 120)',
    },
    network: {
      type: 'string',
      minLength: 1,
      description:
        'an existing network for its NICs, or none (default: an isolated network made for the check)',
    },
  },
} as const;

const checkAnswer = s.open('a recoverability check: what was booted, how it ended, its console log', {
  id: { type: 'string' },
  vm: { type: 'string' },
  snapshot: { type: 'string' },
  state: { type: 'string', enum: ['running', 'passed', 'failed'] },
  reason: { type: 'string' },
  consoleLog: { type: 'string', description: 'path of the kept console log on the site host' },
});

/** Recoverability checks: start one (a job), their history, one check. */
export function registerCheckRoutes(api: FastifyInstance, site: Site): void {
  api.post(
    '/recovery-checks',
    {
      schema: {
        tags,
        summary:
          "recoverability check: boot the VM's newest (or named) backup on an isolated network, check a heartbeat (and a script), tear it all down, record pass or fail (a job)",
        body: checkBody,
        response: { 202: s.jobAnswer },
      },
    },
    async (req, reply) => reply.code(202).send(site.checks.start(req.actor, req.body as CheckRequest)),
  );
  api.get(
    '/recovery-checks',
    {
      schema: {
        tags,
        summary: 'recoverability checks, newest first',
        querystring: {
          type: 'object',
          additionalProperties: false,
          properties: {
            vm: { type: 'string', minLength: 1 },
            limit: { type: 'string', pattern: '^[0-9]{1,4}$' },
          },
        },
        response: { 200: s.list(checkAnswer) },
      },
    },
    async (req) => {
      const { vm, limit } = req.query as { vm?: string; limit?: string };
      return site.checks.list({ ...(vm ? { vm } : {}), ...(limit ? { limit: Number(limit) } : {}) });
    },
  );
  api.get(
    '/recovery-checks/:id',
    {
      schema: {
        tags,
        summary: 'one recoverability check',
        params: { type: 'object', required: ['id'], properties: { id: { type: 'string', minLength: 1 } } },
        response: { 200: checkAnswer },
      },
    },
    async (req) => site.checks.get((req.params as { id: string }).id),
  );
}
