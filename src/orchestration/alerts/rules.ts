/**
 * The alert rules: pure functions from what happened (an event of the site's log) or what is
 * (a snapshot of the site's state) to signals — "this rule fires for this object" or "it no
 * longer does". No I/O here, like repository/retention.ts; the engine applies the signals.
 */

export type Severity = 'critical' | 'warning';

export interface RuleInfo {
  name: string;
  severity: Severity;
  /** 'event': fired and resolved by events; 'state': by the periodic check (and early by events). */
  source: 'event' | 'state';
  description: string;
}

export const RULES = [
  {
    name: 'job.failed',
    severity: 'critical',
    source: 'event',
    description:
      'a job failed (per kind and target, e.g. vm.backup:app1); resolves on the next success of the same kind and target',
  },
  {
    name: 'schedule.missed',
    severity: 'warning',
    source: 'event',
    description:
      'a scheduled run was missed or skipped (a backup is overdue); resolves on the next successful job of that target',
  },
  {
    name: 'policy.noncompliant',
    severity: 'warning',
    source: 'event',
    description: 'an object does not comply with its policy (e.g. its last backup is older than allowed)',
  },
  {
    name: 'objective.noncompliant',
    severity: 'warning',
    source: 'event',
    description:
      'a group or business service does not meet its service objective (RPO, history, rehearsal cadence, RTO or backup age); resolves when it does',
  },
  {
    name: 'verify.damage',
    severity: 'critical',
    source: 'event',
    description: 'a repository verify found damage; resolves on the next clean verify of that repository',
  },
  {
    name: 'recovery.check.failed',
    severity: 'critical',
    source: 'event',
    description: "a recoverability check of a VM's backup failed; resolves on the next passed check",
  },
  {
    name: 'replication.rpo',
    severity: 'warning',
    source: 'state',
    description: "a replication group's replica is older than its RPO",
  },
  {
    name: 'replication.bitmap',
    severity: 'warning',
    source: 'state',
    description: 'a replication group fell back to bitmap mode (its journal overflowed or the link is down)',
  },
  {
    name: 'replication.paused',
    severity: 'warning',
    source: 'state',
    description: 'a replication group is paused',
  },
  {
    name: 'pool.full',
    severity: 'warning',
    source: 'state',
    description: 'a storage pool is nearly full (allocated bytes at or above the threshold)',
  },
  {
    name: 'repository.full',
    severity: 'warning',
    source: 'state',
    description: 'the file system a repository lives on is nearly full',
  },
  {
    name: 'recovery.overdue',
    severity: 'warning',
    source: 'state',
    description: 'a VM has run from a backup (instant recovery) longer than the site allows',
  },
] as const satisfies readonly RuleInfo[];

export type RuleName = (typeof RULES)[number]['name'];

const byName = new Map<string, RuleInfo>(RULES.map((r) => [r.name, r]));
export const ruleInfo = (name: string): RuleInfo | undefined => byName.get(name);
export const STATE_RULES = RULES.filter((r) => r.source === 'state').map((r) => r.name as RuleName);

/** Fires (or resolves) `rule` for `object`. */
export interface Signal {
  rule: RuleName;
  object: string;
  firing: boolean;
  message: string;
  details?: Record<string, unknown>;
}

/** The part of a site event the rules read. */
export interface RuleEvent {
  action: string;
  target: string;
  outcome: 'ok' | 'failed' | 'info' | 'warning';
  message: string;
  details?: Record<string, unknown>;
}

/** What the rules learn about a job from its event: whether it ended in damage found. */
export interface JobFacts {
  errorCode?: string;
}

const jobKind = /^[a-z]+(\.[a-z-]+)+$/;

/**
 * The signals of one event. Job events carry `details.job` (action = job kind, outcome ok or
 * failed); the others are named by their action.
 */
