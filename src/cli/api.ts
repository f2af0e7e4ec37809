import { existsSync, readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join, resolve } from 'node:path';
import type { Command } from 'commander';
import { ApiClient, type ApiEndpoint } from '../api/client.js';
import { HavenError, defaultDataDir, processStartTime, setDefaultLogLevel } from '../common/index.js';
import { noteConnection } from './hints.js';
import { localSiteModule } from './lazy.js';

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
      "file holding the API token, the site's or a user's (default: $HAVEN_TOKEN, the config file, or the local site)",
    )
    .option('--ca-file <file>', 'CA certificate of an https API');
}

/**
 * Finds the daemon and its token, first match wins: flags; $HAVEN_API with $HAVEN_TOKEN or
 * $HAVEN_TOKEN_FILE; the local site in $HAVEN_DATA when it is set (its api.json and api-token:
 * a site started with HAVEN_DATA is found with the same HAVEN_DATA, whatever the config file
 * says); the config file ($HAVEN_CONFIG or ~/.config/haven/cli.json: { "api": url,
 * "tokenFile": path, "caFile": path }); the local site in the default data directory.
 */
export function connect(o: ApiOpts): ApiClient {
  const configPath = process.env.HAVEN_CONFIG ?? join(homedir(), '.config', 'haven', 'cli.json');
  const config = existsSync(configPath)
    ? (JSON.parse(readFileSync(configPath, 'utf8')) as { api?: string; tokenFile?: string; caFile?: string })
    : {};
  const remote = o.api ?? process.env.HAVEN_API ?? (process.env.HAVEN_DATA ? undefined : config.api);
  // The config file's token and CA go with the config file's API only.
  const fromConfig = !o.api && !process.env.HAVEN_API && remote !== undefined;
  const local = defaultDataDir();
  const url = remote ?? localSite(local);
  const tokenFile =
    o.tokenFile ??
    process.env.HAVEN_TOKEN_FILE ??
    (fromConfig ? config.tokenFile : undefined) ??
    join(local, 'api-token');
  const token = o.tokenFile
    ? read(tokenFile, 'token')
    : (process.env.HAVEN_TOKEN ?? read(tokenFile, 'token'));
  noteConnection(
    url,
    o.tokenFile
      ? `--token-file ${tokenFile}`
      : process.env.HAVEN_TOKEN !== undefined
        ? '$HAVEN_TOKEN'
        : process.env.HAVEN_TOKEN_FILE
          ? `$HAVEN_TOKEN_FILE ${tokenFile}`
          : tokenFile,
  );
  const caFile = o.caFile ?? process.env.HAVEN_CA_FILE ?? (fromConfig ? config.caFile : undefined);
  const endpoint: ApiEndpoint = { url, token, ...(caFile ? { ca: read(caFile, 'CA') } : {}) };
  return new ApiClient(endpoint);
}

/**
 * The one path of every site command: with `--data DIR` the site of DIR opened in this process
 * (no daemon may hold it; closed when `fn` ends), else the daemon `connect` finds. Either way the
 * command speaks the same API, so offline work gets the daemon's checks, jobs and audit.
 */
export async function withSite<T>(
  o: ApiOpts & { data?: string },
  fn: (c: ApiClient) => Promise<T>,
): Promise<T> {
  if (!o.data) return fn(connect(o));
  setDefaultLogLevel('warn'); // the site's "open" and "listening" lines are not the command's output
  const local = await (await localSiteModule()).openLocalSite(o.data);
  try {
    return await fn(local.client);
  } finally {
    await local.close();
  }
}

/**
 * The URL of the daemon serving data directory `dir`, from its api.json; a clear error naming
 * the directory (and where it came from) when no daemon runs there.
 */
function localSite(dir: string): string {
  const where = process.env.HAVEN_DATA ? `${dir} ($HAVEN_DATA)` : `${dir} (the default data directory)`;
  const start = `start one with "haven serve --data ${dir}", or give --api URL`;
  const f = join(dir, 'api.json');
  let api: { url: string; pid?: number; startTime?: string };
  try {
    api = JSON.parse(readFileSync(f, 'utf8')) as typeof api;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT')
      throw new HavenError('NOT_FOUND', `no site daemon runs on ${where}: it has no api.json; ${start}`);
    throw new HavenError('NOT_FOUND', `cannot read ${f}: ${(err as Error).message}; ${start}`);
  }
  if (api.pid !== undefined && !daemonAlive(api.pid, api.startTime))
    throw new HavenError(
      'NOT_FOUND',
      `no site daemon runs on ${where}: its api.json names process ${api.pid}, which has ended; ${start}`,
    );
  return api.url;
}

/** That process, started at that time, still runs (a reused pid is another process). */
function daemonAlive(pid: number, startTime: string | undefined): boolean {
  try {
    process.kill(pid, 0);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EPERM') return false;
  }
  const now = processStartTime(pid);
  return startTime === undefined || now === undefined || now === startTime;
}

/**
 * An encrypted repository's passphrase for an operation the site daemon runs: a file it can read
 * (the passphrase itself never crosses the API, nor sits in the site database). This CLI's
 * $HAVEN_PASSPHRASE cannot reach the daemon, so when it is set without --passphrase-file the user
 * is told so, rather than left to wonder why the daemon finds no passphrase.
 */
export function daemonPassphraseFile(passphraseFile: string | undefined): { passphraseFile?: string } {
  if (passphraseFile) return { passphraseFile: resolve(passphraseFile) };
  if (process.env.HAVEN_PASSPHRASE !== undefined)
    process.stderr.write(
      'haven: note: $HAVEN_PASSPHRASE is not passed to the site daemon (it uses its own $HAVEN_PASSPHRASE, ' +
        'if any); to give it this passphrase, put it in a file the daemon can read (mode 0600) and add ' +
        '--passphrase-file FILE\n',
    );
  return {};
}

function read(path: string, what: string): string {
  try {
    return readFileSync(path, 'utf8').trim();
  } catch (err) {
    throw new HavenError('NOT_FOUND', `cannot read the API ${what} file ${path}: ${(err as Error).message}`);
  }
}
