import { HavenError, conflict, errorMessage, logger, notFound } from '../../common/index.js';
import { openRepository, repoAccess } from '../../protection/index.js';
import { factError, judge, type Compliance, type ComplianceFacts } from './compliance.js';
import { now, type Db } from './database.js';
import { SiteDomain, type Actor, type SiteParts } from './domain.js';
import type { Job } from './jobs.js';
import { choosePool } from './placement.js';
import {
  policySchedules,
  scheduleOwner,
  validatePolicy,
  type Policy,
  type PolicySpec,
} from './policy-spec.js';
import type { PoolCapabilities } from './pool-capabilities.js';
import type { ScheduleOwnerSink } from './schedule-spec.js';
import type { SiteVolumes } from './volumes.js';

const log = logger('policies');

export type PolicyObject = { vm: string } | { volume: string };

export interface PolicyAssignment {
  kind: 'vm' | 'volume';
  object: string;
  policy: string;
  assignedAt: string;
}

/** What policies need of replication: the group of an object and its reported state. */
export interface ReplicationView {
  groupOfVm(vm: string): string | undefined;
  groupOf(volume: string): string | undefined;
  show(group: string): { peer: string; source?: { rpoSeconds?: number; state: string } };
}

/** What policies need of recoverability checks: a VM's newest finished one. */
export interface CheckView {
  last(vm: string): { id: string; state: string; reason?: string; endedAt?: string } | undefined;
}

interface AssignmentRow {
  kind: 'vm' | 'volume';
  object: string;
  policy: string;
  assigned_at: string;
}

const toAssignment = (r: AssignmentRow): PolicyAssignment => ({
  kind: r.kind,
  object: r.object,
  policy: r.policy,
  assignedAt: r.assigned_at,
});

/**
 * Storage policies of a site: what a VM or volume needs (capabilities for placement, snapshot,
 * backup and verify schedules, a replication target with an RPO), assigned to VMs and volumes.
 * An assignment hands the policy's schedules to the scheduler (the sink); placement puts new
 * volumes on pools that satisfy the policy; compliance says, per object, what is not as the
 * policy wants, and `remediate` fixes what it can.
 */
export class SitePolicies extends SiteDomain {
  readonly capabilities: PoolCapabilities;
  private readonly volumes: SiteVolumes;
  private readonly replication: ReplicationView;
  private readonly checks: CheckView | undefined;
  private readonly sink: ScheduleOwnerSink | undefined;

  constructor(
    parts: SiteParts,
    private readonly db: Db,
    deps: {
      capabilities: PoolCapabilities;
      volumes: SiteVolumes;
      replication: ReplicationView;
      /** Recoverability checks: compliance reads the last one of a VM. */
      checks?: CheckView;
      /** Where assignments put their schedules (the site's scheduler). */
      sink?: ScheduleOwnerSink;
    },
  ) {
    super(parts);
    this.capabilities = deps.capabilities;
    this.volumes = deps.volumes;
    this.replication = deps.replication;
    this.checks = deps.checks;
    this.sink = deps.sink;
  }

  private watcher: NodeJS.Timeout | undefined;
  private checking = false;

  /**
   * Judges every assigned object every `intervalMs`, so that a change of compliance (a backup
   * getting overdue, an RPO missed) becomes a `policy.compliance` event without anyone asking.
   */
  watch(intervalMs: number): void {
    this.unwatch();
    this.watcher = setInterval(() => {
      if (this.checking) return; // one round at a time, however slow the repositories
      this.checking = true;
      this.compliance()
        .catch((err: unknown) => log.warn({ err: errorMessage(err) }, 'judging compliance failed'))
        .finally(() => (this.checking = false));
    }, intervalMs);
    this.watcher.unref();
  }

  unwatch(): void {
    clearInterval(this.watcher);
    this.watcher = undefined;
  }

  create(actor: Actor, name: string, spec: PolicySpec): Policy {
    return this.audited(actor, 'policy.create', name, () => {
      const checked = validatePolicy(name, spec, this.capabilities.known());
      if (this.find(name)) throw conflict(`policy ${name} already exists`);
      const t = now();
      this.db
        .prepare('INSERT INTO policies (name, spec, created_at, updated_at) VALUES (?, ?, ?, ?)')
        .run(name, JSON.stringify(checked), t, t);
      return this.get(name);
    });
  }

