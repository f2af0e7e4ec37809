import { conflict, invalidArgument, notFound } from '../../common/index.js';
import { checkName } from '../../storage/index.js';
import { now, type Db } from './database.js';

/**
 * A service objective: a named template of what a group (or every group of a business service)
 * must achieve. Each target is optional; compliance judges the ones given.
 */
export interface ObjectiveSpec {
  description?: string;
  /** The replica may be at most this old (the RPO now, from replication). */
  rpoSeconds?: number;
  /** Point-in-time history: checkpoints kept at least this long (any of them can be recovered). */
  historySeconds?: number;
  /** Rehearsal cadence: the last successful rehearsal at most this old. */
  rehearsalMaxAgeSeconds?: number;
  /** The time to recover (the last rehearsal's or takeover's, from its start to the last VM up) at most this. */
  rtoSeconds?: number;
  /** The newest backup of each VM of the group at most this old. */
  backupMaxAgeSeconds?: number;
}

export interface Objective extends ObjectiveSpec {
  name: string;
  createdAt: string;
  updatedAt: string;
}

export type ObjectiveTarget = { kind: 'group' | 'service'; target: string };

export interface ObjectiveAssignment extends ObjectiveTarget {
  objective: string;
  assignedAt: string;
}

const FIELDS = [
  ['rpoSeconds', 'RPO'],
  ['historySeconds', 'history window'],
  ['rehearsalMaxAgeSeconds', 'rehearsal cadence'],
  ['rtoSeconds', 'RTO'],
  ['backupMaxAgeSeconds', 'backup age'],
] as const;

/** An objective as given (by the API, a peer): checked field by field, each error naming it. */
export function checkObjectiveSpec(name: string, raw: unknown): ObjectiveSpec {
  if (typeof raw !== 'object' || raw === null) throw invalidArgument(`objective ${name}: not an object`);
  const r = raw as Record<string, unknown>;
  const spec: ObjectiveSpec = {};
  if (r.description !== undefined) {
    if (typeof r.description !== 'string' || r.description.length > 500)
      throw invalidArgument(`objective ${name}: a description is a string of at most 500 characters`);
    spec.description = r.description;
  }
  for (const [k, what] of FIELDS) {
    const v = r[k];
    if (v === undefined) continue;
    if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0 || v > 366 * 86400)
      throw invalidArgument(
        `objective ${name}: the ${what} (${k}) must be more than 0 s and at most a year, not ${String(v)}`,
      );
    spec[k] = v;
  }
  if (!FIELDS.some(([k]) => spec[k] !== undefined))
    throw invalidArgument(
      `objective ${name}: give at least one target (RPO, history window, rehearsal cadence, RTO or backup age)`,
    );
  return spec;
}

interface Row {
  name: string;
  spec: string;
  created_at: string;
  updated_at: string;
}

const toObjective = (r: Row): Objective => ({
  name: r.name,
  ...(JSON.parse(r.spec) as ObjectiveSpec),
  createdAt: r.created_at,
  updatedAt: r.updated_at,
});

/** The objectives of a site and where they apply (tables objectives, objective_assignments). */
export class Objectives {
  constructor(private readonly db: Db) {}

  list(): Objective[] {
    return (this.db.prepare('SELECT * FROM objectives ORDER BY name').all() as Row[]).map(toObjective);
  }

  find(name: string): Objective | undefined {
    const r = this.db.prepare('SELECT * FROM objectives WHERE name = ?').get(name) as Row | undefined;
    return r && toObjective(r);
  }

  get(name: string): Objective {
    const o = this.find(name);
    if (!o) throw notFound(`service objective ${name} does not exist on this site`);
    return o;
  }

  /** Stores an objective (`replace`: a peer's copy, or an update, may overwrite one of that name). */
  put(name: string, raw: unknown, opts: { replace?: boolean } = {}): Objective {
    checkName('service objective', name);
    const spec = checkObjectiveSpec(name, raw);
    if (!opts.replace && this.find(name)) throw conflict(`service objective ${name} exists already`);
    const t = now();
    this.db
      .prepare(
        `INSERT INTO objectives (name, spec, created_at, updated_at) VALUES (?, ?, ?, ?)
         ON CONFLICT(name) DO UPDATE SET spec = excluded.spec, updated_at = excluded.updated_at`,
      )
      .run(name, JSON.stringify(spec), t, t);
    return this.get(name);
  }

  delete(name: string): void {
    this.get(name);
    const used = this.assignments().filter((a) => a.objective === name);
    if (used.length)
      throw conflict(
        `service objective ${name} is applied to ${used.map((a) => `${a.kind} ${a.target}`).join(', ')}: apply another or none there first`,
      );
    this.db.prepare('DELETE FROM objectives WHERE name = ?').run(name);
  }

  assignments(): ObjectiveAssignment[] {
    return (
      this.db.prepare('SELECT * FROM objective_assignments ORDER BY kind, target').all() as {
        kind: 'group' | 'service';
        target: string;
        objective: string;
        assigned_at: string;
      }[]
    ).map((r) => ({ kind: r.kind, target: r.target, objective: r.objective, assignedAt: r.assigned_at }));
  }

