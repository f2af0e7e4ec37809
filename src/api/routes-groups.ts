import type { FastifyInstance } from 'fastify';
import type { CreateGroupRequest, Site } from '../orchestration/index.js';
import * as s from './schemas.js';

type Name = { name: string };
const tags = ['groups'];

const vmList = { type: 'array', items: s.name, description: 'VM names, in start order' } as const;

const createBody = {
  type: 'object',
  additionalProperties: false,
  required: ['name'],
  properties: {
    name: s.name,
    vms: vmList,
    description: { type: 'string', maxLength: 1024 },
  },
} as const;

const vmsBody = {
  type: 'object',
  additionalProperties: false,
  required: ['vms'],
  properties: { vms: { ...vmList, minItems: 1 } },
} as const;

const memberParams = {
  type: 'object',
  required: ['name', 'vm'],
  properties: { name: { type: 'string' }, vm: { type: 'string' } },
} as const;

const groupAnswer = s.open('a resiliency group: VMs protected and recovered together', {
  name: { type: 'string' },
  vms: { type: 'array', items: { type: 'string' } },
  defined: { type: 'boolean' },
});

/** Resiliency groups (a replicated one is one consistency group). */
export function registerGroupRoutes(api: FastifyInstance, site: Site): void {
  const g = site.groups;
  api.get('/groups', { schema: { tags, response: { 200: s.list(groupAnswer) } } }, async () => g.list());
  api.post(
    '/groups',
    {
      schema: {
        tags,
        summary: 'define a resiliency group',
        body: createBody,
        response: { 201: groupAnswer },
      },
    },
    async (req, reply) => reply.code(201).send(g.create(req.actor, req.body as CreateGroupRequest)),
  );
  api.get(
    '/groups/:name',
    { schema: { tags, params: s.nameParam, response: { 200: groupAnswer } } },
    async (req) => g.show((req.params as Name).name),
  );
  api.delete('/groups/:name', { schema: { tags, params: s.nameParam } }, async (req) =>
    g.delete(req.actor, (req.params as Name).name),
  );
  api.post(
    '/groups/:name/vms',
    {
      schema: {
        tags,
        summary: 'VMs join the group (refused while it replicates)',
        params: s.nameParam,
        body: vmsBody,
        response: { 200: groupAnswer },
      },
    },
    async (req) => g.add(req.actor, (req.params as Name).name, (req.body as { vms: string[] }).vms),
  );
  api.delete(
    '/groups/:name/vms/:vm',
    {
      schema: {
        tags,
        summary: 'a VM leaves the group (refused while it replicates)',
        params: memberParams,
        response: { 200: groupAnswer },
      },
    },
    async (req) => {
      const p = req.params as { name: string; vm: string };
      return g.remove(req.actor, p.name, [p.vm]);
    },
  );
}