  /**
   * Replaces a policy's contents (validated as at creation; nothing changes on bad input) and
   * hands the new schedules of every object it is assigned to to the scheduler.
   */
  update(actor: Actor, name: string, spec: PolicySpec): Policy {
    return this.audited(actor, 'policy.update', name, () => {
      this.get(name);
      const checked = validatePolicy(name, spec, this.capabilities.known());
      this.db
        .prepare('UPDATE policies SET spec = ?, updated_at = ? WHERE name = ?')
        .run(JSON.stringify(checked), now(), name);
      const p = this.get(name);
      for (const a of this.assignments(name)) this.applySchedules(p, a.object);
      return p;
    });
  }

  list(): Policy[] {
    const rows = this.db.prepare('SELECT name FROM policies ORDER BY name').all() as { name: string }[];
    return rows.map((r) => this.get(r.name));
  }

  get(name: string): Policy {
    const p = this.find(name);
    if (!p) throw notFound(`no policy ${name}`);
    return p;
  }

  /** A policy with the objects it is assigned to. */
  show(name: string): Policy & { assignments: PolicyAssignment[] } {
    return { ...this.get(name), assignments: this.assignments(name) };
  }

  delete(actor: Actor, name: string): void {
    this.audited(actor, 'policy.delete', name, () => {
      this.get(name);
      const a = this.assignments(name);
      if (a.length)
        throw conflict(
          `policy ${name} is assigned to ${a.map((x) => `${x.kind} ${x.object}`).join(', ')}: unassign it first (haven policy unassign)`,
        );
      this.db.prepare('DELETE FROM policies WHERE name = ?').run(name);
    });
  }

  assignments(policy?: string): PolicyAssignment[] {
    const rows = (
      policy
        ? this.db
            .prepare('SELECT * FROM policy_assignments WHERE policy = ? ORDER BY kind, object')
            .all(policy)
        : this.db.prepare('SELECT * FROM policy_assignments ORDER BY kind, object').all()
    ) as AssignmentRow[];
    return rows.map(toAssignment);
  }

  /** The policy assigned to a VM or volume, if any. */
  policyOf(kind: 'vm' | 'volume', object: string): Policy | undefined {
    const r = this.db
      .prepare('SELECT policy FROM policy_assignments WHERE kind = ? AND object = ?')
      .get(kind, object) as { policy: string } | undefined;
    return r ? this.get(r.policy) : undefined;
  }

  /** Assigns a policy (replacing any other of the object) and applies its schedules. */
  assign(actor: Actor, policy: string, target: PolicyObject): PolicyAssignment {
    const { kind, object } = this.objectOf(target);
    return this.audited(
      actor,
      'policy.assign',
      `${kind}:${object}`,
      () => {
        const p = this.get(policy);
        const before = this.policyOf(kind, object);
        this.db
          .prepare(
            `INSERT INTO policy_assignments (kind, object, policy, assigned_at) VALUES (?, ?, ?, ?)
           ON CONFLICT(kind, object) DO UPDATE SET policy = excluded.policy, assigned_at = excluded.assigned_at`,
          )
          .run(kind, object, policy, now());
        if (before && before.name !== policy) this.sink?.replaceOwned(scheduleOwner(before.name, object), []);
        this.applySchedules(p, object);
        return toAssignment(
          this.db
            .prepare('SELECT * FROM policy_assignments WHERE kind = ? AND object = ?')
            .get(kind, object) as AssignmentRow,
        );
      },
      () => `policy ${policy} assigned to ${kind} ${object}`,
    );
  }

  /** A deleted VM or volume loses its assignment and schedules (no event: the deletion is one). */
  forgetObject(kind: 'vm' | 'volume', object: string): void {
    const p = this.policyOf(kind, object);
    if (!p) return;
    this.db.prepare('DELETE FROM policy_assignments WHERE kind = ? AND object = ?').run(kind, object);
    this.db.prepare('DELETE FROM policy_compliance WHERE kind = ? AND object = ?').run(kind, object);
    this.sink?.replaceOwned(scheduleOwner(p.name, object), []);
  }

  unassign(actor: Actor, target: PolicyObject): void {
    const { kind, object } = this.objectOf(target, false);
    this.audited(actor, 'policy.unassign', `${kind}:${object}`, () => {
      const p = this.policyOf(kind, object);
      if (!p) throw notFound(`${kind === 'vm' ? 'VM' : 'volume'} ${object} has no policy`);
      this.db.prepare('DELETE FROM policy_assignments WHERE kind = ? AND object = ?').run(kind, object);
      this.db.prepare('DELETE FROM policy_compliance WHERE kind = ? AND object = ?').run(kind, object);
      this.sink?.replaceOwned(scheduleOwner(p.name, object), []);
    });
  }

