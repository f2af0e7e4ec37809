import type { FastifyInstance } from 'fastify';
import { Site, type VmDefinition } from '../orchestration/index.js';
import * as s from './schemas.js';
import { registerBackupRoute } from './backup-route.js';

type Name = { name: string };

const recoveryBody = {
  type: 'object',
  additionalProperties: false,
  properties: {
    hostname: { type: 'string', maxLength: 253 },
    nics: {
      type: 'array',
      description: 'by NIC position',
      items: {
        type: 'object',
        additionalProperties: false,
        properties: {
          address: { type: 'string', description: 'an address with its prefix length, e.g. 10.2.0.5/24' },
          gateway: { type: 'string' },
          dns: { type: 'array', items: { type: 'string' } },
        },
      },
    },
  },
} as const;

/** Hosts, networks, VMs. */
export function registerComputeRoutes(api: FastifyInstance, site: Site): void {
  const tags = ['compute'];

  api.get('/hosts', { schema: { tags, response: { 200: s.list(s.hostAnswer) } } }, async () =>
    site.compute.listHosts(),
  );
  api.get(
    '/hosts/:name',
    { schema: { tags, params: s.nameParam, response: { 200: s.hostAnswer } } },
    async (req) => site.compute.host((req.params as Name).name),
  );

  api.get('/networks', { schema: { tags, response: { 200: s.list(s.networkAnswer) } } }, async () =>
    site.compute.listNetworks(),
  );
  api.post(
    '/networks',
    { schema: { tags, body: s.createNetworkBody, response: { 201: s.networkAnswer } } },
    async (req, reply) => {
      const b = req.body as { name: string; kind: 'nat' | 'isolated' };
      return reply.code(201).send(site.vms.createNetwork(req.actor, b.name, b.kind));
    },
  );
  api.get(
    '/networks/:name',
    { schema: { tags, params: s.nameParam, response: { 200: s.networkAnswer } } },
    async (req) => site.compute.network((req.params as Name).name),
  );
  api.delete('/networks/:name', { schema: { tags, params: s.nameParam } }, async (req, reply) => {
    site.vms.deleteNetwork(req.actor, (req.params as Name).name);
    return reply.code(204).send();
  });

  api.get('/vms', { schema: { tags, response: { 200: s.list(s.vmAnswer) } } }, async () =>
    site.compute.listVms(),
  );
  api.post(
    '/vms',
    { schema: { tags, body: s.createVmBody, response: { 201: s.vmAnswer } } },
    async (req, reply) => {
      const { name, ...def } = req.body as VmDefinition & Name;
      return reply.code(201).send(site.vms.createVm(req.actor, name, def));
    },
  );
  api.get(
    '/vms/:name',
    { schema: { tags, params: s.nameParam, response: { 200: s.vmAnswer } } },
    async (req) => site.compute.vm((req.params as Name).name),
  );
  api.put(
    '/vms/:name/recovery',
    {
      schema: {
        tags,
        summary:
          "what the VM's guest gets where it is recovered (cloud-init NoCloud: host name, addresses per NIC); {} clears",
        params: s.nameParam,
        body: recoveryBody,
        response: { 200: s.vmAnswer },
      },
    },
    async (req) => site.vms.setRecovery(req.actor, (req.params as Name).name, req.body),
  );
  api.delete('/vms/:name', { schema: { tags, params: s.nameParam } }, async (req, reply) => {
    site.vms.deleteVm(req.actor, (req.params as Name).name);
    return reply.code(204).send();
  });
  api.post(
    '/vms/:name/start',
    { schema: { tags, summary: 'start a VM (a job)', params: s.nameParam, response: { 202: s.jobAnswer } } },
    async (req, reply) => reply.code(202).send(site.vms.startVm(req.actor, (req.params as Name).name)),
  );
  api.post(
    '/vms/:name/stop',
    {
      schema: {
        tags,
        summary: 'stop a VM: ACPI power-off, then quit after the grace time, then kill (a job)',
        params: s.nameParam,
        body: s.stopVmBody,
        response: { 202: s.jobAnswer },
      },
    },
    async (req, reply) =>
      reply
        .code(202)
        .send(
          site.vms.stopVm(
            req.actor,
            (req.params as Name).name,
            (req.body ?? {}) as { force?: boolean; graceSeconds?: number },
          ),
        ),
  );
  registerBackupRoute(api, site, {
    path: '/vms/:name/backup',
    kind: 'vm',
    tags,
    summary:
      'back a VM up: all its disks at one point (file systems frozen through the guest agent when it answers, else crash-consistent), and its configuration (a job)',
    params: s.nameParam,
  });
  api.post(
    '/vms/:name/move-storage',
    {
      schema: {
        tags,
        summary: "live storage migration: move all of a VM's disks to another pool while it runs (a job)",
        params: s.nameParam,
        body: s.moveBody,
        response: { 202: s.jobAnswer },
      },
    },
    async (req, reply) => {
      const b = req.body as { pool: string; keepSource?: boolean };
      const name = (req.params as Name).name;
      return reply
        .code(202)
        .send(site.volumes.moveVmStorage(req.actor, name, b.pool, b.keepSource ? { keepSource: true } : {}));
    },
  );
  api.post(
    '/recoveries',
    {
      schema: {
        tags,
        summary:
          'instant recovery: run a VM straight from a VM backup, within seconds; its disks are new volumes over the backup, which is never written',
        body: s.recoverBody,
        response: { 201: s.open('the VM and its recovery') },
      },
    },
    async (req, reply) => {
      const b = req.body as {
        repo: string;
        passphraseFile?: string;
        snapshot: string;
        name?: string;
        pool?: string;
        cmdline?: string;
        network?: string;
        noStart?: boolean;
      };
      const r = await site.vms.recoverInstant(req.actor, {
        ...Site.repoAccess(b.repo, b.passphraseFile),
        ...(b.passphraseFile ? { passphraseFile: b.passphraseFile } : {}),
        snapshot: b.snapshot,
        ...(b.name ? { name: b.name } : {}),
        ...(b.pool ? { pool: b.pool } : {}),
        ...(b.cmdline !== undefined ? { cmdline: b.cmdline } : {}),
        ...(b.network !== undefined ? { network: b.network } : {}),
        ...(b.noStart ? { noStart: true } : {}),
      });
      return reply.code(201).send(r);
    },
  );
  api.get(
    '/recoveries',
    {
      schema: { tags, summary: 'VMs running from backups', response: { 200: s.list(s.open('a recovery')) } },
    },
    async () => site.recovery.list(),
  );
  api.get(
    '/recoveries/:vm',
    {
      schema: {
        tags,
        summary: 'a VM running from a backup',
        params: s.vmParam,
        response: { 200: s.open('a recovery') },
      },
    },
    async (req) => site.recovery.get((req.params as { vm: string }).vm),
  );
  api.post(
    '/recoveries/:vm/finalize',
    {
      schema: {
        tags,
        summary:
          "copy the rest of the backup into the VM's volumes while it runs, then drop the backup (a job)",
        params: s.vmParam,
        response: { 202: s.jobAnswer },
      },
    },
    async (req, reply) =>
      reply.code(202).send(site.recovery.finalize(req.actor, (req.params as { vm: string }).vm)),
  );
  api.post(
    '/recoveries/:vm/discard',
    {
      schema: {
        tags,
        summary: 'stop the VM and drop every change: the VM and its volumes are deleted (a job)',
        params: s.vmParam,
        response: { 202: s.jobAnswer },
      },
    },
    async (req, reply) =>
      reply.code(202).send(site.recovery.discard(req.actor, (req.params as { vm: string }).vm)),
  );
  api.get(
    '/vms/:name/console-log',
    {
      schema: {
        tags,
        summary: "the VM's serial console log (text)",
        params: s.nameParam,
        querystring: {
          type: 'object',
          additionalProperties: false,
          properties: { bytes: { type: 'string', pattern: '^[0-9]{1,9}$' } },
        },
      },
    },
    async (req, reply) => {
      const q = req.query as { bytes?: string };
      const text = site.compute.consoleLog((req.params as Name).name, q.bytes ? Number(q.bytes) : undefined);
      return reply.type('text/plain; charset=utf-8').send(text);
    },
  );
}
