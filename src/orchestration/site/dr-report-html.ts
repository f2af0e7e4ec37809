import { reportTitle, type DrReport } from './dr-reports.js';
import { dur } from './objectives.js';

/** Text as HTML: everything in a report came from names and logs, so all of it is escaped. */
const esc = (s: unknown) =>
  String(s).replace(
    /[&<>"']/g,
    (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!,
  );

const STYLE = `body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:60em;padding:0 1em;color:#1b1f24}
h1{font-size:1.4em}table{border-collapse:collapse;width:100%;margin:.5em 0 1.5em}
th,td{text-align:left;padding:.25em .6em;border-bottom:1px solid #d0d7de;vertical-align:top}
th{background:#f6f8fa}.ok{color:#1a7f37}.bad{color:#cf222e;font-weight:600}.warning{color:#9a6700}
.error{color:#cf222e}code{font:12px ui-monospace,monospace}`;

function against(achieved: number | undefined, target: number | undefined, met: boolean | undefined): string {
  if (achieved === undefined) return 'not measured';
  if (target === undefined) return esc(dur(achieved));
  return `${esc(dur(achieved))} — objective ${esc(dur(target))}: <span class="${met ? 'ok">met' : 'bad">NOT MET'}</span>`;
}

/**
 * A report as a page to keep or mail (haven dr report ID --html): self-contained, no script, no
 * external resource, so that it opens anywhere and shows the same in ten years.
 */
export function reportHtml(r: DrReport): string {
  const title = reportTitle(r);
  const outcome = r.outcome === 'succeeded' ? 'ok' : 'bad';
  const rows: [string, string][] = [
    ['Outcome', `<span class="${outcome}">${esc(r.outcome.toUpperCase())}</span>`],
    ['Report', `<code>${esc(r.id)}</code>, by ${esc(r.actor)}`],
    ['Started', esc(r.startedAt)],
    ['Ended', `${esc(r.endedAt)} (${esc(dur(r.elapsedSeconds))})`],
    ...(r.error ? [['Error', `<span class="bad">${esc(r.error)}</span>`] as [string, string]] : []),
    ...(r.groups.length ? [['Groups', esc(r.groups.join(', '))] as [string, string]] : []),
    ...r.checkpoints.map((c): [string, string] => [
      `Checkpoint of ${esc(c.group)}`,
      `${c.seq}${c.name ? ` (${esc(c.name)})` : ''} of ${esc(c.time)}`,
    ]),
    ['RPO achieved', against(r.rpoSeconds, r.objective?.rpoSeconds, r.objective?.rpoMet)],
    ['RTO achieved', against(r.rtoSeconds, r.objective?.rtoSeconds, r.objective?.rtoMet)],
    ['Objective', r.objective ? esc(r.objective.name) : 'none applied'],
  ];
  const vms = r.vms.length
    ? `<h2>VMs</h2><table><tr><th>VM</th><th>Group</th><th>Started</th><th>Heartbeat</th></tr>${r.vms
        .map(
          (v) =>
            `<tr><td>${esc(v.name)}</td><td>${esc(v.group ?? '')}</td><td>${esc(v.startedAt ?? '')}</td><td>${
              v.passed === undefined
                ? ''
                : `<span class="${v.passed ? 'ok">passed' : 'bad">FAILED'}</span>${v.detail ? `: ${esc(v.detail)}` : ''}`
            }</td></tr>`,
        )
        .join('')}</table>`
    : '';
  const steps = `<h2>Steps</h2><table><tr><th>Time</th><th>Level</th><th>Step</th></tr>${r.steps
    .map(
      (s) =>
        `<tr><td><code>${esc(s.time)}</code></td><td class="${esc(s.level)}">${esc(s.level)}</td><td>${esc(s.message)}</td></tr>`,
    )
    .join('')}</table>`;
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>${esc(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>${STYLE}</style></head>
<body><h1>${esc(title)}</h1><table>${rows.map(([k, v]) => `<tr><th>${k}</th><td>${v}</td></tr>`).join('')}</table>
${vms}${steps}</body></html>
`;
}
