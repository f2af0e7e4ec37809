import { readFileSync } from 'node:fs';
import { isAbsolute } from 'node:path';
import { HavenError, errorMessage, invalidArgument, logger } from '../../common/index.js';
import {
  HttpProvider,
  ProviderPool,
  checkName,
  checkProviderUrl,
  type PoolInfo,
  type StorageService,
} from '../../storage/index.js';
import { now, type Db } from './database.js';

const log = logger('provider-pools');

interface Row {
  name: string;
  url: string;
  token_file: string;
  registered_at: string;
}

/**
 * Pools served by out-of-process storage providers (the HTTP contract, docs/provider-api.md): the
 * registrations, kept in the site database (name, URL, the path of the token file — never the
 * token), brought into the storage service at start and asked again periodically.
 */
export class ProviderPools {
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly db: Db,
    private readonly storage: StorageService,
  ) {}

  /** Every registered pool, added to the storage and asked for its state (one that does not answer is listed as failed). */
  async loadAll(): Promise<void> {
    const rows = this.db.prepare('SELECT * FROM provider_pools ORDER BY name').all() as Row[];
    await Promise.all(
      rows.map(async (r) => {
        let pool: ProviderPool;
        try {
          pool = new ProviderPool(
            r.name,
            new HttpProvider(r.url, readToken(r.token_file)),
            r.url,
            r.registered_at,
          );
        } catch (err) {
          log.error({ pool: r.name, url: r.url, err: errorMessage(err) }, 'provider pool cannot be opened');
          return;
        }
        await pool
          .refresh()
          .catch((err) =>
            log.warn(
              { pool: r.name, url: r.url, err: errorMessage(err) },
              'storage provider does not answer',
            ),
          );
        try {
          this.storage.addProviderPool(pool);
        } catch (err) {
          log.error({ pool: r.name, err: errorMessage(err) }, 'provider pool not added');
        }
      }),
    );
  }

  /**
   * Registers a provider's pool: it must answer `describe` in a version this Haven speaks, accept
   * the token and list its volumes, before anything is stored. Returns the pool.
   */
  async register(name: string, opts: { url: string; tokenFile: string }): Promise<PoolInfo> {
    checkName('pool', name);
    const url = checkProviderUrl(opts.url);
    if (!isAbsolute(opts.tokenFile))
      throw invalidArgument(
        `token file ${opts.tokenFile} must be an absolute path (the CLI resolves a relative one)`,
      );
    const token = readToken(opts.tokenFile);
    if (this.storage.listPools().some((p) => p.name === name))
      throw new HavenError('CONFLICT', `pool ${name} already exists`);
    const registeredAt = now();
    const pool = new ProviderPool(name, new HttpProvider(url, token), url, registeredAt);
    try {
      await pool.refresh();
    } catch (err) {
      const e = err instanceof HavenError ? err : new HavenError('IO', errorMessage(err));
      // The operator's input (the address, the token) is what is wrong: say so as such.
      const code = e.code === 'UNSUPPORTED' || e.code === 'PROTOCOL' ? e.code : 'INVALID_ARGUMENT';
      throw new HavenError(code, `cannot register pool ${name}: ${e.message}`);
    }
    this.storage.addProviderPool(pool); // name clashes refused here, before the row exists
    try {
      this.db
        .prepare('INSERT INTO provider_pools (name, url, token_file, registered_at) VALUES (?, ?, ?, ?)')
        .run(name, url, opts.tokenFile, registeredAt);
    } catch (err) {
      this.storage.removeProviderPool(name);
      throw err;
    }
    log.info({ pool: name, url }, 'provider pool registered');
    return pool.info();
  }

  isProviderPool(name: string): boolean {
    return this.storage.providerPool(name) !== undefined;
  }

  /** Forgets a provider pool that holds no volumes. */
  unregister(name: string): void {
    this.storage.removeProviderPool(name);
    this.db.prepare('DELETE FROM provider_pools WHERE name = ?').run(name);
  }

  /** Asks every provider again; `after` runs once all answered (or failed). */
  async refreshAll(): Promise<void> {
    const rows = this.db.prepare('SELECT name FROM provider_pools').all() as { name: string }[];
    await Promise.all(
      rows.map((r) =>
        this.storage
          .providerPool(r.name)
          ?.refresh()
          .catch((err) =>
            log.warn({ pool: r.name, err: errorMessage(err) }, 'storage provider does not answer'),
          ),
      ),
    );
  }

  /** Refreshes every `intervalMs` (health, capacity, volumes made elsewhere), then calls `after`. */
  watch(intervalMs: number, after: () => void): void {
    this.timer = setInterval(() => void this.refreshAll().then(after), intervalMs);
    this.timer.unref();
  }

  close(): void {
    if (this.timer) clearInterval(this.timer);
  }
}

function readToken(file: string): string {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw invalidArgument(
      `token file ${file} cannot be read: ${(err as NodeJS.ErrnoException).code ?? errorMessage(err)}`,
    );
  }
  if (!text.trim()) throw invalidArgument(`token file ${file} is empty`);
  return text;
}
