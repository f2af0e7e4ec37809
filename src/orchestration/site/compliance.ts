import { errorMessage } from '../../common/index.js';
import type { CapabilitySet } from '../../storage/index.js';
import { missingCapabilities } from './placement.js';
import { allowedBackupAgeSeconds, type PolicySpec } from './policy-spec.js';

/** Why an object is not compliant; `fixable`: `policy remediate` can put it right. */
export interface ComplianceReason {
  code: 'capability' | 'backup' | 'replication' | 'rpo' | 'verify' | 'check';
  message: string;
  fixable: boolean;
  /** For capability reasons: the volume and its pool. */
  volume?: string;
  pool?: string;
}

export interface Compliance {
  kind: 'vm' | 'volume';
  object: string;
  policy: string;
  compliant: boolean;
  reasons: ComplianceReason[];
  checkedAt: string;
}

/** What compliance is judged from, gathered by the site (policies.ts). */
export interface ComplianceFacts {
  /** Each volume of the object with its pool and what that pool advertises. */
  volumes: { volume: string; pool: string; capabilities: CapabilitySet }[];
  /** The newest backup of the object in the policy's repository (or why it could not be read). */
  newestBackup?: { createdAt: string } | { error: string } | null;
  /** The replication group of the object, if any. */
  replication?: { group: string; peer: string; rpoSeconds?: number; state?: string };
  /** The newest verify job of the policy's repository. */
  lastVerify?: { id: string; state: string; errorCode?: string; error?: string; endedAt?: string };
  /** The newest finished recoverability check of a VM. */
  lastCheck?: { id: string; state: string; reason?: string; endedAt?: string };
}

/** Compliance of one object with its policy: a pure function of the facts and the time. */
export function judge(policy: PolicySpec, facts: ComplianceFacts, now: Date): ComplianceReason[] {
  const reasons: ComplianceReason[] = [];
  for (const v of facts.volumes)
    for (const m of missingCapabilities(v.capabilities, policy.requires))
      reasons.push({
        code: 'capability',
        message: `pool ${v.pool} of volume ${v.volume} lacks capability ${m}`,
        fixable: true,
        volume: v.volume,
        pool: v.pool,
      });
  if (policy.backup) {
    const b = facts.newestBackup;
    const allowed = allowedBackupAgeSeconds(policy.backup, now);
    if (b && 'error' in b)
      reasons.push({
        code: 'backup',
        message: `repository ${policy.backup.repo} could not be read: ${b.error}`,
        fixable: false,
      });
    else if (!b)
      reasons.push({
        code: 'backup',
        message: `no backup in repository ${policy.backup.repo} yet`,
        fixable: false,
      });
    else {
      const age = (now.getTime() - Date.parse(b.createdAt)) / 1000;
      if (age > allowed)
        reasons.push({
          code: 'backup',
          message: `last backup (${b.createdAt}) is ${Math.round(age)} s old; the schedule allows ${Math.round(allowed)} s`,
          fixable: false,
        });
    }
  }
  if (policy.replication) {
    const r = facts.replication;
    const want = policy.replication;
    if (!r)
      reasons.push({
        code: 'replication',
        message: `not replicated; the policy wants replication to site ${want.to} (haven replication enable)`,
        fixable: false,
      });
    else if (r.peer !== want.to)
      reasons.push({
        code: 'replication',
        message: `replicated by group ${r.group} to site ${r.peer}, not ${want.to}`,
        fixable: false,
      });
    else if (r.rpoSeconds === undefined || r.rpoSeconds > want.rpoSeconds)
      reasons.push({
        code: 'rpo',
        message:
          r.rpoSeconds === undefined
            ? `group ${r.group} has no applied checkpoint yet (RPO target ${want.rpoSeconds} s)`
            : `RPO ${r.rpoSeconds} s of group ${r.group} is above the target ${want.rpoSeconds} s`,
        fixable: false,
      });
  }
  const v = facts.lastVerify;
  if (policy.backup && v && v.state === 'failed' && v.errorCode === 'CORRUPT')
    reasons.push({
      code: 'verify',
      message:
        `the last verify of ${policy.backup.repo} (job ${v.id}${v.endedAt ? `, ${v.endedAt}` : ''}) found damage: ${v.error ?? ''}`.trim(),
      fixable: false,
    });
  const c = facts.lastCheck;
  if (c && c.state === 'failed')
    reasons.push({
      code: 'check',
      message: `the last recoverability check (${c.id}${c.endedAt ? `, ${c.endedAt}` : ''}) failed${c.reason ? `: ${c.reason}` : ''}`,
      fixable: false,
    });
  return reasons;
}

/** The message of an error, for facts that could not be read. */
export const factError = (err: unknown) => ({ error: errorMessage(err) });
