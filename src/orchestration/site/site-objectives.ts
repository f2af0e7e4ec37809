import { errorMessage, invalidArgument, logger } from '../../common/index.js';
import type { Db } from './database.js';
import type { Actor } from './domain.js';
import type { DrReport, DrReports } from './dr-reports.js';
import type { EventLog } from './events.js';
import {
  Objectives,
  judgeObjective,
  type GroupMeasures,
  type Objective,
  type ObjectiveAssignment,
  type ObjectiveReason,
  type ObjectiveSpec,
  type ObjectiveTarget,
} from './objectives.js';
import type { PeerLinks } from './peer-links.js';
import type { SiteReplication } from './replication.js';
import type { BusinessServices } from './services.js';

const log = logger('objectives');

export interface ObjectiveCompliance extends ObjectiveTarget {
  objective: string;
  compliant: boolean;
  reasons: ObjectiveReason[];
  checkedAt: string;
}

/** What one site measured of a group for its objective (answered to its peer too). */
interface SideMeasures {
  lastRehearsal: { report: string; at: string } | null;
  lastRecovery: { report: string; kind: string; at: string; seconds: number } | null;
  backups: { vm: string; at: string | null }[];
}

export interface ObjectiveAnswer extends Objective {
  appliedTo: ObjectiveTarget[];
}

/**
 * Service objectives of a site (objectives.ts): create, apply to a group or business service
 * (told to the sites those groups replicate with, where a takeover's report needs it), and the
 * compliance of each target, judged from what is measured — the RPO now from replication, the
 * last successful rehearsal and the RTO from the kept reports, the last backup from the jobs —
 * at this site and its peer. A change of compliance is an `objective.compliance` event.
 */
