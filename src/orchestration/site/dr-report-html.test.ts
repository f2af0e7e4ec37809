import assert from 'node:assert/strict';
import { test } from 'node:test';
import { reportHtml } from './dr-report-html.js';
import type { DrReport } from './dr-reports.js';

const report: DrReport = {
  id: 'job-1',
  kind: 'takeover',
  target: 'shop',
  groups: ['g-db', 'g-web'],
  outcome: 'succeeded',
  actor: 'alice',
  site: 'site-b',
  startedAt: '2026-12-07T10:00:00.000Z',
  endedAt: '2026-12-07T10:00:31.000Z',
  elapsedSeconds: 31,
  checkpoints: [{ group: 'g-db', seq: 42, time: '2026-12-07T09:59:58.000Z', name: 'before-upgrade' }],
  rpoSeconds: 2,
  rtoSeconds: 31,
  objective: { name: 'gold', rpoSeconds: 10, rtoSeconds: 20, rpoMet: true, rtoMet: false },
  vms: [{ name: 'db1', group: 'g-db', startedAt: '2026-12-07T10:00:20.000Z', passed: true }],
  steps: [
    { time: '2026-12-07T10:00:01.000Z', level: 'info', message: 'promote <script>alert(1)</script> & go' },
  ],
};

test('the HTML report holds what the text report does, escaped, with no script or outside resource', () => {
  const html = reportHtml(report);
  assert.match(html, /^<!doctype html>/);
  assert.match(html, /<title>Takeover of shop at site site-b<\/title>/);
  assert.match(html, /SUCCEEDED/);
  assert.match(html, /42 \(before-upgrade\)/);
  assert.match(html, /objective 10 s: <span class="ok">met/);
  assert.match(html, /objective 20 s: <span class="bad">NOT MET/, 'the RTO missed is marked');
  assert.match(html, /db1.*g-db.*passed/s);
  assert.match(html, /promote &lt;script&gt;alert\(1\)&lt;\/script&gt; &amp; go/, 'log text is escaped');
  assert.doesNotMatch(html, /<script/i);
  assert.doesNotMatch(html, /(src|href)=/i, 'nothing loaded from elsewhere');
});

test('a failed report shows its error; one without objective says so', () => {
  const html = reportHtml({
    ...report,
    outcome: 'failed',
    error: 'heartbeat of "db1" failed',
    objective: undefined,
  });
  assert.match(html, /<span class="bad">FAILED<\/span>/);
  assert.match(html, /heartbeat of &quot;db1&quot; failed/);
  assert.match(html, /none applied/);
});
