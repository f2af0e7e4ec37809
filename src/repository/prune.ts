import { HavenError, errorMessage } from '../common/index.js';
import type { DamagedSnapshot, Repository } from './repository.js';
import { planPrune, type PrunePlan, type RetentionPolicy } from './retention.js';

export interface PruneReport {
  sources: PrunePlan['sources'];
  /** Snapshots the policy drops that are in use now: kept this time. */
  inUse: DamagedSnapshot[];
  /** Snapshots whose manifest is damaged: not pruned (forget them by id). */
  damaged: DamagedSnapshot[];
}

export interface PruneOptions {
  dryRun?: boolean;
  source?: string;
  deleteAll?: boolean;
}

/**
 * Applies a retention policy (retention.ts) to each source's snapshots and forgets what it does
 * not keep. Snapshots in use (the base of a running backup, being read) are kept this time and
 * named; damaged ones are left alone (their date and source are unknown) and named. Their chunks
 * go at the next gc (gc.ts).
 */
export async function prune(
  repo: Repository,
  policy: RetentionPolicy,
  opts: PruneOptions = {},
): Promise<PruneReport> {
  const scan = await repo.scanSnapshots();
  const plan = planPrune(scan.snapshots, policy, {
    ...(opts.source !== undefined ? { source: opts.source } : {}),
    ...(opts.deleteAll ? { deleteAll: true } : {}),
  });
  const report: PruneReport = { sources: [], inUse: [], damaged: scan.damaged };
  for (const p of plan.sources) {
    const removed: string[] = [];
    for (const id of p.removed) {
      if (!opts.dryRun)
        try {
          await repo.deleteSnapshot(id);
        } catch (err) {
          if (!(err instanceof HavenError && err.code === 'CONFLICT')) throw err;
          report.inUse.push({ id, reason: errorMessage(err) });
          continue;
        }
      removed.push(id);
    }
    report.sources.push({ ...p, removed });
  }
  return report;
}
