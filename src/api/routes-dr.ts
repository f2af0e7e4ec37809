import type { FastifyInstance } from 'fastify';
import type {
  EvacuateRequest,
  Job,
  MigrateRequest,
  RehearsalRequest,
  Site,
  TakeoverRequest,
} from '../orchestration/index.js';
import * as s from './schemas.js';

type Name = { name: string };
const tags = ['dr'];

const takeoverBody = {
  type: 'object',
  additionalProperties: false,
  properties: {
    checkpoint: {
      type: 'string',
      minLength: 1,
      description: 'the checkpoint to recover: newest (default), its sequence number or its name',
    },
    force: { type: 'boolean', description: 'take over although the source site answers' },
    networkMap: {
      type: 'object',
      additionalProperties: s.name,
      description: 'source network → network of this site (default: the same name)',
    },
    start: { type: 'boolean', description: 'start the VMs (default true)' },
  },
} as const;

const migrateBody = {
  type: 'object',
  additionalProperties: false,
  properties: {
    graceSeconds: {
      type: 'number',
      minimum: 0,
      description: 'seconds each guest has to power off before it is stopped hard (default 60)',
    },
    verify: {
      type: 'boolean',
      description: 'verify the replica at the final checkpoint first (default true)',
    },
    networkMap: takeoverBody.properties.networkMap,
  },
} as const;

const rehearseBody = {
  type: 'object',
  additionalProperties: false,
  properties: {
    checkpoint: takeoverBody.properties.checkpoint,
    heartbeat: { type: 'string', description: 'agent (default), console:REGEX or tcp:HOST:PORT' },
    timeoutSeconds: { type: 'number', minimum: 1, description: 'for each heartbeat (default 120)' },
    network: { ...s.name, description: 'an existing network for every NIC (default: an isolated one made)' },
  },
} as const;

const serviceBody = {
  type: 'object',
  additionalProperties: false,
  required: ['name', 'tiers'],
  properties: {
    name: s.name,
    tiers: {
      type: 'array',
      minItems: 1,
      items: { type: 'array', minItems: 1, items: s.name },
      description: 'replication groups per tier, tier 1 first',
    },
    bootDelaySeconds: { type: 'number', minimum: 0, maximum: 3600 },
  },
} as const;

const resyncBody = {
  type: 'object',
  additionalProperties: false,
  properties: {
    rpoSeconds: {
      type: 'number',
      minimum: 0.001,
      description: 'the recovery point objective of the reversed group (default 15 s)',
    },
  },
} as const;

