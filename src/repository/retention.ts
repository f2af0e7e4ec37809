import { HavenError } from '../common/index.js';

/** How many snapshots to keep per period; unset periods keep nothing by themselves. */
export interface RetentionPolicy {
  last?: number;
  hourly?: number;
  daily?: number;
  weekly?: number;
  monthly?: number;
  yearly?: number;
}

export interface Dated {
  id: string;
  createdAt: string;
  protected?: boolean;
}

const PERIODS: [keyof RetentionPolicy, (d: Date) => string][] = [
  ['hourly', (d) => d.toISOString().slice(0, 13)],
  ['daily', (d) => d.toISOString().slice(0, 10)],
  ['weekly', (d) => isoWeek(d)],
  ['monthly', (d) => d.toISOString().slice(0, 7)],
  ['yearly', (d) => d.toISOString().slice(0, 4)],
];

/**
 * Which snapshots a policy keeps, with the reasons (as restic and Proxmox do): the newest
 * `last`, then for each period the newest snapshot of each of the newest N periods that have
 * one. Protected snapshots are always kept. Times are UTC.
 */
export function selectRetained<T extends Dated>(
  snapshots: T[],
  policy: RetentionPolicy,
): Map<string, string[]> {
  const newestFirst = [...snapshots].sort((a, b) => b.createdAt.localeCompare(a.createdAt));
  const keep = new Map<string, string[]>();
  const why = (id: string, reason: string) => keep.set(id, [...(keep.get(id) ?? []), reason]);
  newestFirst.slice(0, policy.last ?? 0).forEach((s) => why(s.id, 'last'));
  for (const [period, bucket] of PERIODS) {
    const n = policy[period] ?? 0;
    const seen = new Set<string>();
    for (const s of newestFirst) {
      if (seen.size >= n) break;
      const b = bucket(new Date(s.createdAt));
      if (seen.has(b)) continue;
      seen.add(b);
      why(s.id, period);
    }
  }
  for (const s of newestFirst) if (s.protected) why(s.id, 'protected');
  return keep;
}

function isoWeek(d: Date): string {
  const t = new Date(Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate()));
  const day = t.getUTCDay() || 7;
  t.setUTCDate(t.getUTCDate() + 4 - day);
  const yearStart = Date.UTC(t.getUTCFullYear(), 0, 1);
  const week = Math.ceil(((t.getTime() - yearStart) / 86400000 + 1) / 7);
  return `${t.getUTCFullYear()}-W${String(week).padStart(2, '0')}`;
}

export interface Sourced extends Dated {
  source: { kind: string; name: string };
}

/** What a prune does, per source: retention applies to each source's snapshots on their own. */
export interface PrunePlan {
  sources: { source: string; kept: { id: string; reasons: string[] }[]; removed: string[] }[];
}

/** "vm:web1": how a source is named in `repo list` and in --source. */
export const sourceName = (s: Sourced) => `${s.source.kind}:${s.source.name}`;

/**
 * Applies a policy to each source's snapshots (all sources, or the one `source` names: "kind:name",
 * or a bare name that only one source has). A policy that would delete every snapshot of a
 * source is refused unless `deleteAll` says that is meant.
 */
export function planPrune<T extends Sourced>(
  snapshots: T[],
  policy: RetentionPolicy,
  opts: { source?: string; deleteAll?: boolean } = {},
): PrunePlan {
  const groups = new Map<string, T[]>();
  for (const s of snapshots) {
    const k = sourceName(s);
    groups.set(k, [...(groups.get(k) ?? []), s]);
  }
  let names = [...groups.keys()].sort();
  if (opts.source !== undefined) {
    const want = opts.source;
    const hits = names.filter((n) => n === want || n.slice(n.indexOf(':') + 1) === want);
    if (hits.length === 0)
      throw new HavenError(
        'NOT_FOUND',
        `no snapshots of source ${want}; the sources are: ${names.join(', ') || '(none)'}`,
      );
    if (hits.length > 1)
      throw new HavenError(
        'INVALID_ARGUMENT',
        `--source ${want} names several sources (${hits.join(', ')}): give kind:name`,
      );
    names = hits;
  }
  const out: PrunePlan = { sources: [] };
  for (const name of names) {
    const group = groups.get(name)!;
    const keep = selectRetained(group, policy);
    if (keep.size === 0 && !opts.deleteAll)
      throw new HavenError(
        'INVALID_ARGUMENT',
        `the policy keeps no snapshot of ${name}: it would delete all ${group.length} of them (give --delete-all if that is meant)`,
      );
    out.sources.push({
      source: name,
      kept: [...keep].map(([id, reasons]) => ({ id, reasons })),
      removed: group.filter((s) => !keep.has(s.id)).map((s) => s.id),
    });
  }
  return out;
}