export function eventSignals(e: RuleEvent, job?: JobFacts): Signal[] {
  if (e.action.startsWith('alert.')) return [];
  const out: Signal[] = [];
  // A recoverability check (a job or not) has its own rule, not job.failed besides.
  const isJob = typeof e.details?.job === 'string' && jobKind.test(e.action) && e.action !== 'recovery.check';
  if (isJob && (e.outcome === 'ok' || e.outcome === 'failed')) {
    const object = `${e.action}:${e.target}`;
    const details = { job: e.details!.job, kind: e.action, target: e.target };
    // A job someone cancelled did not fail at its work: nothing fires, nothing resolves.
    if (e.outcome === 'failed' && job?.errorCode === 'CANCELLED') return [];
    const damage = e.action === 'repository.verify' && job?.errorCode === 'CORRUPT';
    if (e.outcome === 'failed')
      out.push(
        damage
          ? { rule: 'verify.damage', object: e.target, firing: true, message: e.message, details }
          : { rule: 'job.failed', object, firing: true, message: e.message, details },
      );
    else {
      out.push({ rule: 'job.failed', object, firing: false, message: e.message, details });
      if (e.action === 'repository.verify')
        out.push({ rule: 'verify.damage', object: e.target, firing: false, message: e.message, details });
      // Any success of the target ends a missed schedule of it (of that kind, or unnamed).
      for (const o of [e.target, object])
        out.push({ rule: 'schedule.missed', object: o, firing: false, message: e.message, details });
    }
    // A damaged verify also ended with the job failed for another reason before: that resolves.
    if (damage) out.push({ rule: 'job.failed', object, firing: false, message: e.message, details });
    return out;
  }
  switch (e.action) {
    case 'schedule.missed':
    case 'schedule.skipped': {
      const kind = typeof e.details?.kind === 'string' ? e.details.kind : undefined;
      const object = kind ? `${kind}:${e.target}` : e.target;
      return [{ rule: 'schedule.missed', object, firing: true, message: e.message, ...withDetails(e) }];
    }
    case 'policy.compliance':
      return [
        {
          rule: 'policy.noncompliant',
          object: e.target,
          firing: e.outcome === 'warning' || e.outcome === 'failed',
          message: e.message,
          ...withDetails(e),
        },
      ];
    case 'objective.compliance':
      return [
        {
          rule: 'objective.noncompliant',
          object: e.target,
          firing: e.outcome === 'warning' || e.outcome === 'failed',
          message: e.message,
          ...withDetails(e),
        },
      ];
    case 'recovery.check':
      if (e.outcome !== 'failed' && e.outcome !== 'ok') return [];
      return [
        {
          rule: 'recovery.check.failed',
          object: e.target,
          firing: e.outcome === 'failed',
          message: e.message,
          ...withDetails(e),
        },
      ];
    case 'replication.rpo':
      return [
        { rule: 'replication.rpo', object: e.target, firing: e.outcome === 'warning', message: e.message },
      ];
    case 'replication.state': {
      const state = e.details?.state;
      if (typeof state !== 'string') return [];
      return [
        { rule: 'replication.bitmap', object: e.target, firing: state === 'bitmap', message: e.message },
        { rule: 'replication.paused', object: e.target, firing: state === 'paused', message: e.message },
      ];
    }
  }
  return out;
}

function withDetails(e: RuleEvent): { details?: Record<string, unknown> } {
  return e.details ? { details: e.details } : {};
}

/** A snapshot of the state the periodic check reads. */
export interface SiteState {
  pools: { name: string; capacityBytes: number; allocatedBytes: number }[];
  /** Repositories the site uses, with the file system each lives on (absent: could not be read). */
  repositories: { path: string; fs?: { totalBytes: number; freeBytes: number }; error?: string }[];
  replication: {
    name: string;
    paused: boolean;
    state?: string;
    rpoSeconds?: number;
    rpoObjectiveSeconds?: number;
  }[];
  recoveries: { vm: string; warning?: string }[];
}

