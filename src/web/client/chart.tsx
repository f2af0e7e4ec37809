// The RPO of a replication group over the last minutes: a line of the samples the event stream
// brings (live.ts keeps the window), the objective as a dashed line, in plain SVG (decision 0021:
// one series of a few hundred points needs no charting library).
import { RPO_WINDOW_MS } from './live.js';

const W = 560;
const H = 130;
const PAD = { left: 44, right: 8, top: 8, bottom: 20 };

const secs = (v: number) => (v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2));

export function RpoChart({
  group,
  samples,
  objective,
  now,
}: {
  group: string;
  samples: { t: number; v: number | null }[];
  objective?: number | undefined;
  now: number;
}) {
  const known = samples.filter((s) => s.v !== null) as { t: number; v: number }[];
  const newest = known.at(-1)?.v;
  const peak = known.reduce((m, s) => Math.max(m, s.v), 0);
  const top = Math.max(objective !== undefined ? objective * 1.25 : 1, peak * 1.1, 0.1);
  const x0 = now - RPO_WINDOW_MS;
  const x = (t: number) => PAD.left + ((t - x0) / RPO_WINDOW_MS) * (W - PAD.left - PAD.right);
  const y = (v: number) => PAD.top + (1 - Math.min(v, top) / top) * (H - PAD.top - PAD.bottom);
  // A gap where a sample had no RPO (before the first checkpoint): the line restarts after it.
  const paths: string[] = [];
  let d = '';
  for (const s of samples) {
    if (s.t < x0) continue;
    if (s.v === null) {
      if (d) paths.push(d);
      d = '';
      continue;
    }
    d += `${d ? 'L' : 'M'}${x(s.t).toFixed(1)},${y(s.v).toFixed(1)}`;
  }
  if (d) paths.push(d);
  const missed = objective !== undefined && newest !== undefined && newest > objective;
  const span = Math.min(RPO_WINDOW_MS, now - (known[0]?.t ?? now)) / 1000;
  const over = span >= 120 ? `${Math.round(span / 60)} min` : `${Math.round(span)} s`;
  const summary =
    newest === undefined
      ? `RPO of ${group}: no checkpoint applied yet`
      : `RPO of ${group}: ${secs(newest)} s now${objective !== undefined ? `, objective ${objective} s` : ''}, at most ${secs(peak)} s over the last ${over} (${known.length} samples)`;
  return (
    <figure class="rpo" data-group={group} data-samples={known.length}>
      <svg viewBox={`0 0 ${W} ${H}`} role="img" aria-label={summary} class={missed ? 'missed' : ''}>
        <line class="axis" x1={PAD.left} y1={H - PAD.bottom} x2={W - PAD.right} y2={H - PAD.bottom} />
        <line class="axis" x1={PAD.left} y1={PAD.top} x2={PAD.left} y2={H - PAD.bottom} />
        <text x={PAD.left - 4} y={PAD.top + 10} text-anchor="end">
          {secs(top)} s
        </text>
        <text x={PAD.left - 4} y={H - PAD.bottom} text-anchor="end">
          0
        </text>
        <text x={PAD.left} y={H - 4}>
          −10 min
        </text>
        <text x={W - PAD.right} y={H - 4} text-anchor="end">
          now
        </text>
        {objective !== undefined ? (
          <line class="objective" x1={PAD.left} y1={y(objective)} x2={W - PAD.right} y2={y(objective)} />
        ) : null}
        {paths.map((p, i) => (
          <path key={i} class="line" d={p} />
        ))}
      </svg>
      <figcaption>
        {newest === undefined ? (
          'no checkpoint applied yet'
        ) : (
          <>
            RPO <strong class={missed ? 'error' : ''}>{secs(newest)} s</strong>
            {objective !== undefined ? ` (objective ${objective} s)` : ''}
          </>
        )}
      </figcaption>
    </figure>
  );
}
