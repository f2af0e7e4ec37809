import { rmSync } from 'node:fs';
import { join } from 'node:path';
import type { FastifyInstance } from 'fastify';
import { HavenError, logger, processStartTime, writeFileAtomic } from '../common/index.js';
import { Site, type SiteOptions } from '../orchestration/index.js';
import { buildApi, type ApiOptions } from './server.js';

const log = logger('daemon');

export interface SiteDaemon {
  site: Site;
  /** The API's base URL, e.g. http://127.0.0.1:8710 */
  url: string;
  stop(): Promise<void>;
}

/**
 * `haven serve`: a site (storage service, compute service, jobs, events) with its REST API.
 * Where the API listens is written to `<data>/api.json` beside the token (`<data>/api-token`),
 * so that a CLI of the same user finds a local site without flags.
 */
export async function startSiteDaemon(site: SiteOptions, api: ApiOptions): Promise<SiteDaemon> {
  const s = await Site.open(site);
  let app: FastifyInstance;
  let url: string;
  try {
    app = await buildApi(s, {
      ...(api.tls ? { tls: api.tls } : {}),
      ...(api.requestTimeoutMs !== undefined ? { requestTimeoutMs: api.requestTimeoutMs } : {}),
    });
    await app.listen({ host: api.host, port: api.port }).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'EADDRINUSE' && err.code !== 'EACCES' && err.code !== 'EADDRNOTAVAIL') throw err;
      throw new HavenError(
        err.code === 'EADDRINUSE' ? 'CONFLICT' : 'INVALID_ARGUMENT',
        `the REST API cannot listen on ${api.host}:${api.port}: ${err.code === 'EADDRINUSE' ? 'the port is in use (another site?)' : err.message}; give another with --listen HOST:PORT or $HAVEN_LISTEN`,
      );
    });
    const addr = app.server.address();
    const port = typeof addr === 'object' && addr ? addr.port : api.port;
    const host = api.host.includes(':') ? `[${api.host}]` : api.host;
    url = `${api.tls ? 'https' : 'http'}://${host === '0.0.0.0' ? '127.0.0.1' : host}:${port}`;
  } catch (err) {
    await s.close();
    throw err;
  }
  s.peers.setApiUrl(url);
  const endpointFile = join(s.dataDir, 'api.json');
  // The pid with its start time names this process, so the CLI can tell a live daemon from a
  // dead one's leftover file even once the pid has been reused.
  const startTime = processStartTime(process.pid);
  writeFileAtomic(
    endpointFile,
    JSON.stringify({ url, pid: process.pid, ...(startTime ? { startTime } : {}), site: s.name }, null, 2) +
      '\n',
  );
  log.info({ site: s.name, url, dataDir: s.dataDir }, 'site daemon serving');
  let stopping: Promise<void> | undefined;
  return {
    site: s,
    url,
    stop: () =>
      (stopping ??= (async () => {
        await app.close();
        rmSync(endpointFile, { force: true });
        await s.close();
        log.info({ site: s.name }, 'site daemon stopped');
      })()),
  };
}
