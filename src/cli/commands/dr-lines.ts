// The text forms of the DR operations' reports (their --json is the report itself).
import type { MigrateReport, RehearsalReport, TakeoverReport } from '../../orchestration/index.js';
import { fields } from '../output.js';

export function takeoverLines(r: TakeoverReport): string {
  return fields([
    [
      'group',
      `${r.group}, taken over from site ${r.from}${r.peerReachable ? ' (which answered: forced)' : ''}`,
    ],
    [
      'checkpoint',
      `${r.checkpoint.seq}${r.checkpoint.name ? ` (${r.checkpoint.name})` : ''} of ${r.checkpoint.time}: data ${r.dataAgeSeconds.toFixed(1)} s old`,
    ],
    ['vms', r.vms.map((v) => `${v.name} ${v.state}`).join(', ')],
    ['took', `${r.elapsedSeconds.toFixed(1)} s`],
  ]);
}

export function migrateLines(r: MigrateReport): string {
  return fields([
    ['group', `${r.group}: from site ${r.from} to site ${r.to}`],
    ['checkpoint', `${r.checkpoint.seq} (${r.verified ? 'verified equal' : 'not verified'})`],
    ['stopped', r.stopped.map((v) => `${v.name}${v.forced ? ' (hard)' : ''}`).join(', ') || '-'],
    ['started', r.started.map((v) => `${v.name} at ${v.startedAt ?? '-'}`).join(', ')],
    ['downtime', `${r.downtimeSeconds.toFixed(1)} s`],
    ['replication', r.reversed ? `from ${r.to} back to ${r.from}` : `not reversed: ${r.reverseError}`],
  ]);
}

/** A service's report (tiers of group reports) or one group's report, as text. */
export function reportLines<R>(r: unknown, groupLines: (g: R) => string): string {
  const s = r as { service?: string; tiers?: { tier: number; startedAt: string; groups: R[] }[] };
  if (!s.service || !s.tiers) return groupLines(r as R);
  return s.tiers
    .map(
      (t) =>
        `business service ${s.service}, tier ${t.tier} (started ${t.startedAt}):\n${t.groups.map(groupLines).join('\n')}`,
    )
    .join('\n');
}

export function rehearsalLines(r: RehearsalReport): string {
  return fields([
    ['group', `${r.group}: rehearsal at checkpoint ${r.checkpoint.seq} of ${r.checkpoint.time}`],
    ['network', r.network ?? 'none'],
    ...r.vms.map((v): [string, string] => [v.name, `${v.passed ? 'passed' : 'FAILED'}: ${v.detail}`]),
    ['next', `haven dr cleanup ${r.group}`],
  ]);
}
