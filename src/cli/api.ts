import { existsSync, readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import type { Command } from 'commander';
import { ApiClient, type ApiEndpoint } from '../api/client.js';
import { HavenError, defaultDataDir } from '../common/index.js';
import type { Job } from '../orchestration/index.js';
import { bytes } from './args.js';

export interface ApiOpts {
  api?: string;
  tokenFile?: string;
  caFile?: string;
  json?: boolean;
}

/** The options every command that talks to a site daemon has. */
export function apiOptions(cmd: Command): Command {
  return cmd
    .option('--api <url>', "the site's API (default: $HAVEN_API, the config file, or the local site)")
    .option(
      '--token-file <file>',
      'file holding the API token (default: $HAVEN_TOKEN, the config file, or the local site)',
    )
    .option('--ca-file <file>', 'CA certificate of an https API');
}

/**
 * Finds the daemon and its token, first match wins: flags; $HAVEN_API with $HAVEN_TOKEN or
 * $HAVEN_TOKEN_FILE; the config file ($HAVEN_CONFIG or ~/.config/haven/cli.json:
 * { "api": url, "tokenFile": path, "caFile": path }); the local site in $HAVEN_DATA or the
 * default data directory (its api.json and api-token).
 */
export function connect(o: ApiOpts): ApiClient {
  const configPath = process.env.HAVEN_CONFIG ?? join(homedir(), '.config', 'haven', 'cli.json');
  const config = existsSync(configPath)
    ? (JSON.parse(readFileSync(configPath, 'utf8')) as { api?: string; tokenFile?: string; caFile?: string })
    : {};
  const local = defaultDataDir();
  const localApi = () => {
    const f = join(local, 'api.json');
    if (!existsSync(f))
      throw new HavenError(
        'NOT_FOUND',
        `no site daemon found: ${f} does not exist (start one with "haven serve", or give --api)`,
      );
    return (JSON.parse(readFileSync(f, 'utf8')) as { url: string }).url;
  };
  const url = o.api ?? process.env.HAVEN_API ?? config.api ?? localApi();
  const tokenFile =
    o.tokenFile ?? process.env.HAVEN_TOKEN_FILE ?? config.tokenFile ?? join(local, 'api-token');
  const token = o.tokenFile
    ? read(tokenFile, 'token')
    : (process.env.HAVEN_TOKEN ?? read(tokenFile, 'token'));
  const caFile = o.caFile ?? process.env.HAVEN_CA_FILE ?? config.caFile;
  const endpoint: ApiEndpoint = { url, token, ...(caFile ? { ca: read(caFile, 'CA') } : {}) };
  return new ApiClient(endpoint);
}

function read(path: string, what: string): string {
  try {
    return readFileSync(path, 'utf8').trim();
  } catch (err) {
    throw new HavenError('NOT_FOUND', `cannot read the API ${what} file ${path}: ${(err as Error).message}`);
  }
}

/**
 * Follows a job to its end, drawing a progress bar on a terminal; returns the finished job, or
 * throws with the job's error when it failed or was cancelled.
 */
export async function followJob(client: ApiClient, job: Job, o: { quiet?: boolean } = {}): Promise<Job> {
  const tty = process.stderr.isTTY && !o.quiet;
  let last = job;
  await client.stream(`/jobs/${job.id}/watch`, (data) => {
    last = data as Job;
    if (tty) process.stderr.write(`\r${progressLine(last)}\x1b[K`);
  });
  if (tty) process.stderr.write('\n');
  if (last.state === 'running') last = await client.get<Job>(`/jobs/${job.id}`);
  if (last.state !== 'succeeded')
    throw new HavenError(
      last.state === 'cancelled' ? 'CANCELLED' : 'INTERNAL',
      `job ${last.id} (${last.kind} ${last.target}) ${last.state}: ${last.error ?? 'no reason given'}`,
    );
  return last;
}

export function progressLine(j: Job): string {
  const p = j.progress;
  const frac = p.totalBytes > 0 ? Math.min(p.doneBytes / p.totalBytes, 1) : j.state === 'succeeded' ? 1 : 0;
  const width = 30;
  const filled = Math.round(frac * width);
  const bar = '#'.repeat(filled) + '-'.repeat(width - filled);
  const rate = p.rateBytesPerSecond ? ` ${bytes(p.rateBytesPerSecond)}/s` : '';
  const eta = p.etaSeconds !== undefined ? ` ETA ${p.etaSeconds}s` : '';
  return `${j.kind} ${j.target} [${bar}] ${(frac * 100).toFixed(0).padStart(3)}% ${bytes(p.doneBytes)}/${bytes(p.totalBytes)}${rate}${eta} ${j.state}`;
}
