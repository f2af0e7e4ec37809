import type { FastifyInstance } from 'fastify';
import type { PolicyObject, PolicySpec, Site } from '../orchestration/index.js';
import * as s from './schemas.js';

type Name = { name: string };
const tags = ['policies'];

const keep = s.retentionKeep;
const timing = {
  cron: { type: 'string', minLength: 1, description: "a cron expression (croner's syntax)" },
  everySeconds: { type: 'integer', minimum: 1 },
  timezone: {
    type: 'string',
    minLength: 1,
    description: 'IANA time zone of the cron expression (default UTC)',
  },
} as const;

const specProperties = {
  requires: {
    type: 'array',
    items: { type: 'string', minLength: 1 },
    description: 'capabilities a pool must advertise: NAME or NAME=VALUE',
  },
  snapshot: { type: 'object', additionalProperties: false, properties: { ...timing, keep } },
  backup: {
    type: 'object',
    additionalProperties: false,
    required: ['repo'],
    properties: {
      ...timing,
      keep,
      repo: { type: 'string', minLength: 1, description: "the repository's directory on the site's host" },
      passphraseFile: { type: 'string', minLength: 1 },
    },
  },
  verify: { type: 'object', additionalProperties: false, properties: timing },
  replication: {
    type: 'object',
    additionalProperties: false,
    required: ['to', 'rpoSeconds'],
    properties: { to: s.name, rpoSeconds: { type: 'number', minimum: 0.001, description: 'seconds' } },
  },
} as const;

const createBody = {
  type: 'object',
  additionalProperties: false,
  required: ['name'],
  properties: { name: s.name, ...specProperties },
} as const;

const updateBody = { type: 'object', additionalProperties: false, properties: specProperties } as const;

const objectBody = {
  type: 'object',
  additionalProperties: false,
  properties: { vm: s.name, volume: s.name },
  oneOf: [{ required: ['vm'] }, { required: ['volume'] }],
} as const;

const policyAnswer = s.open('a storage policy', { name: { type: 'string' } });
const assignmentAnswer = s.open('a policy assigned to a VM or volume', {
  kind: { type: 'string', enum: ['vm', 'volume'] },
  object: { type: 'string' },
  policy: { type: 'string' },
});
const complianceAnswer = s.open('compliance of a VM or volume with its policy, with each reason it is not', {
  kind: { type: 'string', enum: ['vm', 'volume'] },
  object: { type: 'string' },
  policy: { type: 'string' },
  compliant: { type: 'boolean' },
  reasons: s.list(s.open('why: code (capability, backup, replication, rpo, verify), message, fixable')),
});

/** Storage policies, their assignments, compliance and remediation. */
export function registerPolicyRoutes(api: FastifyInstance, site: Site): void {
  const p = site.policies;
  api.get('/policies', { schema: { tags, response: { 200: s.list(policyAnswer) } } }, async () => p.list());
  api.post(
    '/policies',
    { schema: { tags, body: createBody, response: { 201: policyAnswer } } },
    async (req, reply) => {
      const { name, ...spec } = req.body as PolicySpec & Name;
      return reply.code(201).send(p.create(req.actor, name, { ...spec, requires: spec.requires ?? [] }));
    },
  );
  api.get(
    '/policies/:name',
    { schema: { tags, params: s.nameParam, response: { 200: policyAnswer } } },
    async (req) => p.show((req.params as Name).name),
  );
  api.put(
    '/policies/:name',
    {
      schema: {
        tags,
        summary: "replace a policy's contents (its assignments get the new schedules)",
        params: s.nameParam,
        body: updateBody,
        response: { 200: policyAnswer },
      },
    },
    async (req) => {
      const spec = req.body as PolicySpec;
      return p.update(req.actor, (req.params as Name).name, { ...spec, requires: spec.requires ?? [] });
    },
  );
  api.delete('/policies/:name', { schema: { tags, params: s.nameParam } }, async (req, reply) => {
    p.delete(req.actor, (req.params as Name).name);
    return reply.code(204).send();
  });
  api.post(
    '/policies/:name/assign',
    { schema: { tags, params: s.nameParam, body: objectBody, response: { 200: assignmentAnswer } } },
    async (req) => p.assign(req.actor, (req.params as Name).name, req.body as PolicyObject),
  );
  api.post(
    '/policy-assignments/remove',
    { schema: { tags, summary: 'unassign the policy of a VM or volume', body: objectBody } },
    async (req, reply) => {
      p.unassign(req.actor, req.body as PolicyObject);
      return reply.code(204).send();
    },
  );
  api.get(
    '/policy-assignments',
    { schema: { tags, response: { 200: s.list(assignmentAnswer) } } },
    async () => p.assignments(),
  );
  api.get(
    '/policy-compliance',
    {
      schema: {
        tags,
        summary: 'compliance of every assigned VM and volume (or one)',
        querystring: {
          type: 'object',
          additionalProperties: false,
          properties: { vm: { type: 'string' }, volume: { type: 'string' } },
        },
        response: { 200: s.list(complianceAnswer) },
      },
    },
    async (req) => {
      const q = req.query as { vm?: string; volume?: string };
      return p.compliance(q.vm ? { vm: q.vm } : q.volume ? { volume: q.volume } : undefined);
    },
  );
  api.post(
    '/vms/:vm/remediate',
    {
      schema: {
        tags,
        summary: "fix what can be fixed of a VM's compliance with its policy (a job)",
        params: s.vmParam,
        response: { 202: s.jobAnswer },
      },
    },
    async (req, reply) => reply.code(202).send(p.remediate(req.actor, (req.params as { vm: string }).vm)),
  );
}
