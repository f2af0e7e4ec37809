import type { FastifyInstance } from 'fastify';
import type { EnableReplicationRequest, Site } from '../orchestration/index.js';
import * as s from './schemas.js';

type Name = { name: string };
const tags = ['replication'];
const seconds = { type: 'number', minimum: 0.001, description: 'seconds' } as const;

const enableBody = {
  type: 'object',
  additionalProperties: false,
  required: ['group', 'to', 'pool'],
  properties: {
    group: s.name,
    vms: {
      type: 'array',
      minItems: 1,
      items: s.name,
      description: 'the VMs whose disks the group replicates (left out: those of the resiliency group)',
    },
    to: { ...s.name, description: 'the paired site holding the replica' },
    pool: { ...s.name, description: 'the pool at that site for the replica volumes' },
    rpoSeconds: { ...seconds, description: 'the recovery point objective (default 15 s)' },
    checkpointSeconds: {
      ...seconds,
      description: 'a consistent point this often (default: from the RPO, at most 5 s)',
    },
    keepSeconds: { ...seconds, description: 'how long the target keeps checkpoints (default 1 h)' },
    sync: { type: 'boolean', description: 'acknowledge a write once the target journal holds it' },
    compress: { type: 'boolean', description: 'zstd on the link (default true)' },
    bytesPerSecond: { type: 'integer', minimum: 0, description: 'bandwidth limit (0: none)' },
    journalBytes: { type: 'integer', minimum: 1048576, description: "the journal's bound (default 256 MiB)" },
    seeded: {
      type: 'boolean',
      description:
        "the target holds copies already (volumes of the source volumes' names on the pool): only what differs is sent",
    },
  },
} as const;

const checkpointBody = {
  type: 'object',
  additionalProperties: false,
  properties: { name: { type: 'string', description: 'e.g. before-upgrade' } },
} as const;

const limitBody = {
  type: 'object',
  additionalProperties: false,
  required: ['bytesPerSecond'],
  properties: { bytesPerSecond: { type: 'integer', minimum: 0, description: '0: unlimited' } },
} as const;

const verifyBody = {
  type: 'object',
  additionalProperties: false,
  properties: {
    repair: { type: 'boolean', description: 'resend what differs through the journal, then verify again' },
  },
} as const;

const groupAnswer = s.open('a replication group, from the side of this site', {
  name: { type: 'string' },
  role: { type: 'string', enum: ['source', 'target'] },
  peer: { type: 'string' },
});

/** Consistency groups replicated to or from paired sites. */
export function registerReplicationRoutes(api: FastifyInstance, site: Site): void {
  const r = site.replication;
  api.get('/replication/groups', { schema: { tags, response: { 200: s.list(groupAnswer) } } }, async () =>
    r.list(),
  );
  api.post(
    '/replication/groups',
    {
      schema: {
        tags,
        summary: "replicate VMs' disks as one consistency group to a paired site",
        body: enableBody,
        response: { 201: groupAnswer },
      },
    },
    async (req, reply) =>
      reply.code(201).send(await r.enable(req.actor, req.body as EnableReplicationRequest)),
  );
  api.get(
    '/replication/groups/:name',
    { schema: { tags, params: s.nameParam, response: { 200: groupAnswer } } },
    async (req) => r.show((req.params as Name).name),
  );
  api.delete('/replication/groups/:name', { schema: { tags, params: s.nameParam } }, async (req) =>
    r.disable(req.actor, (req.params as Name).name),
  );
  api.post(
    '/replication/groups/:name/pause',
    { schema: { tags, params: s.nameParam, response: { 200: groupAnswer } } },
    async (req) => r.pause(req.actor, (req.params as Name).name),
  );
  api.post(
    '/replication/groups/:name/resume',
    { schema: { tags, params: s.nameParam, response: { 200: groupAnswer } } },
    async (req) => r.resume(req.actor, (req.params as Name).name),
  );
  api.put(
    '/replication/groups/:name/limit',
    {
      schema: {
        tags,
        summary: "change the link's bandwidth limit while it runs",
        params: s.nameParam,
        body: limitBody,
        response: { 200: groupAnswer },
      },
    },
    async (req) =>
      r.setLimit(
        req.actor,
        (req.params as Name).name,
        (req.body as { bytesPerSecond: number }).bytesPerSecond,
      ),
  );
  api.post(
    '/replication/groups/:name/checkpoints',
    {
      schema: {
        tags,
        summary: 'mark a consistent point of the whole group now',
        params: s.nameParam,
        body: checkpointBody,
      },
    },
    async (req, reply) =>
      reply
        .code(201)
        .send(
          r.checkpoint(
            req.actor,
            (req.params as Name).name,
            (req.body as { name?: string } | undefined)?.name,
          ),
        ),
  );
  api.get(
    '/replication/groups/:name/checkpoints',
    { schema: { tags, summary: 'the checkpoints the replica holds, oldest first', params: s.nameParam } },
    async (req) => r.checkpoints((req.params as Name).name),
  );
  api.post(
    '/replication/groups/:name/verify',
    {
      schema: {
        tags,
        summary:
          'compare the replica with the source at a checkpoint, SHA-256 per extent on both sides (a job; differences fail it unless repaired)',
        params: s.nameParam,
        body: verifyBody,
        response: { 202: s.jobAnswer },
      },
    },
    async (req, reply) =>
      reply
        .code(202)
        .send(
          r.verify(
            req.actor,
            (req.params as Name).name,
            (req.body as { repair?: boolean } | undefined)?.repair ? { repair: true } : {},
          ),
        ),
  );
}