export interface Thresholds {
  /** A pool or repository file system at or above this share used fires (default 90). */
  fullPercent: number;
}

/** The objects a state check looked at, as "rule object" keys: an open state alert of any other is gone. */
export function stateObjects(s: SiteState): Set<string> {
  const keys = new Set<string>();
  for (const p of s.pools) keys.add(alertKey('pool.full', p.name));
  // A repository that could not be looked at this time keeps what it had.
  for (const r of s.repositories) keys.add(alertKey('repository.full', r.path));
  for (const g of s.replication)
    for (const rule of ['replication.rpo', 'replication.bitmap', 'replication.paused'] as const)
      keys.add(alertKey(rule, g.name));
  for (const r of s.recoveries) keys.add(alertKey('recovery.overdue', r.vm));
  return keys;
}

export const alertKey = (rule: string, object: string): string => `${rule} ${object}`;

/** Once fired, a "full" alert resolves only this many points below the threshold, so it does not flap. */
const FULL_HYSTERESIS = 5;

/**
 * The signals of one state check: for each object it looked at, firing or not. A "full" object
 * between the threshold and the hysteresis band gets no signal (it stays as it is).
 */
export function stateSignals(s: SiteState, t: Thresholds): Signal[] {
  const out: Signal[] = [];
  const full = (
    rule: 'pool.full' | 'repository.full',
    object: string,
    what: string,
    used: number,
    total: number,
  ) => {
    if (total <= 0) return;
    const pct = (used / total) * 100;
    const details = { usedBytes: used, totalBytes: total, percent: Math.round(pct * 10) / 10 };
    const message = `${what} is ${details.percent}% full (${used} of ${total} bytes; threshold ${t.fullPercent}%)`;
    if (pct >= t.fullPercent) out.push({ rule, object, firing: true, message, details });
    else if (pct < t.fullPercent - FULL_HYSTERESIS)
      out.push({ rule, object, firing: false, message, details });
  };
  for (const p of s.pools) full('pool.full', p.name, `pool ${p.name}`, p.allocatedBytes, p.capacityBytes);
  for (const r of s.repositories)
    if (r.fs)
      full(
        'repository.full',
        r.path,
        `the file system of repository ${r.path}`,
        r.fs.totalBytes - r.fs.freeBytes,
        r.fs.totalBytes,
      );
  for (const g of s.replication) {
    const late =
      !g.paused &&
      g.rpoSeconds !== undefined &&
      g.rpoObjectiveSeconds !== undefined &&
      g.rpoSeconds > g.rpoObjectiveSeconds;
    out.push({
      rule: 'replication.rpo',
      object: g.name,
      firing: late,
      message: late
        ? `replication group ${g.name}: the replica is ${g.rpoSeconds!.toFixed(1)} s old, more than its RPO of ${g.rpoObjectiveSeconds} s`
        : `replication group ${g.name}: within its RPO`,
      ...(g.rpoSeconds !== undefined
        ? { details: { rpoSeconds: g.rpoSeconds, objective: g.rpoObjectiveSeconds } }
        : {}),
    });
    out.push({
      rule: 'replication.bitmap',
      object: g.name,
      firing: g.state === 'bitmap',
      message: `replication group ${g.name} is ${g.state === 'bitmap' ? 'in bitmap mode: writes are tracked, not journaled, until it resyncs' : (g.state ?? 'not running')}`,
    });
    out.push({
      rule: 'replication.paused',
      object: g.name,
      firing: g.paused,
      message: g.paused
        ? `replication group ${g.name} is paused: resume it with haven replication resume ${g.name}`
        : `replication group ${g.name} runs`,
    });
  }
  for (const r of s.recoveries)
    out.push({
      rule: 'recovery.overdue',
      object: r.vm,
      firing: r.warning !== undefined,
      message: r.warning
        ? `VM ${r.vm} is ${r.warning}`
        : `VM ${r.vm} runs from a backup within the allowed time`,
    });
  return out;
}
