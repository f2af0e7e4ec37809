import type { FastifyInstance } from 'fastify';
import { Site, type Job, type JobLogLine, type SiteEvent } from '../orchestration/index.js';
import * as s from './schemas.js';

/** How often a stream sends what changed: job updates within it are coalesced, one per job. */
const FLUSH_MS = 100;
/** What a stream may hold unsent before its client is dropped. */
const MAX_BUFFERED = 4 * 1024 * 1024;
/** A comment line this often keeps proxies and the browser from dropping an idle stream. */
const HEARTBEAT_MS = 15_000;

/**
 * What the console reads beyond the rest of the API: one live stream of everything that changes
 * (jobs, job log lines, events), and the repositories the site uses with their snapshots.
 */
export function registerConsoleRoutes(api: FastifyInstance, site: Site): void {
  api.get(
    '/events/stream',
    {
      schema: {
        tags: ['events'],
        summary:
          'server-sent events, one stream for everything that changes: `job` (a job, at most every 100 ms each), `log` ({job, line}: a line of a job’s log) and `event` (an event of the audit log)',
      },
    },
    async (_req, reply) => {
      reply.hijack();
      const res = reply.raw;
      res.writeHead(200, {
        'content-type': 'text/event-stream',
        'cache-control': 'no-store',
        connection: 'keep-alive',
      });
      res.write(': haven\n\n');
      const jobs = new Map<string, Job>();
      let lines: string[] = [];
      let timer: NodeJS.Timeout | undefined;
      const flush = () => {
        timer = undefined;
        let out = lines.join('');
        for (const j of jobs.values()) out += `event: job\ndata: ${JSON.stringify(j)}\n\n`;
        jobs.clear();
        lines = [];
        if (!out) return;
        // A browser that does not read (a stopped tab, a stalled link) is dropped rather than
        // buffered for: EventSource reconnects and the console reads the state afresh.
        if (res.writableLength > MAX_BUFFERED) res.destroy();
        else res.write(out);
      };
      const later = () => (timer ??= setTimeout(flush, FLUSH_MS));
      const onJob = (j: Job) => {
        jobs.set(j.id, j);
        // A job that ends is sent at once after what came before it: its log lines first.
        if (j.state !== 'running') flush();
        else later();
      };
      const onLog = (job: string, line: JobLogLine) => {
        lines.push(`event: log\ndata: ${JSON.stringify({ job, line })}\n\n`);
        later();
      };
      const onEvent = (e: SiteEvent) => {
        lines.push(`event: event\ndata: ${JSON.stringify(e)}\n\n`);
        later();
      };
      const beat = setInterval(() => res.write(': beat\n\n'), HEARTBEAT_MS);
      site.jobs.on('update', onJob);
      site.jobs.on('log', onLog);
      site.events.on('event', onEvent);
      res.on('close', () => {
        clearInterval(beat);
        if (timer) clearTimeout(timer);
        site.jobs.off('update', onJob);
        site.jobs.off('log', onLog);
        site.events.off('event', onEvent);
      });
    },
  );

  const tags = ['repositories'];
  api.get(
    '/repositories',
    {
      schema: {
        tags,
        summary:
          'the repositories the site uses (its backups went there, its repository jobs ran there), with their file systems’ space',
        response: { 200: s.list(s.open('a repository: path, fs {totalBytes, freeBytes} or error')) },
      },
    },
    async () => site.repositories(),
  );
  api.get(
    '/repositories/snapshots',
    {
      schema: {
        tags,
        summary: "a repository's snapshots (backups), oldest first, and those whose manifest is damaged",
        querystring: {
          type: 'object',
          additionalProperties: false,
          required: ['repo'],
          properties: {
            repo: {
              type: 'string',
              pattern: '^/',
              description: "the repository's directory on the site's host",
            },
            passphraseFile: { type: 'string', pattern: '^/' },
          },
        },
        response: { 200: s.open('{snapshots: [...], damaged: [...]}') },
      },
    },
    async (req) => {
      const q = req.query as { repo: string; passphraseFile?: string };
      return site.backups.snapshotsIn(Site.repoAccess(q.repo, q.passphraseFile));
    },
  );
}
