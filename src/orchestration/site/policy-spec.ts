import { Cron } from 'croner';
import { invalidArgument } from '../../common/index.js';
import type { RetentionPolicy } from '../../repository/index.js';
import { checkName } from '../../storage/index.js';
import type { ScheduleSpec } from './schedule-spec.js';

/** When something runs: exactly one of a cron expression (croner's syntax) and an interval. */
export interface PolicyTiming {
  cron?: string;
  everySeconds?: number;
  timezone?: string;
}

/** A storage policy: what a VM (or volume) needs. Pure data; see policies.ts for its use. */
export interface PolicySpec {
  /** Capability requirements matched against pools: "thin", "replication", "tier=gold". */
  requires: string[];
  snapshot?: PolicyTiming & { keep?: RetentionPolicy };
  backup?: PolicyTiming & { repo: string; passphraseFile?: string; keep?: RetentionPolicy };
  /** Verifies the backup repository; needs `backup`. */
  verify?: PolicyTiming;
  /** A paired site holding a replica, and the RPO the replication group must meet. */
  replication?: { to: string; rpoSeconds: number };
}

export interface Policy extends PolicySpec {
  name: string;
  createdAt: string;
  updatedAt: string;
}

const RETENTION_KEYS = ['last', 'hourly', 'daily', 'weekly', 'monthly', 'yearly'] as const;

/** "tier=gold" → ["tier", "gold"]; "thin" → ["thin", true]. */
export function parseRequirement(r: string): [string, string | true] {
  const i = r.indexOf('=');
  return i < 0 ? [r, true] : [r.slice(0, i), r.slice(i + 1)];
}

/**
 * Checks a policy before anything is stored: its name, its capability requirements against the
 * names some pool (or Haven itself) knows, every timing, and every retention. Throws
 * INVALID_ARGUMENT naming the field and the fix; returns a normalised copy.
 */
export function validatePolicy(name: string, spec: PolicySpec, knownCapabilities: string[]): PolicySpec {
  checkName('policy', name);
  const known = [...new Set(knownCapabilities)].sort();
  const requires = [...new Set(spec.requires ?? [])];
  for (const r of requires) {
    const [cap, value] = parseRequirement(r);
    if (!cap || value === '')
      throw invalidArgument(`policy ${name}: requirement "${r}" is not NAME or NAME=VALUE`);
    if (!known.includes(cap))
      throw invalidArgument(
        `policy ${name}: unknown capability "${cap}": known capabilities are ${known.join(', ')} (declare new ones on a pool: haven pool set-capabilities POOL --capability ${cap})`,
      );
  }
  const out: PolicySpec = { requires };
  if (spec.snapshot) {
    checkTiming(name, 'snapshot', spec.snapshot);
    if (spec.snapshot.keep) checkRetention(name, 'snapshot', spec.snapshot.keep);
    out.snapshot = spec.snapshot;
  }
  if (spec.backup) {
    checkTiming(name, 'backup', spec.backup);
    if (!spec.backup.repo)
      throw invalidArgument(`policy ${name}: a backup schedule needs a repository (--repo)`);
    if (spec.backup.keep) checkRetention(name, 'backup', spec.backup.keep);
    out.backup = spec.backup;
  }
  if (spec.verify) {
    if (!spec.backup)
      throw invalidArgument(
        `policy ${name}: a verify schedule checks the backup repository: give a backup schedule (--backup-cron, --repo)`,
      );
    checkTiming(name, 'verify', spec.verify);
    out.verify = spec.verify;
  }
  if (spec.replication) {
    checkName('site', spec.replication.to);
    const rpo = spec.replication.rpoSeconds;
    if (!Number.isFinite(rpo) || rpo <= 0)
      throw invalidArgument(`policy ${name}: RPO ${rpo}: must be more than 0 seconds`);
    out.replication = spec.replication;
  }
  return out;
}

