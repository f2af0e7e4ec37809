import type { FastifyInstance } from 'fastify';
import { Site } from '../orchestration/index.js';
import * as s from './schemas.js';

/** POST `path` (…/:name/backup): backs the named VM or volume up (a job). */
export function registerBackupRoute(
  api: FastifyInstance,
  site: Site,
  route: { path: string; kind: 'vm' | 'volume'; tags: string[]; summary: string; params: object },
): void {
  api.post(
    route.path,
    {
      schema: {
        tags: route.tags,
        summary: route.summary,
        params: route.params,
        body: s.backupBody,
        response: { 202: s.jobAnswer },
      },
    },
    async (req, reply) => {
      const { repo, passphraseFile, ...opts } = req.body as {
        repo: string;
        passphraseFile?: string;
        transport?: string;
        preFreezeHook?: string;
        postThawHook?: string;
        requireAppConsistent?: boolean;
        full?: boolean;
      };
      const name = (req.params as { name: string }).name;
      const target = route.kind === 'vm' ? { vm: name } : { volume: name };
      return reply
        .code(202)
        .send(site.backups.backup(req.actor, target, Site.repoAccess(repo, passphraseFile), opts));
    },
  );
}