  /** Applies `objective` to a group or service (replacing the one it had), or none (undefined). */
  assign(t: ObjectiveTarget, objective: string | undefined): void {
    if (objective === undefined) {
      this.db
        .prepare('DELETE FROM objective_assignments WHERE kind = ? AND target = ?')
        .run(t.kind, t.target);
      this.db.prepare('DELETE FROM objective_compliance WHERE kind = ? AND target = ?').run(t.kind, t.target);
      return;
    }
    this.get(objective);
    this.db
      .prepare(
        `INSERT INTO objective_assignments (kind, target, objective, assigned_at) VALUES (?, ?, ?, ?)
         ON CONFLICT(kind, target) DO UPDATE SET objective = excluded.objective, assigned_at = excluded.assigned_at`,
      )
      .run(t.kind, t.target, objective, now());
  }

  assignmentOf(t: ObjectiveTarget): ObjectiveAssignment | undefined {
    return this.assignments().find((a) => a.kind === t.kind && a.target === t.target);
  }
}

/** What compliance of one group is judged from, gathered by the site (site-objectives.ts). */
export interface GroupMeasures {
  group: string;
  /** Why the group does not replicate now (paused, taken over, …), when it does not. */
  notReplicating?: string;
  /** How old the replica is now (absent before the first checkpoint). */
  rpoSeconds?: number;
  /** How long its checkpoints are kept. */
  keepSeconds?: number;
  /** The newest successful rehearsal of the group (its report), null when none is known. */
  lastRehearsal?: { report: string; at: string } | null;
  /** The newest recovery time measured (a rehearsal's or takeover's report), null when none. */
  lastRecovery?: { report: string; kind: string; at: string; seconds: number } | null;
  /** The newest successful backup of each of its VMs (null: none). */
  backups?: { vm: string; at: string | null }[];
  /** Why the other site's reports and backups could not be read (they may hold newer ones). */
  peerUnread?: string;
}

export interface ObjectiveReason {
  code: 'replication' | 'rpo' | 'history' | 'rehearsal' | 'rto' | 'backup';
  group: string;
  message: string;
}

/** Compliance of one group with an objective: a pure function of the measures and the time. */
export function judgeObjective(o: ObjectiveSpec, m: GroupMeasures, at: Date): ObjectiveReason[] {
  const out: ObjectiveReason[] = [];
  const g = m.group;
  const age = (iso: string) => (at.getTime() - Date.parse(iso)) / 1000;
  const why = (code: ObjectiveReason['code'], message: string) =>
    out.push({
      code,
      group: g,
      message:
        m.peerUnread && (code === 'rehearsal' || code === 'rto' || code === 'backup')
          ? `${message} (${m.peerUnread})`
          : message,
    });
  if (o.rpoSeconds !== undefined) {
    if (m.notReplicating) why('replication', `group ${g} does not replicate: ${m.notReplicating}`);
    else if (m.rpoSeconds === undefined)
      why('rpo', `group ${g} has no checkpoint applied at its replica yet`);
    else if (m.rpoSeconds > o.rpoSeconds)
      why(
        'rpo',
        `group ${g}'s replica is ${dur(m.rpoSeconds)} old, more than the RPO of ${dur(o.rpoSeconds)}`,
      );
  }
  if (o.historySeconds !== undefined && m.keepSeconds !== undefined && m.keepSeconds < o.historySeconds)
    why(
      'history',
      `group ${g} keeps checkpoints ${dur(m.keepSeconds)}, less than the history window of ${dur(o.historySeconds)} (haven replication enable … --keep)`,
    );
  if (o.rehearsalMaxAgeSeconds !== undefined && m.lastRehearsal !== undefined) {
    if (m.lastRehearsal === null) why('rehearsal', `group ${g} was never rehearsed successfully`);
    else if (age(m.lastRehearsal.at) > o.rehearsalMaxAgeSeconds)
      why(
        'rehearsal',
        `group ${g}'s last successful rehearsal (report ${m.lastRehearsal.report}) is ${dur(age(m.lastRehearsal.at))} old, more than the cadence of ${dur(o.rehearsalMaxAgeSeconds)}`,
      );
  }
  if (o.rtoSeconds !== undefined && m.lastRecovery !== undefined) {
    if (m.lastRecovery === null) why('rto', `group ${g} has no RTO measured yet (rehearse it)`);
    else if (m.lastRecovery.seconds > o.rtoSeconds)
      why(
        'rto',
        `group ${g}'s last ${m.lastRecovery.kind} (report ${m.lastRecovery.report}) took ${dur(m.lastRecovery.seconds)}, more than the RTO of ${dur(o.rtoSeconds)}`,
      );
  }
  if (o.backupMaxAgeSeconds !== undefined)
    for (const b of m.backups ?? [])
      if (b.at === null) why('backup', `VM ${b.vm} of group ${g} has no backup`);
      else if (age(b.at) > o.backupMaxAgeSeconds)
        why(
          'backup',
          `VM ${b.vm} of group ${g}: its newest backup is ${dur(age(b.at))} old, more than ${dur(o.backupMaxAgeSeconds)}`,
        );
  return out;
}

/** A duration as people read it: 0.8 s, 42 s, 5 min, 3.5 h, 2 d. */
export function dur(seconds: number): string {
  const s = Math.max(0, seconds);
  if (s < 10) return `${Math.round(s * 100) / 100} s`;
  if (s < 120) return `${Math.round(s)} s`;
  if (s < 7200) return `${Math.round((s / 60) * 10) / 10} min`;
  if (s < 2 * 86400) return `${Math.round((s / 3600) * 10) / 10} h`;
  return `${Math.round((s / 86400) * 10) / 10} d`;
}