export class SiteObjectives {
  readonly store: Objectives;
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly db: Db,
    private readonly events: EventLog,
    private readonly replication: SiteReplication,
    private readonly services: BusinessServices,
    private readonly reports: DrReports,
    private readonly links: PeerLinks,
  ) {
    this.store = new Objectives(db);
    links.handle('dr.objective.put', async (_peer, args) => this.putFromPeer(args));
    links.handle('dr.objective.measures', async (_peer, args) => {
      const group = (args as { group?: unknown } | null)?.group;
      if (typeof group !== 'string') throw invalidArgument('dr.objective.measures: a group');
      return this.sideMeasures(group);
    });
  }

  list(): ObjectiveAnswer[] {
    const as = this.store.assignments();
    return this.store.list().map((o) => withTargets(o, as));
  }

  get(name: string): ObjectiveAnswer & { compliance: ObjectiveCompliance[] } {
    const o = this.store.get(name);
    const as = this.store.assignments();
    const compliance = as
      .filter((a) => a.objective === name)
      .map((a) => this.stored(a))
      .filter((c): c is ObjectiveCompliance => c !== undefined);
    return { ...withTargets(o, as), compliance };
  }

  create(actor: Actor, name: string, spec: ObjectiveSpec, opts: { replace?: boolean } = {}): Objective {
    try {
      const o = this.store.put(name, spec, opts);
      this.events.append({
        actor,
        action: 'objective.create',
        target: name,
        outcome: 'ok',
        message: `service objective ${name}: ${describe(o)}`,
      });
      return o;
    } catch (err) {
      this.failed(actor, 'objective.create', name, err);
      throw err;
    }
  }

  delete(actor: Actor, name: string): void {
    try {
      this.store.delete(name);
      this.events.append({
        actor,
        action: 'objective.delete',
        target: name,
        outcome: 'ok',
        message: `service objective ${name} deleted`,
      });
    } catch (err) {
      this.failed(actor, 'objective.delete', name, err);
      throw err;
    }
  }

  /**
   * Applies an objective (or none: undefined) to a group or business service here, and tells the
   * sites its groups replicate with; one that does not answer is named in `notTold`.
   */
  async apply(
    actor: Actor,
    name: string | undefined,
    t: ObjectiveTarget,
  ): Promise<{ kind: string; target: string; objective: string | null; notTold?: string[] }> {
    let objective: Objective | undefined;
    try {
      objective = name === undefined ? undefined : this.store.get(name);
      this.groupsOf(t); // the target exists
      this.store.assign(t, name);
      this.events.append({
        actor,
        action: 'objective.apply',
        target: `${t.kind}:${t.target}`,
        outcome: 'ok',
        message:
          name === undefined
            ? `${t.kind} ${t.target} has no service objective now`
            : `service objective ${name} applies to ${t.kind} ${t.target}`,
      });
    } catch (err) {
      this.failed(actor, 'objective.apply', `${t.kind}:${t.target}`, err);
      throw err;
    }
    const notTold: string[] = [];
    for (const peer of this.peersOf(t))
      try {
        await this.links.call(
          peer,
          'dr.objective.put',
          { ...(objective ? { objective } : {}), assignment: { ...t, objective: name ?? null } },
          { timeoutMs: 5000 },
        );
      } catch (err) {
        notTold.push(`${peer}: ${errorMessage(err)}`);
      }
    return { ...t, objective: name ?? null, ...(notTold.length ? { notTold } : {}) };
  }

  /** The objective that applies to a group (its own, else its service's) or a service. */
  objectiveFor(target: string): Objective | undefined {
    const service = this.services.find(target) ?? this.services.ofGroup(target);
    const a =
      (this.services.find(target) ? undefined : this.store.assignmentOf({ kind: 'group', target })) ??
      (service ? this.store.assignmentOf({ kind: 'service', target: service.name }) : undefined);
    return a ? this.store.find(a.objective) : undefined;
  }

  /** Judges every target (or those of one objective) now; a change is an `objective.compliance` event. */
  async compliance(objective?: string): Promise<ObjectiveCompliance[]> {
    if (objective !== undefined) this.store.get(objective);
    const out: ObjectiveCompliance[] = [];
    for (const a of this.store.assignments()) {
      if (objective !== undefined && a.objective !== objective) continue;
      const o = this.store.find(a.objective);
      if (!o) continue;
      const at = new Date();
      const reasons: ObjectiveReason[] = [];
      let groups: string[];
      try {
        groups = this.groupsOf(a);
      } catch (err) {
        reasons.push({ code: 'replication', group: a.target, message: errorMessage(err) });
        groups = [];
      }
      for (const g of groups) reasons.push(...judgeObjective(o, await this.measures(g, o), at));
      const c: ObjectiveCompliance = {
        kind: a.kind,
        target: a.target,
        objective: o.name,
        compliant: reasons.length === 0,
        reasons,
        checkedAt: at.toISOString(),
      };
      this.record(c);
      out.push(c);
    }
    return out;
  }

  /** Judges compliance every `intervalMs` (so that changes become events without anyone asking). */
  watch(intervalMs: number): void {
    this.unwatch();
    this.timer = setInterval(() => {
      this.compliance().catch((err: unknown) =>
        log.warn({ err: errorMessage(err) }, 'judging objectives failed'),
      );
    }, intervalMs).unref();
  }

  unwatch(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }

  /** What this site and the group's peer measured, merged (the newest of each wins). */
  private async measures(group: string, o: ObjectiveSpec): Promise<GroupMeasures> {
    const g = this.replication.show(group);
    const m: GroupMeasures = { group, keepSeconds: g.keepSeconds };
    if (g.paused) m.notReplicating = 'it is paused';
    else if (g.takenOver)
      m.notReplicating = `this site took it over at ${g.takenOver.at}; resync it to protect it again (haven dr resync ${group})`;
    else if (g.fenced) m.notReplicating = `site ${g.fenced.by} took it over at ${g.fenced.takenOverAt}`;
    if (g.source?.rpoSeconds !== undefined) m.rpoSeconds = g.source.rpoSeconds;
    else if (g.target?.newestCheckpoint)
      m.rpoSeconds = Math.round((Date.now() - Date.parse(g.target.newestCheckpoint.time)) / 10) / 100;
    if (
      o.rehearsalMaxAgeSeconds === undefined &&
      o.rtoSeconds === undefined &&
      o.backupMaxAgeSeconds === undefined
    )
      return m;
    const here = this.sideMeasures(group);
    let there: SideMeasures | undefined;
    try {
      there = (await this.links.call(
        g.peer,
        'dr.objective.measures',
        { group },
        { timeoutMs: 5000 },
      )) as SideMeasures;
    } catch (err) {
      m.peerUnread = `site ${g.peer}'s reports and backups could not be read: ${errorMessage(err)}`;
    }
    const newer = <T extends { at: string } | null>(a: T, b: T | undefined): T =>
      !b ? a : !a ? b : Date.parse(b.at) > Date.parse(a.at) ? b : a;
    m.lastRehearsal = newer(here.lastRehearsal, there?.lastRehearsal);
    m.lastRecovery = newer(here.lastRecovery, there?.lastRecovery);
    const backups = new Map<string, string | null>();
    for (const b of [...here.backups, ...(there?.backups ?? [])]) {
      const had = backups.get(b.vm);
      backups.set(b.vm, !had ? b.at : !b.at ? had : Date.parse(b.at) > Date.parse(had) ? b.at : had);
    }
    m.backups = [...backups].map(([vm, at]) => ({ vm, at }));
    return m;
  }

  /** What this site knows of a group: its newest successful rehearsal, RTO measured, VMs' backups. */
  private sideMeasures(group: string): SideMeasures {
    const rehearsal = this.reports.newest('rehearse', group);
    const takeover = this.reports.newest('takeover', group, (r) => r.rtoSeconds !== undefined);
    const timed = [rehearsal, takeover].filter((r): r is DrReport => r?.rtoSeconds !== undefined);
    const recovery = timed.sort((a, b) => Date.parse(b.endedAt) - Date.parse(a.endedAt))[0];
    const g = this.replication.hasGroup(group) ? this.replication.show(group) : undefined;
    const vms = g?.role === 'source' ? (g.vms ?? []) : [];
    const lastBackup = this.db.prepare(
      "SELECT MAX(ended_at) AS at FROM jobs WHERE kind = 'vm.backup' AND state = 'succeeded' AND target = ?",
    );
    return {
      lastRehearsal: rehearsal ? { report: rehearsal.id, at: rehearsal.endedAt } : null,
      lastRecovery: recovery
        ? { report: recovery.id, kind: recovery.kind, at: recovery.endedAt, seconds: recovery.rtoSeconds! }
        : null,
      backups: vms.map((vm) => ({ vm, at: (lastBackup.get(vm) as { at: string | null }).at })),
    };
  }

  private groupsOf(t: ObjectiveTarget): string[] {
    if (t.kind === 'service') return this.services.get(t.target).tiers.flat();
    this.replication.show(t.target); // NOT_FOUND names it
    return [t.target];
  }

  private peersOf(t: ObjectiveTarget): string[] {
    return [...new Set(this.groupsOf(t).map((g) => this.replication.show(g).peer))];
  }

  /** A peer's objective and where it applies, stored here when the target exists here too. */
  private putFromPeer(raw: unknown): { stored: boolean } {
    const a = raw as {
      objective?: { name?: unknown };
      assignment?: { kind?: unknown; target?: unknown; objective?: unknown };
    } | null;
    const as = a?.assignment;
    if (!as || (as.kind !== 'group' && as.kind !== 'service') || typeof as.target !== 'string')
      throw invalidArgument('dr.objective.put: an assignment of a group or service');
    if (a.objective) {
      if (typeof a.objective.name !== 'string')
        throw invalidArgument('dr.objective.put: the objective has no name');
      this.store.put(a.objective.name, a.objective, { replace: true });
    }
    const t = { kind: as.kind, target: as.target } as ObjectiveTarget;
    try {
      this.groupsOf(t);
    } catch {
      return { stored: false };
    }
    this.store.assign(t, typeof as.objective === 'string' ? as.objective : undefined);
    return { stored: true };
  }

  private stored(a: ObjectiveTarget): ObjectiveCompliance | undefined {
    const r = this.db
      .prepare('SELECT * FROM objective_compliance WHERE kind = ? AND target = ?')
      .get(a.kind, a.target) as
      { objective: string; compliant: number; reasons: string; checked_at: string } | undefined;
    return r
      ? {
          kind: a.kind,
          target: a.target,
          objective: r.objective,
          compliant: r.compliant === 1,
          reasons: JSON.parse(r.reasons) as ObjectiveReason[],
          checkedAt: r.checked_at,
        }
      : undefined;
  }

  /** Keeps a target's compliance; a change of it (met or not, or the reasons' kinds) is an event. */
  private record(c: ObjectiveCompliance): void {
    const prev = this.stored(c);
    const codes = (rs: ObjectiveReason[]) => rs.map((r) => `${r.group}:${r.code}`).join(',');
    this.db
      .prepare(
        `INSERT INTO objective_compliance (kind, target, objective, compliant, reasons, checked_at) VALUES (?, ?, ?, ?, ?, ?)
         ON CONFLICT(kind, target) DO UPDATE SET objective = excluded.objective, compliant = excluded.compliant,
           reasons = excluded.reasons, checked_at = excluded.checked_at`,
      )
      .run(c.kind, c.target, c.objective, c.compliant ? 1 : 0, JSON.stringify(c.reasons), c.checkedAt);
    if (
      prev &&
      prev.objective === c.objective &&
      prev.compliant === c.compliant &&
      codes(prev.reasons) === codes(c.reasons)
    )
      return;
    this.events.append({
      actor: 'site',
      action: 'objective.compliance',
      target: `${c.kind}:${c.target}`,
      outcome: c.compliant ? 'ok' : 'warning',
      message: c.compliant
        ? `${c.kind} ${c.target} meets service objective ${c.objective}`
        : `${c.kind} ${c.target} does not meet service objective ${c.objective}: ${c.reasons.map((r) => r.message).join('; ')}`,
      details: {
        kind: c.kind,
        target: c.target,
        objective: c.objective,
        compliant: c.compliant,
        reasons: c.reasons,
      },
    });
  }

  private failed(actor: Actor, action: string, target: string, err: unknown): void {
    const code = (err as { code?: string }).code;
    if (code && code !== 'INTERNAL')
      this.events.append({
        actor,
        action,
        target,
        outcome: 'failed',
        message: `${action} ${target}: ${errorMessage(err)}`,
      });
  }
}

function withTargets(o: Objective, as: ObjectiveAssignment[]): ObjectiveAnswer {
  return {
    ...o,
    appliedTo: as.filter((a) => a.objective === o.name).map((a) => ({ kind: a.kind, target: a.target })),
  };
}

/** An objective in one line: "RPO 15 s, history 1 h, rehearsed every 7 d, RTO 5 min, backup 1 d". */
export function describe(o: ObjectiveSpec): string {
  const s = (n: number) => `${n} s`;
  return (
    [
      o.rpoSeconds !== undefined ? `RPO ${s(o.rpoSeconds)}` : '',
      o.historySeconds !== undefined ? `history ${s(o.historySeconds)}` : '',
      o.rehearsalMaxAgeSeconds !== undefined ? `rehearsed every ${s(o.rehearsalMaxAgeSeconds)}` : '',
      o.rtoSeconds !== undefined ? `RTO ${s(o.rtoSeconds)}` : '',
      o.backupMaxAgeSeconds !== undefined ? `backup at most ${s(o.backupMaxAgeSeconds)} old` : '',
    ]
      .filter(Boolean)
      .join(', ') || 'no target'
  );
}
