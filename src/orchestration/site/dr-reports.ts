import { notFound } from '../../common/index.js';
import { selectNewest, type Db } from './database.js';
import type { Job, JobLogLine } from './jobs.js';
import { dur, type ObjectiveSpec } from './objectives.js';

/**
 * The report of one DR operation (takeover, rehearsal, migrate), kept in the site database when
 * its job ends — beyond the job, for the operator and the auditor: what was done step by step,
 * from which checkpoint, and the RPO and RTO achieved against the objective that applied.
 */
export interface DrReport {
  /** The job's id. */
  id: string;
  /** takeover, rehearse, migrate or evacuate. */
  kind: string;
  /** The group or business service. */
  target: string;
  groups: string[];
  outcome: 'succeeded' | 'failed' | 'cancelled';
  error?: string;
  actor: string;
  site: string;
  startedAt: string;
  endedAt: string;
  elapsedSeconds: number;
  /** The checkpoint recovered (or cloned), per group. */
  checkpoints: { group: string; seq: number; time: string; name?: string }[];
  /** How old the data recovered was when the operation began (0 for a migrate: nothing lost). */
  rpoSeconds?: number;
  /** From the command to the last VM up (a rehearsal: to the last heartbeat; a migrate: the downtime). */
  rtoSeconds?: number;
  /** The objective that applied to the target, and whether each achieved value met it. */
  objective?: { name: string; rpoSeconds?: number; rtoSeconds?: number; rpoMet?: boolean; rtoMet?: boolean };
  vms: { name: string; group?: string; startedAt?: string; passed?: boolean; detail?: string }[];
  /** The job's log: each step with its time and outcome (info, warning, error). */
  steps: JobLogLine[];
  /** The operation's own result, as the job returned it. */
  result?: unknown;
}

export type ReportSummary = Pick<
  DrReport,
  'id' | 'kind' | 'target' | 'groups' | 'outcome' | 'startedAt' | 'endedAt' | 'rpoSeconds' | 'rtoSeconds'
> & { objectiveMet?: boolean };

const round = (n: number) => Math.round(n * 1000) / 1000;
const secondsBetween = (a: string, b: string) => round((Date.parse(b) - Date.parse(a)) / 1000);

type Cp = { seq: number; time: string; name?: string };
type GroupResult = {
  group?: string;
  checkpoint?: Cp;
  dataAgeSeconds?: number;
  elapsedSeconds?: number;
  startedAt?: string;
  endedAt?: string;
  vms?: { name: string; startedAt?: string; passed?: boolean; detail?: string; bootSeconds?: number }[];
  started?: { name: string; startedAt?: string; passed?: boolean; detail?: string }[];
  downtimeSeconds?: number;
  tiers?: { groups: GroupResult[] }[];
  services?: { tiers: { groups: GroupResult[] }[] }[];
};

/** What a job's result says (a group's report, or a service's with its tiers): a pure function. */
export function measure(
  kind: string,
  result: unknown,
): Pick<DrReport, 'checkpoints' | 'vms'> & {
  rpoSeconds?: number;
  rtoSeconds?: number;
  groups: string[];
} {
  const r = (result ?? {}) as GroupResult;
  const parts: GroupResult[] = r.services
    ? r.services.flatMap((s) => s.tiers.flatMap((t) => t.groups))
    : r.tiers
      ? r.tiers.flatMap((t) => t.groups)
      : [r];
  const checkpoints = parts.flatMap((p) =>
    p.group && p.checkpoint
      ? [
          {
            group: p.group,
            seq: p.checkpoint.seq,
            time: p.checkpoint.time,
            ...(p.checkpoint.name ? { name: p.checkpoint.name } : {}),
          },
        ]
      : [],
  );
  const vms = parts.flatMap((p) =>
    (p.vms ?? p.started ?? []).map((v) => ({
      name: v.name,
      ...(p.group ? { group: p.group } : {}),
      ...(v.startedAt ? { startedAt: v.startedAt } : {}),
      ...(typeof v.passed === 'boolean' ? { passed: v.passed } : {}),
      ...(typeof v.detail === 'string' && v.detail ? { detail: v.detail } : {}),
    })),
  );
  const groups = parts.flatMap((p) => (p.group ? [p.group] : []));
  let rpo: number | undefined;
  let rto: number | undefined;
  if (kind === 'migrate' || kind === 'evacuate') {
    rpo = checkpoints.length ? 0 : undefined; // the final checkpoint holds every completed write
    rto = r.downtimeSeconds;
  } else {
    const ages = parts.flatMap((p) =>
      p.dataAgeSeconds !== undefined
        ? [p.dataAgeSeconds]
        : p.checkpoint && p.startedAt
          ? [secondsBetween(p.checkpoint.time, p.startedAt)]
          : [],
    );
    rpo = ages.length ? Math.max(...ages) : undefined;
    rto = r.elapsedSeconds ?? (r.startedAt && r.endedAt ? secondsBetween(r.startedAt, r.endedAt) : undefined);
  }
  return {
    groups,
    checkpoints,
    vms,
    ...(rpo !== undefined ? { rpoSeconds: rpo } : {}),
    ...(rto !== undefined ? { rtoSeconds: rto } : {}),
  };
}

