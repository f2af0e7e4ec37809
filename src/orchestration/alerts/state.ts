import type { Database } from 'better-sqlite3';
import { statfs } from 'node:fs/promises';
import { errorMessage } from '../../common/index.js';
import type { SiteState } from './rules.js';

/** The parts of a site the state check reads (structural: alerts/ does not import the site). */
export interface StateParts {
  db: Database;
  pools(): { name: string; capacityBytes: number; allocatedBytes: number }[];
  replication(): {
    name: string;
    role: string;
    paused: boolean;
    rpoObjectiveSeconds?: number;
    source?: { state: string; rpoSeconds?: number };
  }[];
  recoveries(): { vm: string; warning?: string }[];
}

/**
 * The repositories the site uses: those its repository jobs (verify, gc, prune) were run on, and
 * those its backups went into (a backup job's result names its repository), so that a repository
 * only ever backed up into is watched too.
 */
export function repositories(db: Database): string[] {
  return (
    db
      .prepare(
        `SELECT target FROM jobs WHERE kind LIKE 'repository.%'
         UNION SELECT json_extract(result, '$.repository') FROM jobs
           WHERE kind IN ('vm.backup', 'volume.backup') AND state = 'succeeded'
             AND json_extract(result, '$.repository') IS NOT NULL`,
      )
      .all() as { target: string }[]
  ).map((r) => r.target);
}

/** Each repository the site uses, with its file system's size and free space (or why not). */
export function repositoryUsage(db: Database): Promise<SiteState['repositories']> {
  return Promise.all(
    repositories(db).map(async (path): Promise<SiteState['repositories'][number]> => {
      try {
        const s = await statfs(path);
        return { path, fs: { totalBytes: s.blocks * s.bsize, freeBytes: s.bavail * s.bsize } };
      } catch (err) {
        return { path, error: errorMessage(err) };
      }
    }),
  );
}

/** One snapshot of what the state rules read; a part that cannot be read is left out, not fatal. */
export async function gatherState(p: StateParts): Promise<SiteState> {
  const repos = await repositoryUsage(p.db);
  return {
    pools: p
      .pools()
      .map((x) => ({ name: x.name, capacityBytes: x.capacityBytes, allocatedBytes: x.allocatedBytes })),
    repositories: repos,
    replication: p
      .replication()
      .filter((g) => g.role === 'source')
      .map((g) => ({
        name: g.name,
        paused: g.paused,
        ...(g.source ? { state: g.source.state } : {}),
        ...(g.source?.rpoSeconds !== undefined ? { rpoSeconds: g.source.rpoSeconds } : {}),
        ...(g.rpoObjectiveSeconds !== undefined ? { rpoObjectiveSeconds: g.rpoObjectiveSeconds } : {}),
      })),
    recoveries: p.recoveries().map((r) => ({ vm: r.vm, ...(r.warning ? { warning: r.warning } : {}) })),
  };
}
