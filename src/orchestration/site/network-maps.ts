import { conflict, invalidArgument, notFound } from '../../common/index.js';
import type { Network } from './compute.js';
import { now, type Db } from './database.js';

/**
 * Where a peer's network goes when its VMs are recovered at this site: the network their NICs
 * join on a takeover or migrate, and — for rehearsals — an isolated network with no route to
 * production, so that a rehearsal VM can never clash with the one that runs.
 */
export interface NetworkMapEntry {
  /** The paired site whose VMs' NICs are on `source`. */
  peer: string;
  /** A network of the peer. */
  source: string;
  /** The network of this site the NICs join on a takeover or migrate. */
  recovery: string;
  /** The isolated network of this site the NICs join in a rehearsal (default: one made per rehearsal). */
  rehearsal?: string;
  updatedAt: string;
}

interface Row {
  peer: string;
  source: string;
  recovery: string;
  rehearsal: string | null;
  updated_at: string;
}

const toEntry = (r: Row): NetworkMapEntry => ({
  peer: r.peer,
  source: r.source,
  recovery: r.recovery,
  ...(r.rehearsal !== null ? { rehearsal: r.rehearsal } : {}),
  updatedAt: r.updated_at,
});

/** The network maps of a site, per paired site (table network_maps). */
export class NetworkMaps {
  constructor(
    private readonly db: Db,
    /** Throws NOT_FOUND when `name` is not a paired site. */
    private readonly peer: (name: string) => unknown,
    /** Throws NOT_FOUND when this site has no such network. */
    private readonly network: (name: string) => Network,
  ) {}

  list(peer?: string): NetworkMapEntry[] {
    const rows = (
      peer === undefined
        ? this.db.prepare('SELECT * FROM network_maps ORDER BY peer, source').all()
        : this.db.prepare('SELECT * FROM network_maps WHERE peer = ? ORDER BY source').all(peer)
    ) as Row[];
    return rows.map(toEntry);
  }

  /** Stores (or replaces) the map of one network of a peer; every name is checked first. */
  put(e: { peer: string; source: string; recovery: string; rehearsal?: string }): NetworkMapEntry {
    this.peer(e.peer);
    if (typeof e.source !== 'string' || !e.source.trim())
      throw invalidArgument('a network map needs the source network (a network of the peer)');
    this.network(e.recovery);
    if (e.rehearsal !== undefined) {
      const r = this.network(e.rehearsal);
      if (r.kind !== 'isolated')
        throw conflict(
          `network ${e.rehearsal} is a ${r.kind} network: a rehearsal network must be isolated (no route to production), so that a rehearsal VM cannot clash with the running one`,
        );
      if (e.rehearsal === e.recovery)
        throw conflict(
          `network ${e.rehearsal} is the recovery network of ${e.source} too: rehearsals need a network of their own`,
        );
    }
    this.db
      .prepare(
        `INSERT INTO network_maps (peer, source, recovery, rehearsal, updated_at) VALUES (?, ?, ?, ?, ?)
         ON CONFLICT (peer, source) DO UPDATE SET recovery = excluded.recovery, rehearsal = excluded.rehearsal, updated_at = excluded.updated_at`,
      )
      .run(e.peer, e.source, e.recovery, e.rehearsal ?? null, now());
    return this.list(e.peer).find((x) => x.source === e.source)!;
  }

  delete(peer: string, source: string): void {
    const r = this.db.prepare('DELETE FROM network_maps WHERE peer = ? AND source = ?').run(peer, source);
    if (r.changes === 0)
      throw notFound(`no network map for network ${source} of site ${peer}: see haven network map list`);
  }

  /** Source network → recovery network of this site, for `peer`'s VMs. */
  recovery(peer: string): Record<string, string> {
    return Object.fromEntries(this.list(peer).map((e) => [e.source, e.recovery]));
  }

  /** Source network → rehearsal network of this site, where one is set. */
  rehearsal(peer: string): Record<string, string> {
    return Object.fromEntries(
      this.list(peer)
        .filter((e) => e.rehearsal !== undefined)
        .map((e) => [e.source, e.rehearsal!]),
    );
  }
}