  /**
   * The pool for a new volume: by the policy named, else by the policy of the VM it is for; an
   * explicit pool must satisfy that policy. Without a policy: the pool named, or "default".
   */
  place(req: { pool?: string; policy?: string; vm?: string; needBytes?: number }): string {
    const policy = req.policy
      ? this.get(req.policy)
      : req.vm
        ? this.policyOf('vm', this.compute.vm(req.vm).name)
        : undefined;
    if (!policy) return req.pool ?? 'default';
    const pools = this.storage.listPools().map((p) => ({
      name: p.name,
      capabilities: this.capabilities.of(p.name),
      freeBytes: p.freeBytes,
    }));
    return choosePool(pools, policy.requires, {
      policy: policy.name,
      ...(req.pool ? { pool: req.pool } : {}),
      ...(req.needBytes !== undefined ? { needBytes: req.needBytes } : {}),
    });
  }

  /** Compliance of every assigned object (or one VM/volume); changes are `policy.compliance` events. */
  async compliance(filter?: PolicyObject): Promise<Compliance[]> {
    const only = filter ? this.objectOf(filter, false) : undefined;
    const list = this.assignments().filter(
      (a) => !only || (a.kind === only.kind && a.object === only.object),
    );
    if (only && !list.length)
      throw notFound(`${only.kind === 'vm' ? 'VM' : 'volume'} ${only.object} has no policy`);
    const out: Compliance[] = [];
    for (const a of list)
      try {
        out.push(await this.evaluate(a));
      } catch (err) {
        // An object deleted under its assignment (by an older daemon): nothing left to judge.
        if (!(err instanceof HavenError && err.code === 'NOT_FOUND') || only) throw err;
      }
    return out;
  }

  /**
   * Fixes what it can of a VM's compliance, as a job: volumes on pools that lack a capability move
   * (live) to a pool that has them all; the policy's schedules are applied again. What it cannot
   * fix (a backup missing, replication, damage) is in its result.
   */
  remediate(actor: Actor, vm: string): Job {
    const v = this.compute.vm(vm);
    const policy = this.policyOf('vm', v.name);
    if (!policy)
      throw notFound(
        `VM ${v.name} has no policy: assign one first (haven policy assign POLICY --vm ${v.name})`,
      );
    return this.jobs.start({ kind: 'policy.remediate', target: v.name, actor }, async (ctx) => {
      const before = await this.evaluate({ kind: 'vm', object: v.name, policy: policy.name, assignedAt: '' });
      const fixed: string[] = [];
      const wrong = before.reasons.filter((r) => r.code === 'capability');
      if (wrong.length) {
        const need = v.disks.reduce((n, d) => n + this.storage.volume(d.volume).allocatedBytes, 0);
        const pools = this.storage.listPools().map((p) => ({
          name: p.name,
          capabilities: this.capabilities.of(p.name),
          freeBytes: p.freeBytes,
        }));
        const to = choosePool(pools, policy.requires, { policy: policy.name, needBytes: need });
        ctx.log(
          `moving the disks of VM ${v.name} to pool ${to} (live): ${wrong.map((r) => r.message).join('; ')}`,
        );
        const move = this.volumes.moveVmStorage(actor, v.name, to);
        ctx.log(`storage migration job ${move.id}`);
        const onAbort = () => void this.jobs.cancel(move.id, actor);
        ctx.signal.addEventListener('abort', onAbort, { once: true });
        const ended = await this.jobs.wait(move.id);
        ctx.signal.removeEventListener('abort', onAbort);
        if (ended.state !== 'succeeded')
          throw new HavenError(
            ended.errorCode ?? 'INTERNAL',
            `moving VM ${v.name} to pool ${to} failed: ${ended.error ?? ended.state}`,
          );
        fixed.push(...wrong.map((r) => `${r.message}: moved to pool ${to}`));
      }
      this.applySchedules(policy, v.name);
      ctx.log(`schedules of policy ${policy.name} applied`);
      if (policySchedules(policy, v.name).length)
        fixed.push(`schedules of policy ${policy.name} (re)applied`);
      const after = await this.evaluate({ kind: 'vm', object: v.name, policy: policy.name, assignedAt: '' });
      for (const r of after.reasons) ctx.log(`not fixed: ${r.message}`, 'warning');
      return { vm: v.name, policy: policy.name, fixed, unfixed: after.reasons, compliant: after.compliant };
    });
  }

  private applySchedules(p: Policy, object: string): void {
    this.sink?.replaceOwned(scheduleOwner(p.name, object), policySchedules(p, object));
  }

  private async evaluate(a: PolicyAssignment): Promise<Compliance> {
    const policy = this.get(a.policy);
    const facts = await this.facts(a, policy);
    const at = new Date();
    const reasons = judge(policy, facts, at);
    const c: Compliance = {
      kind: a.kind,
      object: a.object,
      policy: policy.name,
      compliant: reasons.length === 0,
      reasons,
      checkedAt: at.toISOString(),
    };
    this.record(c);
    return c;
  }

