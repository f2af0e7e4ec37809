import type { FastifyInstance } from 'fastify';
import { Site } from '../orchestration/index.js';
import * as s from './schemas.js';
import { invalidArgument } from '../common/index.js';
import { registerBackupRoute } from './backup-route.js';

const volumeParam = {
  type: 'object',
  required: ['name'],
  properties: { name: { type: 'string' } },
} as const;
const snapshotParam = {
  type: 'object',
  required: ['name', 'snapshot'],
  properties: { name: { type: 'string' }, snapshot: { type: 'string' } },
} as const;

type Name = { name: string };
type Snap = { name: string; snapshot: string };

/** Pools, volumes, snapshots. */
export function registerStorageRoutes(api: FastifyInstance, site: Site): void {
  const tags = ['storage'];

  api.get('/pools', { schema: { tags, response: { 200: s.list(s.poolAnswer) } } }, async () =>
    site.volumes.listPools(),
  );
  api.post(
    '/pools',
    { schema: { tags, body: s.createPoolBody, response: { 201: s.poolAnswer } } },
    async (req, reply) => {
      const b = req.body as {
        name: string;
        path?: string;
        tier?: string;
        capacityBytes?: number;
        capabilities?: string[];
        type?: 'file' | 'rbd';
        cephConf?: string;
        cephPool?: string;
        imagePrefix?: string;
      };
      const { name, type, cephConf, cephPool, imagePrefix, ...opts } = b;
      if (type === 'rbd') {
        if (!cephConf || !cephPool)
          throw invalidArgument("an RBD pool needs cephConf (the cluster's ceph.conf) and cephPool");
        const p = await site.volumes.createRbdPool(req.actor, name, {
          ...opts,
          cephConf,
          cephPool,
          ...(imagePrefix !== undefined ? { imagePrefix } : {}),
        });
        return reply.code(201).send(p);
      }
      if (cephConf || cephPool || imagePrefix !== undefined)
        throw invalidArgument('cephConf, cephPool and imagePrefix are for RBD pools (type rbd)');
      return reply.code(201).send(site.volumes.createPool(req.actor, name, opts));
    },
  );
  api.post(
    '/pools/register',
    {
      schema: {
        tags,
        summary: 'register a pool served by an out-of-process storage provider (HTTP)',
        body: s.registerPoolBody,
        response: { 201: s.poolAnswer },
      },
    },
    async (req, reply) => {
      const { name, ...opts } = req.body as {
        name: string;
        providerUrl: string;
        tokenFile: string;
        capabilities?: string[];
      };
      return reply.code(201).send(await site.volumes.registerPool(req.actor, name, opts));
    },
  );
  api.get(
    '/pools/:name',
    { schema: { tags, params: s.nameParam, response: { 200: s.poolAnswer } } },
    async (req) => site.volumes.pool((req.params as Name).name),
  );
  api.put(
    '/pools/:name/capabilities',
    {
      schema: {
        tags,
        summary: 'replace the capabilities the operator declares for a pool',
        params: s.nameParam,
        body: s.poolCapabilitiesBody,
        response: { 200: s.poolAnswer },
      },
    },
    async (req) =>
      site.volumes.setPoolCapabilities(
        req.actor,
        (req.params as Name).name,
        (req.body as { capabilities: string[] }).capabilities,
      ),
  );
  api.delete('/pools/:name', { schema: { tags, params: s.nameParam } }, async (req, reply) => {
    site.volumes.deletePool(req.actor, (req.params as Name).name);
    return reply.code(204).send();
  });

  api.get(
    '/volumes',
    {
      schema: {
        tags,
        querystring: {
          type: 'object',
          additionalProperties: false,
          properties: { pool: { type: 'string' } },
        },
        response: { 200: s.list(s.volumeAnswer) },
      },
    },
    async (req) => site.volumes.listVolumes((req.query as { pool?: string }).pool),
  );
  api.post(
    '/volumes',
    { schema: { tags, body: s.createVolumeBody, response: { 201: s.volumeAnswer } } },
    async (req, reply) => {
      const b = req.body as { name: string; sizeBytes: number; pool?: string; policy?: string; vm?: string };
      const placement = { ...(b.policy ? { policy: b.policy } : {}), ...(b.vm ? { vm: b.vm } : {}) };
      return reply
        .code(201)
        .send(await site.volumes.createVolume(req.actor, b.name, b.sizeBytes, b.pool, placement));
    },
  );
  api.post(
    '/volumes/import',
    {
      schema: {
        tags,
        summary: 'import an image file into a new volume (a job)',
        body: s.importVolumeBody,
        response: { 202: s.jobAnswer },
      },
    },
    async (req, reply) =>
      reply
        .code(202)
        .send(
          site.volumes.importVolume(req.actor, req.body as Parameters<Site['volumes']['importVolume']>[1]),
        ),
  );
  api.get(
    '/volumes/:name',
    { schema: { tags, params: volumeParam, response: { 200: s.volumeAnswer } } },
    async (req) => site.volumes.volume((req.params as Name).name),
  );
  api.delete('/volumes/:name', { schema: { tags, params: volumeParam } }, async (req, reply) => {
    await site.volumes.deleteVolume(req.actor, (req.params as Name).name);
    return reply.code(204).send();
  });
  api.post(
    '/volumes/:name/resize',
    { schema: { tags, params: volumeParam, body: s.resizeVolumeBody, response: { 200: s.volumeAnswer } } },
    async (req) =>
      site.volumes.resizeVolume(
        req.actor,
        (req.params as Name).name,
        (req.body as { sizeBytes: number }).sizeBytes,
      ),
  );
  api.post(
    '/volumes/:name/clone',
    { schema: { tags, params: volumeParam, body: s.cloneVolumeBody, response: { 201: s.volumeAnswer } } },
    async (req, reply) => {
      const b = req.body as { snapshot: string; name: string };
      return reply
        .code(201)
        .send(await site.volumes.cloneVolume(req.actor, (req.params as Name).name, b.snapshot, b.name));
    },
  );
  api.post(
    '/volumes/:name/export',
    {
      schema: {
        tags,
        summary: 'export a volume or snapshot to an image file (a job)',
        params: volumeParam,
        body: s.exportVolumeBody,
        response: { 202: s.jobAnswer },
      },
    },
    async (req, reply) => {
      const b = req.body as { image: string; snapshot?: string; format?: string; force?: boolean };
      const source = b.snapshot ? `${(req.params as Name).name}@${b.snapshot}` : (req.params as Name).name;
      return reply.code(202).send(
        site.volumes.exportVolume(req.actor, {
          source,
          image: b.image,
          ...(b.format ? { format: b.format } : {}),
          ...(b.force ? { force: true } : {}),
        }),
      );
    },
  );

  registerBackupRoute(api, site, {
    path: '/volumes/:name/backup',
    kind: 'volume',
    tags,
    summary: 'back a volume up into a repository (a job)',
    params: volumeParam,
  });
  api.post(
    '/volumes/:name/move',
    {
      schema: {
        tags,
        summary: 'live storage migration: move a volume to another pool while it is in use (a job)',
        params: volumeParam,
        body: s.moveBody,
        response: { 202: s.jobAnswer },
      },
    },
    async (req, reply) => {
      const b = req.body as { pool: string; keepSource?: boolean };
      const name = (req.params as Name).name;
      return reply
        .code(202)
        .send(site.volumes.moveVolume(req.actor, name, b.pool, b.keepSource ? { keepSource: true } : {}));
    },
  );
  api.post(
    '/repositories/verify',
    {
      schema: {
        tags,
        summary:
          "verify a repository's snapshots, all or a rolling slice (a job; damage fails it, naming snapshots and offsets)",
        body: s.verifyRepositoryBody,
        response: { 202: s.jobAnswer },
      },
    },
    async (req, reply) => {
      const b = req.body as { repo: string; passphraseFile?: string; snapshots?: string[]; rolling?: number };
      return reply.code(202).send(
        site.backups.verifyRepository(req.actor, {
          ...Site.repoAccess(b.repo, b.passphraseFile),
          ...(b.snapshots ? { snapshots: b.snapshots } : {}),
          ...(b.rolling !== undefined ? { rolling: b.rolling } : {}),
        }),
      );
    },
  );
  api.post(
    '/repositories/gc',
    {
      schema: {
        tags,
        summary: 'delete chunks no snapshot uses (a job; safe while backups run)',
        body: s.gcRepositoryBody,
        response: { 202: s.jobAnswer },
      },
    },
    async (req, reply) => {
      const b = req.body as { repo: string; passphraseFile?: string; graceSeconds?: number };
      return reply.code(202).send(
        site.backups.gcRepository(req.actor, {
          ...Site.repoAccess(b.repo, b.passphraseFile),
          ...(b.graceSeconds !== undefined ? { graceMs: b.graceSeconds * 1000 } : {}),
        }),
      );
    },
  );
  api.post(
    '/volumes/:name/rollback',
    {
      schema: {
        tags,
        summary:
          'quick rollback: put a volume back to its newest backup, rewriting only what changed since (a job)',
        params: volumeParam,
        body: s.rollbackBody,
        response: { 202: s.jobAnswer },
      },
    },
    async (req, reply) => {
      const b = req.body as { repo: string; passphraseFile?: string; snapshot: string };
      return reply.code(202).send(
        site.backups.rollback(req.actor, {
          ...Site.repoAccess(b.repo, b.passphraseFile),
          snapshot: b.snapshot,
          volume: (req.params as Name).name,
        }),
      );
    },
  );
  api.post(
    '/volumes/restore',
    {
      schema: {
        tags,
        summary: "restore a snapshot's disk into a new volume (a job)",
        body: s.restoreVolumeBody,
        response: { 202: s.jobAnswer },
      },
    },
    async (req, reply) => {
      const b = req.body as {
        repo: string;
        passphraseFile?: string;
        snapshot: string;
        disk?: number;
        name: string;
        pool?: string;
      };
      return reply.code(202).send(
        site.backups.restoreToVolume(req.actor, {
          ...Site.repoAccess(b.repo, b.passphraseFile),
          snapshot: b.snapshot,
          name: b.name,
          ...(b.disk !== undefined ? { disk: b.disk } : {}),
          ...(b.pool ? { pool: b.pool } : {}),
        }),
      );
    },
  );
  api.get(
    '/volumes/:name/snapshots',
    { schema: { tags, params: volumeParam, response: { 200: s.list(s.snapshotAnswer) } } },
    async (req) => site.volumes.listSnapshots((req.params as Name).name),
  );
  api.post(
    '/volumes/:name/snapshots',
    {
      schema: {
        tags,
        summary: 'take a snapshot (a job)',
        params: volumeParam,
        body: s.createSnapshotBody,
        response: { 202: s.jobAnswer },
      },
    },
    async (req, reply) => {
      const b = req.body as { name: string; bitmap?: string };
      return reply
        .code(202)
        .send(site.volumes.createSnapshot(req.actor, (req.params as Name).name, b.name, b.bitmap));
    },
  );
  api.delete(
    '/volumes/:name/snapshots/:snapshot',
    { schema: { tags, params: snapshotParam } },
    async (req, reply) => {
      const p = req.params as Snap;
      await site.volumes.deleteSnapshot(req.actor, p.name, p.snapshot);
      return reply.code(204).send();
    },
  );
  api.post(
    '/volumes/:name/snapshots/:snapshot/revert',
    { schema: { tags, params: snapshotParam } },
    async (req, reply) => {
      const p = req.params as Snap;
      site.volumes.revertSnapshot(req.actor, p.name, p.snapshot);
      return reply.code(204).send();
    },
  );
  const bitmapParam = {
    type: 'object',
    required: ['name', 'bitmap'],
    properties: { name: { type: 'string' }, bitmap: { type: 'string' } },
  } as const;
  type Bitmap = { name: string; bitmap: string };
  api.get(
    '/volumes/:name/bitmaps',
    { schema: { tags, params: volumeParam, response: { 200: s.list(s.bitmapAnswer) } } },
    async (req) => site.volumes.listBitmaps((req.params as Name).name),
  );
  api.post(
    '/volumes/:name/bitmaps',
    {
      schema: {
        tags,
        summary: "start tracking a volume's changes",
        params: volumeParam,
        body: s.addBitmapBody,
        response: { 201: s.bitmapAnswer },
      },
    },
    async (req, reply) => {
      const b = req.body as { name: string; granularity?: number };
      return reply
        .code(201)
        .send(site.volumes.addBitmap(req.actor, (req.params as Name).name, b.name, b.granularity));
    },
  );
  api.delete(
    '/volumes/:name/bitmaps/:bitmap',
    { schema: { tags, params: bitmapParam } },
    async (req, reply) => {
      const p = req.params as Bitmap;
      site.volumes.removeBitmap(req.actor, p.name, p.bitmap);
      return reply.code(204).send();
    },
  );
  api.post(
    '/volumes/:name/bitmaps/:bitmap/clear',
    { schema: { tags, summary: 'mark everything clean (and trusted again)', params: bitmapParam } },
    async (req, reply) => {
      const p = req.params as Bitmap;
      site.volumes.clearBitmap(req.actor, p.name, p.bitmap);
      return reply.code(204).send();
    },
  );
}