/** Disaster recovery operations over the replication groups held at this site. */
export function registerDrRoutes(api: FastifyInstance, site: Site): void {
  /** POST /dr/groups/NAME/ACTION: a job on the group (or business service) the path names. */
  const groupJob = <R extends { group: string }>(
    action: string,
    summary: string,
    body: object,
    run: (actor: string, req: R) => Job | Promise<Job>,
  ) =>
    api.post(
      `/dr/groups/:name/${action}`,
      { schema: { tags, summary, params: s.nameParam, body, response: { 202: s.jobAnswer } } },
      async (req, reply) =>
        reply.code(202).send(
          await run(req.actor, {
            ...((req.body as Omit<R, 'group'> | undefined) ?? {}),
            group: (req.params as Name).name,
          } as R),
        ),
    );
  api.post(
    '/dr/groups/:name/takeover',
    {
      schema: {
        tags,
        summary:
          "take over a group replicated to this site (its source is lost): the checkpoint's volumes become this site's, its VMs start here (a job)",
        params: s.nameParam,
        body: takeoverBody,
        response: { 202: s.jobAnswer },
      },
    },
    async (req, reply) =>
      reply.code(202).send(
        await site.dr.takeover(req.actor, {
          ...((req.body as Omit<TakeoverRequest, 'group'> | undefined) ?? {}),
          group: (req.params as Name).name,
        }),
      ),
  );
  api.post(
    '/dr/groups/:name/resync',
    {
      schema: {
        tags,
        summary:
          'replicate a group (or every group of a business service) taken over here back to its old source, sending only what differs (the replication goes on from there)',
        params: s.nameParam,
        body: resyncBody,
      },
    },
    async (req) =>
      site.dr.resync(
        req.actor,
        (req.params as Name).name,
        (req.body as { rpoSeconds?: number } | undefined) ?? {},
      ),
  );
  groupJob(
    'migrate',
    'move a group (or a business service, tier by tier) replicated from this site to its target with no data lost: stop the guests, drain to a final checkpoint, verify, promote and start there, replicate back (a job)',
    migrateBody,
    (actor, req: MigrateRequest) => site.dr.migrate(actor, req),
  );
  api.post(
    '/dr/evacuate',
    {
      schema: {
        tags,
        summary:
          'move every business service (and lone group) replicated from this site, or with a VM on one of its hosts, to its target: each stopped last tier first, then migrated tier by tier (a job)',
        body: {
          type: 'object',
          additionalProperties: false,
          properties: {
            site: { ...s.name, description: 'this site' },
            host: { ...s.name, description: 'a host of this site' },
            ...migrateBody.properties,
          },
        },
        response: { 202: s.jobAnswer },
      },
    },
    async (req, reply) =>
      reply
        .code(202)
        .send(await site.dr.evacuate(req.actor, (req.body as EvacuateRequest | undefined) ?? {})),
  );
  groupJob(
    'failback',
    'fail a group (or business service) that runs here after a takeover or migrate back to its original site: resync what differs, wait until current, migrate back (a job)',
    migrateBody,
    (actor, req: MigrateRequest) => site.dr.failback(actor, req),
  );
  groupJob(
    'rehearse',
    'rehearse a failover of a group replicated here: clones of a checkpoint, its VMs started on an isolated network and checked, production and replication untouched (a job; they stay up until cleanup)',
    rehearseBody,
    (actor, req: RehearsalRequest) => site.dr.rehearse(actor, req),
  );
  api.post(
    '/dr/groups/:name/cleanup',
    {
      schema: { tags, summary: "remove every trace of a group's rehearsal", params: s.nameParam },
    },
    async (req) => site.dr.cleanup(req.actor, (req.params as Name).name),
  );
  api.get('/services', { schema: { tags } }, async () => site.dr.services.list());
  api.get('/services/:name', { schema: { tags, params: s.nameParam } }, async (req) =>
    site.dr.services.get((req.params as Name).name),
  );
  api.post(
    '/services',
    { schema: { tags, summary: 'define a business service here and at its peers', body: serviceBody } },
    async (req, reply) =>
      reply
        .code(201)
        .send(
          await site.dr.createService(
            req.actor,
            req.body as { name: string; tiers: string[][]; bootDelaySeconds?: number },
          ),
        ),
  );
  api.delete('/services/:name', { schema: { tags, params: s.nameParam } }, async (req) =>
    site.dr.deleteService(req.actor, (req.params as Name).name),
  );
  api.post(
    '/services/:name/start',
    {
      schema: {
        tags,
        summary: "start a business service's VMs here tier by tier, in its start order (a job)",
        params: s.nameParam,
        response: { 202: s.jobAnswer },
      },
    },
    async (req, reply) => reply.code(202).send(site.dr.startService(req.actor, (req.params as Name).name)),
  );
  api.post(
    '/services/:name/stop',
    {
      schema: {
        tags,
        summary:
          "stop a business service's VMs here, the last tier first (ACPI, hard after the grace; a job)",
        params: s.nameParam,
        body: {
          type: 'object',
          additionalProperties: false,
          properties: { graceSeconds: { type: 'number', minimum: 0 } },
        },
        response: { 202: s.jobAnswer },
      },
    },
    async (req, reply) =>
      reply
        .code(202)
        .send(
          site.dr.stopService(
            req.actor,
            (req.params as Name).name,
            (req.body as { graceSeconds?: number } | undefined) ?? {},
          ),
        ),
  );
  const mapParams = {
    type: 'object',
    required: ['peer', 'source'],
    properties: { peer: { type: 'string' }, source: { type: 'string' } },
  } as const;
  type MapParams = { peer: string; source: string };
  api.get(
    '/network-maps',
    { schema: { tags, summary: "where each paired site's networks go here on a recovery and a rehearsal" } },
    async () => site.dr.networkMaps.list(),
  );
  api.put(
    '/network-maps/:peer/:source',
    {
      schema: {
        tags,
        summary:
          "map a paired site's network to a network here for takeovers and migrates, and optionally to an isolated one for rehearsals",
        params: mapParams,
        body: {
          type: 'object',
          additionalProperties: false,
          required: ['recovery'],
          properties: {
            recovery: {
              ...s.name,
              description: 'the network here that its NICs join on a takeover or migrate',
            },
            rehearsal: {
              ...s.name,
              description: 'an isolated network here that its NICs join in a rehearsal',
            },
          },
        },
      },
    },
    async (req) =>
      site.dr.mapNetwork(req.actor, {
        ...(req.params as MapParams),
        ...(req.body as { recovery: string; rehearsal?: string }),
      }),
  );
  api.delete('/network-maps/:peer/:source', { schema: { tags, params: mapParams } }, async (req) => {
    const p = req.params as MapParams;
    return site.dr.unmapNetwork(req.actor, p.peer, p.source);
  });
}
