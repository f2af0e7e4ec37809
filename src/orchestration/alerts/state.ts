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
 * The repositories the site uses: those its repository jobs (verify, gc, prune) were run on. A
 * backup's repository joins once one of those has run on it (or, with policies, once a policy names it).
 */
function repositories(db: Database): string[] {
  return (
    db.prepare("SELECT DISTINCT target FROM jobs WHERE kind LIKE 'repository.%'").all() as {
      target: string;
    }[]
  ).map((r) => r.target);
}

/** One snapshot of what the state rules read; a part that cannot be read is left out, not fatal. */
export async function gatherState(p: StateParts): Promise<SiteState> {
  const repos = await Promise.all(
    repositories(p.db).map(async (path): Promise<SiteState['repositories'][number]> => {
      try {
        const s = await statfs(path);
        return { path, fs: { totalBytes: s.blocks * s.bsize, freeBytes: s.bavail * s.bsize } };
      } catch (err) {
        return { path, error: errorMessage(err) };
      }
    }),
  );
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
