import { conflict, invalidArgument, notFound } from '../../common/index.js';
import { checkName } from '../../storage/index.js';
import { now, type Db } from './database.js';

/** A business service: replication groups in tiers, started tier by tier, stopped in reverse. */
export interface BusinessService {
  name: string;
  /** Tier 1 first (e.g. the database), then 2 (the application), …; each tier's groups together. */
  tiers: string[][];
  /** Seconds to wait after a tier is up before the next starts (default 0). */
  bootDelaySeconds: number;
  createdAt: string;
}

interface Row {
  name: string;
  tiers: string;
  boot_delay_seconds: number;
  created_at: string;
}

const toService = (r: Row): BusinessService => ({
  name: r.name,
  tiers: JSON.parse(r.tiers) as string[][],
  bootDelaySeconds: r.boot_delay_seconds,
  createdAt: r.created_at,
});

/** The business services of a site (table services). */
export class BusinessServices {
  constructor(
    private readonly db: Db,
    /** Whether a replication group of that name is at this site (either side). */
    private readonly groupExists: (name: string) => boolean,
    /** Whether a resiliency group of that name is defined here (but does not replicate). */
    private readonly groupDefined: (name: string) => boolean = () => false,
  ) {}

  list(): BusinessService[] {
    return (this.db.prepare('SELECT * FROM services ORDER BY name').all() as Row[]).map(toService);
  }

  find(name: string): BusinessService | undefined {
    const r = this.db.prepare('SELECT * FROM services WHERE name = ?').get(name) as Row | undefined;
    return r && toService(r);
  }

  get(name: string): BusinessService {
    const s = this.find(name);
    if (!s) throw notFound(`business service ${name} does not exist on this site`);
    return s;
  }

  /** Checks and stores a service (a peer's copy too: `replace` lets the same name be stored again). */
  put(
    s: { name: string; tiers: string[][]; bootDelaySeconds?: number },
    opts: { replace?: boolean } = {},
  ): BusinessService {
    checkName('business service', s.name);
    if (!opts.replace && this.find(s.name)) throw conflict(`business service ${s.name} exists already`);
    if (this.groupExists(s.name))
      throw conflict(`${s.name} names a replication group: a service needs a name of its own`);
    if (!Array.isArray(s.tiers) || !s.tiers.length || s.tiers.some((t) => !Array.isArray(t) || !t.length))
      throw invalidArgument(`business service ${s.name}: give at least one tier, each of at least one group`);
    const seen = new Map<string, number>();
    s.tiers.forEach((tier, i) =>
      tier.forEach((g) => {
        if (typeof g !== 'string') throw invalidArgument(`business service ${s.name}: a group is not a name`);
        if (seen.has(g))
          throw invalidArgument(
            `group ${g} is in tier ${seen.get(g)! + 1} and tier ${i + 1}: a group starts once`,
          );
        seen.set(g, i);
        if (!this.groupExists(g) && this.groupDefined(g))
          throw conflict(
            `group ${g} does not replicate: a business service recovers at another site, so its groups replicate (haven replication enable --group ${g} --to SITE --pool POOL)`,
          );
        if (!this.groupExists(g)) throw notFound(`replication group ${g} does not exist on this site`);
      }),
    );
    for (const other of this.list())
      if (other.name !== s.name)
        for (const g of other.tiers.flat())
          if (seen.has(g)) throw conflict(`group ${g} belongs to business service ${other.name} already`);
    const delay = s.bootDelaySeconds ?? 0;
    if (!Number.isFinite(delay) || delay < 0 || delay > 3600)
      throw invalidArgument(`boot delay ${delay}: 0 to 3600 seconds`);
    const t = now();
    this.db
      .prepare(
        `INSERT INTO services (name, tiers, boot_delay_seconds, created_at, updated_at) VALUES (?, ?, ?, ?, ?)
         ON CONFLICT(name) DO UPDATE SET tiers = excluded.tiers, boot_delay_seconds = excluded.boot_delay_seconds, updated_at = excluded.updated_at`,
      )
      .run(s.name, JSON.stringify(s.tiers), delay, t, t);
    return this.get(s.name);
  }

  delete(name: string): void {
    this.get(name);
    this.db.prepare('DELETE FROM services WHERE name = ?').run(name);
  }

  /** The service a group belongs to, if any. */
  ofGroup(group: string): BusinessService | undefined {
    return this.list().find((s) => s.tiers.some((t) => t.includes(group)));
  }
}
