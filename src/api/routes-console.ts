import type { FastifyInstance } from 'fastify';
import type { ServerResponse } from 'node:http';
import { open, stat } from 'node:fs/promises';
import { Site, type Job, type JobLogLine, type SiteEvent } from '../orchestration/index.js';
import * as s from './schemas.js';

/** How often a stream sends what changed: job updates within it are coalesced, one per job. */
const FLUSH_MS = 100;
/** What a stream may hold unsent before its client is dropped. */
const MAX_BUFFERED = 4 * 1024 * 1024;
/** A comment line this often keeps proxies and the browser from dropping an idle stream. */
const HEARTBEAT_MS = 15_000;
/** How often the streams carry an RPO sample of every replication group (one sampler for all). */
const RPO_SAMPLE_MS = 2_000;
/** How often a console-log stream looks at the file, and the most it reads at once. */
const CONSOLE_POLL_MS = 250;
const CONSOLE_TAIL_BYTES = 64 * 1024;

/** One replication group's RPO at a moment, as the `rpo` event carries it. */
export interface RpoSample {
  name: string;
  role: 'source' | 'target';
  peer: string;
  state?: string;
  link?: string;
  paused: boolean;
  /** Age in seconds of the newest checkpoint the replica holds; absent before the first. */
  rpoSeconds?: number;
  objectiveSeconds?: number;
  lagRecords?: number;
  throughputBytesPerSecond?: number;
}

function rpoSamples(site: Site, now: number): RpoSample[] {
  return site.replication.list().map((g) => {
    const newest = g.target?.newestCheckpoint?.time;
    const rpo =
      g.source?.rpoSeconds ??
      (newest && !g.takenOver ? Math.max(0, (now - Date.parse(newest)) / 1000) : undefined);
    return {
      name: g.name,
      role: g.role,
      peer: g.peer,
      ...(g.source ? { state: g.source.state, link: g.source.link } : {}),
      ...(g.target ? { link: g.target.link } : {}),
      ...(g.takenOver ? { state: 'taken over' } : {}),
      paused: g.paused,
      ...(rpo !== undefined ? { rpoSeconds: Math.round(rpo * 1000) / 1000 } : {}),
      ...(g.rpoObjectiveSeconds !== undefined ? { objectiveSeconds: g.rpoObjectiveSeconds } : {}),
      ...(g.source
        ? { lagRecords: g.source.lag.records, throughputBytesPerSecond: g.source.throughputBytesPerSecond }
        : {}),
    };
  });
}

function sseHead(res: ServerResponse): void {
  res.writeHead(200, {
    'content-type': 'text/event-stream',
    'cache-control': 'no-store',
    connection: 'keep-alive',
  });
}

/**
 * What the console reads beyond the rest of the API: one live stream of everything that changes
 * (jobs, job log lines, events), and the repositories the site uses with their snapshots.
 */
