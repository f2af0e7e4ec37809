import type { BenchResult, Metric, Target } from './types.js';

/** Ratio Haven/peer on one metric, or null when either value is missing or the peer's is 0. */
export function ratio(m: Metric, haven: string, peer: string): number | null {
  const h = m.values[haven];
  const p = m.values[peer];
  if (h == null || p == null || p === 0) return null;
  return h / p;
}

/** The metric's targets, none, one or several. */
function targetsOf(m: Metric): Target[] {
  return m.target === undefined ? [] : Array.isArray(m.target) ? m.target : [m.target];
}

/**
 * Whether Haven meets the metric's targets (all of them): true, false, or null (no target, or
 * no value for one of them).
 */
export function targetMet(m: Metric, haven: string): boolean | null {
  const ts = targetsOf(m);
  if (ts.length === 0) return null;
  const met = ts.map((t) => oneTargetMet(m, t, haven));
  if (met.includes(false)) return false;
  return met.includes(null) ? null : true;
}

function oneTargetMet(m: Metric, t: Target, haven: string): boolean | null {
  if (t.kind === 'ratio') {
    const r = ratio(m, t.subject ?? haven, t.peer);
    if (r == null) return null;
    return m.better === 'higher' ? r >= t.min : r <= t.min;
  }
  const h = m.values[haven];
  if (h == null) return null;
  return t.kind === 'max' ? h <= t.value : h >= t.value;
}

export function describeTarget(
  target: Target | Target[] | undefined,
  unit: string,
  better: 'higher' | 'lower',
): string {
  if (Array.isArray(target)) return target.map((t) => describeTarget(t, unit, better)).join(', ');
  const t = target;
  if (!t) return '';
  if (t.kind === 'ratio')
    return `${t.subject ? `${t.subject} ` : ''}${better === 'higher' ? '≥' : '≤'} ${t.min < 0.1 ? String(+t.min.toFixed(3)) : t.min.toFixed(1)}× ${t.peer}`;
  return `${t.kind === 'max' ? '≤' : '≥'} ${fmtNumber(t.value)} ${unit}`;
}

/** Three significant figures at most, never exponent notation. */
export function fmtNumber(v: number): string {
  const a = Math.abs(v);
  if (a >= 100) return v.toFixed(0);
  if (a >= 10) return v.toFixed(1);
  return v.toFixed(2);
}

function fmtRatio(r: number | null): string {
  return r == null ? '–' : `${r.toFixed(2)}×`;
}

function shortError(e: string): string {
  const first = e.split('\n').find((l) => l.trim() !== '') ?? e;
  return first.length > 24 ? `${first.slice(0, 21)}...` : first;
}

/** Lays rows out in columns padded to their widest cell; numbers and ratios are right-aligned. */
export function layout(header: string[], rows: string[][], rightAlign: boolean[]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]) =>
    cells
      .map((c, i) => (rightAlign[i] ? c.padStart(widths[i]!) : c.padEnd(widths[i]!)))
      .join('  ')
      .trimEnd();
  return [line(header), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.map(line)].join('\n');
}

/**
 * The result as a text table: metric, unit, one column per subject, Haven/peer for each peer,
 * target and whether it is met. A subject that failed shows `n/a (error: …)`; the full errors,
 * methods and notes follow the table.
 */
export function formatResult(r: BenchResult): string {
  const peers = r.subjects.filter((s) => s !== r.haven);
  // Haven/peer for each peer, then each other Haven subject a target holds to a peer (haven-cbt/restic).
  const pairs: [string, string][] = peers.map((p) => [r.haven, p]);
  for (const m of r.metrics)
    for (const t of targetsOf(m))
      if (t.kind === 'ratio' && t.subject && t.subject !== r.haven && r.subjects.includes(t.subject))
        if (!pairs.some(([h, p]) => h === t.subject && p === t.peer)) pairs.push([t.subject, t.peer]);
  const header = ['metric', 'unit', ...r.subjects, ...pairs.map(([h, p]) => `${h}/${p}`), 'target', 'met?'];
  const right = header.map((_, i) => i >= 2 && i < 2 + r.subjects.length + pairs.length);
  const rows = r.metrics.map((m) => {
    const met = targetMet(m, r.haven);
    return [
      m.label,
      m.unit,
      ...r.subjects.map((s) => {
        const v = m.values[s];
        if (v != null) return fmtNumber(v);
        const err = r.errors[s];
        if (err?.startsWith('skipped')) return 'skipped';
        return err ? `n/a (error: ${shortError(err)})` : 'n/a';
      }),
      ...pairs.map(([h, p]) => fmtRatio(ratio(m, h, p))),
      describeTarget(m.target, m.unit, m.better),
      met == null ? (m.target ? 'n/a' : '') : met ? 'yes' : 'NO',
    ];
  });
  const out = [`== ${r.title} (${r.name}) ==`, layout(header, rows, right)];
  const methods = [...new Set(r.metrics.map((m) => m.method).filter((x): x is string => !!x))];
  if (methods.length) out.push('', `method: ${methods.join('; ')}`);
  for (const [s, e] of Object.entries(r.errors)) if (!e.startsWith('skipped')) out.push(`${s}: ${e.trim()}`);
  for (const n of r.notes) out.push(`note: ${n}`);
  const withTarget = r.metrics.filter((m) => m.target);
  const met = withTarget.filter((m) => targetMet(m, r.haven) === true).length;
  out.push(`targets met: ${met} of ${withTarget.length}`, `took ${r.durationSeconds.toFixed(0)} s`);
  return out.join('\n');
}
