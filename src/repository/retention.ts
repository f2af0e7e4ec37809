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