export function registerConsoleRoutes(api: FastifyInstance, site: Site): void {
  // One sampler for every stream, running only while a stream is open and a group exists: an
  // `rpo` event ({time, groups}) every RPO_SAMPLE_MS, computed once whatever the number of browsers.
  const rpoStreams = new Set<(chunk: string) => void>();
  let rpoTimer: NodeJS.Timeout | undefined;
  const sampleRpo = () => {
    const now = Date.now();
    const groups = rpoSamples(site, now);
    if (!groups.length) return;
    const chunk = `event: rpo\ndata: ${JSON.stringify({ time: new Date(now).toISOString(), groups })}\n\n`;
    for (const send of rpoStreams) send(chunk);
  };
  const followRpo = (send: (chunk: string) => void) => {
    rpoStreams.add(send);
    rpoTimer ??= setInterval(sampleRpo, RPO_SAMPLE_MS).unref();
    return () => {
      rpoStreams.delete(send);
      if (!rpoStreams.size && rpoTimer) {
        clearInterval(rpoTimer);
        rpoTimer = undefined;
      }
    };
  };

  api.get(
    '/events/stream',
    {
      schema: {
        tags: ['events'],
        summary:
          'server-sent events, one stream for everything that changes: `job` (a job, at most every 100 ms each), `log` ({job, line}: a line of a job’s log), `event` (an event of the audit log) and `rpo` ({time, groups}: every replication group’s RPO, every 2 s while there is one)',
      },
    },
    async (_req, reply) => {
      reply.hijack();
      const res = reply.raw;
      sseHead(res);
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
      const onRpo = (chunk: string) => {
        lines.push(chunk);
        later();
      };
      const beat = setInterval(() => res.write(': beat\n\n'), HEARTBEAT_MS);
      site.jobs.on('update', onJob);
      site.jobs.on('log', onLog);
      site.events.on('event', onEvent);
      const unfollowRpo = followRpo(onRpo);
      res.on('close', () => {
        unfollowRpo();
        clearInterval(beat);
        if (timer) clearTimeout(timer);
        site.jobs.off('update', onJob);
        site.jobs.off('log', onLog);
        site.events.off('event', onEvent);
      });
    },
  );

  api.get(
    '/vms/:name/console-log/stream',
    {
      schema: {
        tags: ['compute'],
        summary:
          "server-sent events: the VM's serial console log as it is written: `text` (the last 64 KiB, at the start and whenever the file was replaced or grew faster than read) then `append` (what was added), each a JSON string",
        params: s.nameParam,
      },
    },
    async (req, reply) => {
      const path = site.compute.consoleLogPath((req.params as { name: string }).name); // 404 first
      reply.hijack();
      const res = reply.raw;
      sseHead(res);
      res.write(': haven\n\n');
      let offset = -1; // nothing sent yet
      let closed = false;
      let timer: NodeJS.Timeout | undefined;
      /** Reads [from, from+length) up to its last whole UTF-8 character. */
      const read = async (from: number, length: number): Promise<{ text: string; bytes: number }> => {
        const fh = await open(path, 'r');
        try {
          const b = Buffer.alloc(length);
          const { bytesRead } = await fh.read(b, 0, length, from);
          // A character whose last bytes are not written yet waits for the next look.
          let end = bytesRead;
          let k = end - 1;
          while (k >= 0 && end - k < 4 && (b[k]! & 0xc0) === 0x80) k--;
          if (k >= 0 && b[k]! >= 0xc0 && end - k < (b[k]! >= 0xf0 ? 4 : b[k]! >= 0xe0 ? 3 : 2)) end = k;
          return { text: b.subarray(0, end).toString('utf8'), bytes: end };
        } finally {
          await fh.close();
        }
      };
      // Memory is bounded: at most CONSOLE_TAIL_BYTES read per look, whatever the guest writes.
      const look = async () => {
        timer = undefined;
        try {
          const size = await stat(path).then(
            (st) => st.size,
            () => 0,
          );
          if (closed) return;
          if (offset < 0 || size < offset || size - offset > CONSOLE_TAIL_BYTES) {
            const from = Math.max(0, size - CONSOLE_TAIL_BYTES);
            const r = size ? await read(from, size - from) : { text: '', bytes: 0 };
            offset = from + r.bytes;
            if (!closed) res.write(`event: text\ndata: ${JSON.stringify(r.text)}\n\n`);
          } else if (size > offset) {
            const r = await read(offset, size - offset);
            offset += r.bytes;
            if (!closed && r.text) res.write(`event: append\ndata: ${JSON.stringify(r.text)}\n\n`);
          }
          if (res.writableLength > MAX_BUFFERED) res.destroy();
        } catch {
          // the file went away between stat and read: looked at again next time
        }
        if (!closed) timer = setTimeout(() => void look(), CONSOLE_POLL_MS);
      };
      const beat = setInterval(() => res.write(': beat\n\n'), HEARTBEAT_MS);
      res.on('close', () => {
        closed = true;
        clearInterval(beat);
        if (timer) clearTimeout(timer);
      });
      void look();
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