interface Row {
  id: string;
  kind: string;
  target: string;
  groups: string;
  outcome: DrReport['outcome'];
  actor: string;
  started_at: string;
  ended_at: string;
  report: string;
}

/** The kept reports (table dr_reports). */
export class DrReports {
  constructor(
    private readonly db: Db,
    private readonly site: string,
  ) {}

  /** Keeps the report of a DR job that ended, with the objective that applied (if any). */
  record(
    job: Job,
    steps: JobLogLine[],
    groups: string[],
    objective?: { name: string } & ObjectiveSpec,
  ): DrReport {
    const kind = job.kind.replace(/^dr\./, '');
    const m = job.state === 'succeeded' ? measure(kind, job.result) : undefined;
    const startedAt = job.startedAt ?? job.createdAt;
    const endedAt = job.endedAt ?? new Date().toISOString();
    const report: DrReport = {
      id: job.id,
      kind,
      target: job.target,
      groups: m?.groups.length ? m.groups : groups,
      outcome: job.state === 'running' ? 'failed' : job.state,
      ...(job.error ? { error: job.error } : {}),
      actor: job.actor,
      site: this.site,
      startedAt,
      endedAt,
      elapsedSeconds: secondsBetween(startedAt, endedAt),
      checkpoints: m?.checkpoints ?? [],
      ...(m?.rpoSeconds !== undefined ? { rpoSeconds: m.rpoSeconds } : {}),
      ...(m?.rtoSeconds !== undefined ? { rtoSeconds: m.rtoSeconds } : {}),
      ...(objective
        ? {
            objective: {
              name: objective.name,
              ...(objective.rpoSeconds !== undefined ? { rpoSeconds: objective.rpoSeconds } : {}),
              ...(objective.rtoSeconds !== undefined ? { rtoSeconds: objective.rtoSeconds } : {}),
              ...(objective.rpoSeconds !== undefined && m?.rpoSeconds !== undefined
                ? { rpoMet: m.rpoSeconds <= objective.rpoSeconds }
                : {}),
              ...(objective.rtoSeconds !== undefined && m?.rtoSeconds !== undefined
                ? { rtoMet: m.rtoSeconds <= objective.rtoSeconds }
                : {}),
            },
          }
        : {}),
      vms: m?.vms ?? [],
      steps,
      ...(job.result !== undefined ? { result: job.result } : {}),
    };
    this.db
      .prepare(
        `INSERT OR REPLACE INTO dr_reports (id, kind, target, groups, outcome, actor, started_at, ended_at, report)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
      )
      .run(
        report.id,
        kind,
        report.target,
        JSON.stringify(report.groups),
        report.outcome,
        report.actor,
        startedAt,
        endedAt,
        JSON.stringify(report),
      );
    return report;
  }

  get(id: string): DrReport {
    const r = this.db.prepare('SELECT report FROM dr_reports WHERE id = ?').get(id) as
      { report: string } | undefined;
    if (!r) throw notFound(`no DR report ${id} on this site (haven dr reports lists them)`);
    return JSON.parse(r.report) as DrReport;
  }

  list(q: { kind?: string; target?: string; outcome?: string; limit?: number } = {}): ReportSummary[] {
    return selectNewest<Row>(this.db, 'dr_reports', q, ['kind', 'target', 'outcome'], 'ended_at DESC').map(
      (r) => {
        const d = JSON.parse(r.report) as DrReport;
        const met = [d.objective?.rpoMet, d.objective?.rtoMet].filter((x) => x !== undefined);
        return {
          id: d.id,
          kind: d.kind,
          target: d.target,
          groups: d.groups,
          outcome: d.outcome,
          startedAt: d.startedAt,
          endedAt: d.endedAt,
          ...(d.rpoSeconds !== undefined ? { rpoSeconds: d.rpoSeconds } : {}),
          ...(d.rtoSeconds !== undefined ? { rtoSeconds: d.rtoSeconds } : {}),
          ...(met.length ? { objectiveMet: met.every(Boolean) } : {}),
        };
      },
    );
  }

  /** The newest report of `kind` that succeeded for `group` (alone or in a service). */
  newest(kind: string, group: string, pass?: (r: DrReport) => boolean): DrReport | undefined {
    const rows = this.db
      .prepare(
        `SELECT report FROM dr_reports WHERE kind = ? AND outcome = 'succeeded'
           AND EXISTS (SELECT 1 FROM json_each(dr_reports.groups) WHERE value = ?)
         ORDER BY ended_at DESC LIMIT 20`,
      )
      .all(kind, group) as { report: string }[];
    for (const r of rows) {
      const d = JSON.parse(r.report) as DrReport;
      if (!pass || pass(d)) return d;
    }
    return undefined;
  }
}

/** A report's title: "Takeover of shop at site b" (the text and HTML forms). */
export function reportTitle(r: DrReport): string {
  const what =
    {
      takeover: 'Takeover',
      rehearse: 'Rehearsal',
      migrate: 'Migrate',
      evacuate: 'Evacuation',
      failback: 'Failback',
    }[r.kind] ?? r.kind;
  return `${what} of ${r.target} at site ${r.site}`;
}

/** A report as people read it (haven dr report ID --text). */
export function reportText(r: DrReport): string {
  const lines = [
    `${reportTitle(r)}: ${r.outcome.toUpperCase()}`,
    `report ${r.id}, by ${r.actor}`,
    `started ${r.startedAt}, ended ${r.endedAt} (${dur(r.elapsedSeconds)})`,
  ];
  if (r.error) lines.push(`error: ${r.error}`);
  if (r.groups.length) lines.push(`groups: ${r.groups.join(', ')}`);
  for (const c of r.checkpoints)
    lines.push(`checkpoint of ${c.group}: ${c.seq}${c.name ? ` (${c.name})` : ''} of ${c.time}`);
  const against = (achieved: number | undefined, target: number | undefined, met: boolean | undefined) =>
    achieved === undefined
      ? 'not measured'
      : `${dur(achieved)}` +
        (target !== undefined ? ` — objective ${dur(target)}: ${met ? 'met' : 'NOT MET'}` : '');
  lines.push(`RPO achieved: ${against(r.rpoSeconds, r.objective?.rpoSeconds, r.objective?.rpoMet)}`);
  lines.push(`RTO achieved: ${against(r.rtoSeconds, r.objective?.rtoSeconds, r.objective?.rtoMet)}`);
  lines.push(r.objective ? `objective: ${r.objective.name}` : 'objective: none applied');
  if (r.vms.length) {
    lines.push('', 'VMs:');
    for (const v of r.vms)
      lines.push(
        `  ${v.name}${v.group ? ` (group ${v.group})` : ''}` +
          (v.startedAt ? `  started ${v.startedAt}` : '') +
          (v.passed !== undefined ? `  heartbeat ${v.passed ? 'passed' : 'FAILED'}` : '') +
          (v.detail ? `: ${v.detail}` : ''),
      );
  }
  lines.push('', 'Steps:');
  for (const s of r.steps) lines.push(`  ${s.time}  ${s.level.padEnd(7)}  ${s.message}`);
  return lines.join('\n') + '\n';
}