function checkTiming(policy: string, what: string, t: PolicyTiming): void {
  if ((t.cron === undefined) === (t.everySeconds === undefined))
    throw invalidArgument(
      `policy ${policy}: the ${what} schedule needs exactly one of a cron expression and an interval`,
    );
  if (t.everySeconds !== undefined && (!Number.isSafeInteger(t.everySeconds) || t.everySeconds <= 0))
    throw invalidArgument(
      `policy ${policy}: ${what} interval ${t.everySeconds}: must be a whole number of seconds above 0`,
    );
  if (t.cron !== undefined)
    try {
      new Cron(t.cron, { paused: true, ...(t.timezone ? { timezone: t.timezone } : {}) }).nextRun();
    } catch (err) {
      throw invalidArgument(
        `policy ${policy}: ${what} cron expression "${t.cron}"${t.timezone ? ` (time zone ${t.timezone})` : ''} is not valid: ${(err as Error).message}`,
      );
    }
}

function checkRetention(policy: string, what: string, keep: RetentionPolicy): void {
  for (const [k, v] of Object.entries(keep)) {
    if (!(RETENTION_KEYS as readonly string[]).includes(k))
      throw invalidArgument(
        `policy ${policy}: ${what} retention has no period "${k}": use ${RETENTION_KEYS.join(', ')}`,
      );
    if (!Number.isSafeInteger(v) || (v as number) < 0)
      throw invalidArgument(
        `policy ${policy}: ${what} retention ${k} ${String(v)}: must be a whole number, 0 or more`,
      );
  }
  if (!RETENTION_KEYS.some((k) => (keep[k] ?? 0) > 0))
    throw invalidArgument(
      `policy ${policy}: the ${what} retention keeps nothing: keep at least one (e.g. --${what === 'snapshot' ? 'snapshot-keep' : 'keep-daily'} 7)`,
    );
}

/** The owner under which the scheduler holds the schedules of `policy` for `object`. */
export function scheduleOwner(policy: string, object: string): string {
  return `policy:${policy}:${object}`;
}

/** The schedules a policy makes for one VM or volume (pure; see ScheduleSpec). */
export function policySchedules(policy: PolicySpec, object: string): ScheduleSpec[] {
  const timing = (t: PolicyTiming) => ({
    ...(t.cron !== undefined ? { cron: t.cron } : {}),
    ...(t.everySeconds !== undefined ? { everySeconds: t.everySeconds } : {}),
    ...(t.timezone ? { timezone: t.timezone } : {}),
  });
  const specs: ScheduleSpec[] = [];
  if (policy.snapshot)
    specs.push({
      kind: 'snapshot',
      target: object,
      ...timing(policy.snapshot),
      ...(policy.snapshot.keep ? { params: { keep: policy.snapshot.keep } } : {}),
    });
  const b = policy.backup;
  if (b) {
    const access = { repo: b.repo, ...(b.passphraseFile ? { passphraseFile: b.passphraseFile } : {}) };
    specs.push({
      kind: 'backup',
      target: object,
      ...timing(b),
      params: { ...access, ...(b.keep ? { keep: b.keep } : {}) },
    });
    if (policy.verify)
      specs.push({ kind: 'verify', target: b.repo, ...timing(policy.verify), params: access });
  }
  return specs;
}

/**
 * The longest a newest backup may be old and still meet its schedule: two intervals (the run
 * now due may still be running; the one before it must have produced a backup). For a cron
 * expression the interval is the gap between its next two runs.
 */
export function allowedBackupAgeSeconds(t: PolicyTiming, now = new Date()): number {
  if (t.everySeconds !== undefined) return 2 * t.everySeconds;
  const runs = new Cron(t.cron!, { paused: true, ...(t.timezone ? { timezone: t.timezone } : {}) }).nextRuns(
    2,
    now,
  );
  const gap = runs.length === 2 ? (runs[1]!.getTime() - runs[0]!.getTime()) / 1000 : 86400;
  return 2 * gap;
}
