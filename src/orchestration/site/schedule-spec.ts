import type { RetentionPolicy } from '../../repository/index.js';

/** What a schedule runs: each kind starts one site job per due run. */
export type ScheduleKind = 'backup' | 'snapshot' | 'prune' | 'verify' | 'gc' | 'check';

/**
 * One schedule as its owner states it (a person through the CLI or API, or a policy assigned to a
 * VM). The scheduler persists these with their next run; a policy replaces all of the schedules it
 * owns in one call (`owner` "policy:NAME:VM"), so that changing or unassigning it leaves none stale.
 */
export interface ScheduleSpec {
  kind: ScheduleKind;
  /** A VM or volume name (backup, snapshot, check) or a repository path (prune, verify, gc). */
  target: string;
  /** A cron expression (five or six fields, croner's syntax); exactly one of `cron` and `everySeconds`. */
  cron?: string;
  everySeconds?: number;
  /** IANA time zone of `cron` (default UTC). */
  timezone?: string;
  /** At most this many seconds of random delay per run, so that many schedules do not start at once. */
  jitterSeconds?: number;
  /** Runs missed while the daemon was down: run once when it is back (default), or skip them. */
  catchUp?: 'once' | 'skip';
  /**
   * What the run needs: for backups `repo`, `passphraseFile`, `keep`; for snapshots `keep`; for
   * prunes `keep`; for verify and gc `passphraseFile`; for checks `repo` and the check's options.
   */
  params?: ScheduleParams;
}

export interface ScheduleParams {
  repo?: string;
  passphraseFile?: string;
  /** Retention applied after each successful backup or snapshot run, and by prune runs. */
  keep?: RetentionPolicy;
  [key: string]: unknown;
}

/** Where policies put their schedules: implemented by the site's scheduler. */
export interface ScheduleOwnerSink {
  /** Replaces every schedule owned by `owner` with `specs` (none: removes them). */
  replaceOwned(owner: string, specs: ScheduleSpec[]): void;
}