  private async facts(a: PolicyAssignment, policy: Policy): Promise<ComplianceFacts> {
    const volumes = a.kind === 'vm' ? this.compute.vm(a.object).disks.map((d) => d.volume) : [a.object];
    const facts: ComplianceFacts = {
      volumes: volumes.map((v) => {
        const pool = this.storage.volume(v).pool;
        return { volume: v, pool, capabilities: this.capabilities.of(pool) };
      }),
    };
    if (policy.backup) {
      try {
        const r = await openRepository(repoAccess(policy.backup.repo, policy.backup.passphraseFile));
        const mine = (await r.listSnapshots()).filter(
          (s) => s.source.kind === a.kind && s.source.name === a.object,
        );
        const newest = mine.sort((x, y) => y.createdAt.localeCompare(x.createdAt))[0];
        facts.newestBackup = newest ? { createdAt: newest.createdAt } : null;
      } catch (err) {
        facts.newestBackup = factError(err);
      }
      const repo = repoAccess(policy.backup.repo).repo;
      const v = this.jobs
        .list({ kind: 'repository.verify', target: repo, limit: 5 })
        .find((j) => j.state !== 'running');
      if (v)
        facts.lastVerify = {
          id: v.id,
          state: v.state,
          ...(v.errorCode ? { errorCode: v.errorCode } : {}),
          ...(v.error ? { error: v.error } : {}),
          ...(v.endedAt ? { endedAt: v.endedAt } : {}),
        };
    }
    const check = a.kind === 'vm' ? this.checks?.last(a.object) : undefined;
    if (check)
      facts.lastCheck = {
        id: check.id,
        state: check.state,
        ...(check.reason ? { reason: check.reason } : {}),
        ...(check.endedAt ? { endedAt: check.endedAt } : {}),
      };
    const group = a.kind === 'vm' ? this.replication.groupOfVm(a.object) : this.replication.groupOf(a.object);
    if (group) {
      const g = this.replication.show(group);
      facts.replication = {
        group,
        peer: g.peer,
        ...(g.source?.rpoSeconds !== undefined ? { rpoSeconds: g.source.rpoSeconds } : {}),
        ...(g.source ? { state: g.source.state } : {}),
      };
    }
    return facts;
  }

  /** Keeps an object's compliance; a change of it is a `policy.compliance` event. */
  private record(c: Compliance): void {
    const prev = this.db
      .prepare('SELECT compliant, reasons FROM policy_compliance WHERE kind = ? AND object = ?')
      .get(c.kind, c.object) as { compliant: number; reasons: string } | undefined;
    const reasons = JSON.stringify(c.reasons.map((r) => r.message));
    this.db
      .prepare(
        `INSERT INTO policy_compliance (kind, object, compliant, reasons, checked_at) VALUES (?, ?, ?, ?, ?)
         ON CONFLICT(kind, object) DO UPDATE SET compliant = excluded.compliant, reasons = excluded.reasons, checked_at = excluded.checked_at`,
      )
      .run(c.kind, c.object, c.compliant ? 1 : 0, reasons, c.checkedAt);
    if (prev && prev.compliant === (c.compliant ? 1 : 0) && prev.reasons === reasons) return;
    this.events.append({
      actor: 'site',
      action: 'policy.compliance',
      target: `${c.kind}:${c.object}`,
      outcome: c.compliant ? 'ok' : 'warning',
      message: c.compliant
        ? `${c.kind} ${c.object} complies with policy ${c.policy}`
        : `${c.kind} ${c.object} does not comply with policy ${c.policy}: ${c.reasons.map((r) => r.message).join('; ')}`,
      details: {
        kind: c.kind,
        object: c.object,
        policy: c.policy,
        compliant: c.compliant,
        reasons: c.reasons,
      },
    });
  }

  private objectOf(t: PolicyObject, mustExist = true): { kind: 'vm' | 'volume'; object: string } {
    if ('vm' in t) return { kind: 'vm', object: mustExist ? this.compute.vm(t.vm).name : t.vm };
    if (mustExist) this.storage.volume(t.volume);
    return { kind: 'volume', object: t.volume };
  }

  private find(name: string): Policy | undefined {
    const r = this.db.prepare('SELECT * FROM policies WHERE name = ?').get(name) as
      { name: string; spec: string; created_at: string; updated_at: string } | undefined;
    return r
      ? {
          name: r.name,
          ...(JSON.parse(r.spec) as PolicySpec),
          createdAt: r.created_at,
          updatedAt: r.updated_at,
        }
      : undefined;
  }
}
