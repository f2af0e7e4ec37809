import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { Site } from '../orchestration/index.js';
import { ApiClient } from './client.js';
import { userSchemaCodeCache } from './schema-code-cache.js';
import { buildApi } from './server.js';

/** A site opened in this process for one command, and a client of its API. */
export interface LocalSite {
  client: ApiClient;
  site: Site;
  /** Stops the API and closes the site (jobs still running are cancelled). */
  close(): Promise<void>;
}

/**
 * `--data DIR`: the CLI opens the site of DIR in its own process (no daemon may hold it) and
 * speaks to it through the same API as to a daemon, over a unix socket private to the site's
 * user (DATA/run/). So an offline command runs the same checks, jobs and audit as the daemon's;
 * the NBD exports are on the site's unix socket only (no TCP listener).
 */
export async function openLocalSite(dataDir: string): Promise<LocalSite> {
  const site = await Site.open({ dataDir, nbdListen: 'none' });
  const socketPath = join(site.dataDir, 'run', `cli-${process.pid}.sock`);
  try {
    // Two or three of the routes serve one command: compile their schemas when asked (decision 0013).
    const app = await buildApi(site, { lazySchemas: userSchemaCodeCache(), openapi: false });
    rmSync(socketPath, { force: true });
    await app.listen({ path: socketPath });
    let closing: Promise<void> | undefined;
    return {
      site,
      client: new ApiClient({ url: 'http://localhost', token: site.apiToken(), socketPath }),
      close: () =>
        (closing ??= (async () => {
          try {
            await app.close();
          } finally {
            rmSync(socketPath, { force: true });
            await site.close();
          }
        })()),
    };
  } catch (err) {
    rmSync(socketPath, { force: true });
    await site.close();
    throw err;
  }
}
