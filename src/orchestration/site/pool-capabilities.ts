import { invalidArgument } from '../../common/index.js';
import { BUILTIN_CAPABILITIES, type CapabilitySet, type StorageService } from '../../storage/index.js';
import type { Db } from './database.js';
import { parseRequirement } from './policy-spec.js';

const NAME = /^[a-z][a-z0-9_.-]{0,31}$/;

/** "tier=gold", "replication" → a capability set; refuses a malformed name. */
export function parseCapabilities(list: string[]): CapabilitySet {
  const set: CapabilitySet = {};
  for (const c of list) {
    const [name, value] = parseRequirement(c);
    if (!NAME.test(name) || value === '')
      throw invalidArgument(
        `capability "${c}" is not NAME or NAME=VALUE (a name: 1-32 lower-case letters, digits, '.', '_', '-', starting with a letter)`,
      );
    set[name] = value;
  }
  return set;
}

/**
 * What each pool advertises: its provider's own capabilities, plus those its operator declared
 * (kept in the site database, since they describe what Haven cannot see: a replicated array
 * underneath, a tier of service). A declared capability overrides the provider's of that name.
 */
export class PoolCapabilities {
  constructor(
    private readonly db: Db,
    private readonly storage: StorageService,
  ) {}

  declared(pool: string): CapabilitySet {
    const row = this.db.prepare('SELECT declared FROM pool_capabilities WHERE pool = ?').get(pool) as
      { declared: string } | undefined;
    return row ? (JSON.parse(row.declared) as CapabilitySet) : {};
  }

  /** Replaces a pool's declared capabilities. */
  declare(pool: string, caps: CapabilitySet): void {
    this.storage.poolInfo(pool); // NOT_FOUND first
    if (Object.keys(caps).length === 0) this.forget(pool);
    else
      this.db
        .prepare(
          'INSERT INTO pool_capabilities (pool, declared) VALUES (?, ?) ON CONFLICT(pool) DO UPDATE SET declared = excluded.declared',
        )
        .run(pool, JSON.stringify(caps));
  }

  forget(pool: string): void {
    this.db.prepare('DELETE FROM pool_capabilities WHERE pool = ?').run(pool);
  }

  /** Everything a pool advertises. */
  of(pool: string): CapabilitySet {
    return { ...this.storage.capabilitiesOf(pool), ...this.declared(pool) };
  }

  /** Every capability name a policy may require: Haven's own, any a provider advertises, and any some pool declares. */
  known(): string[] {
    const names = new Set<string>(BUILTIN_CAPABILITIES);
    // What providers advertise may be required too (a vendor's own capability).
    for (const p of this.storage.listPools())
      for (const k of Object.keys(this.storage.capabilitiesOf(p.name))) names.add(k);
    const rows = this.db.prepare('SELECT declared FROM pool_capabilities').all() as { declared: string }[];
    for (const r of rows) for (const k of Object.keys(JSON.parse(r.declared) as CapabilitySet)) names.add(k);
    return [...names].sort();
  }
}
