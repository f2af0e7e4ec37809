// The text forms of DR reports: a business service's report (tiers of group reports) is printed
// tier by tier, not read as one group's (which failed on its missing checkpoint).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { RehearsalReport, TakeoverReport } from '../../orchestration/index.js';
import { rehearsalLines, reportLines, takeoverLines } from './dr-lines.js';

const checkpoint = { seq: 42, time: '2026-12-07T03:00:00.000Z', snapshot: 'cp-42' };
const at = '2026-12-07T03:00:05.000Z';
const rehearsal = (group: string, vm: string): RehearsalReport => ({
  group,
  checkpoint,
  network: `${group}-rehearsal`,
  vms: [{ name: `${vm}-rehearsal`, of: vm, passed: true, detail: 'console matched' }],
  passed: true,
  startedAt: at,
  endedAt: at,
});

test('a group report and a service report of rehearsals, as text', () => {
  const one = reportLines(rehearsal('g-db', 'db'), rehearsalLines);
  assert.match(one, /g-db: rehearsal at checkpoint 42/);
  assert.match(one, /db-rehearsal:\s+passed: console matched/);
  const service = reportLines(
    {
      service: 'shop',
      tiers: [
        { tier: 1, startedAt: at, groups: [rehearsal('g-db', 'db')] },
        { tier: 2, startedAt: at, groups: [rehearsal('g-app', 'app'), rehearsal('g-web', 'web')] },
      ],
      startedAt: at,
      endedAt: at,
      elapsedSeconds: 5,
    },
    rehearsalLines,
  );
  assert.match(service, /business service shop, tier 1 .*\n.*g-db: rehearsal at checkpoint 42/);
  assert.match(service, /tier 2[^]*g-app[^]*g-web/);
});

test('a service report of takeovers, as text', () => {
  const takeover = (group: string): TakeoverReport => ({
    group,
    from: 'site-a',
    peerReachable: false,
    checkpoint,
    dataAgeSeconds: 1.25,
    vms: [{ name: group.slice(2), state: 'running', startedAt: at }],
    startedAt: at,
    endedAt: at,
    elapsedSeconds: 3,
  });
  const text = reportLines(
    { service: 'shop', tiers: [{ tier: 1, startedAt: at, groups: [takeover('g-db')] }] },
    takeoverLines,
  );
  assert.match(text, /tier 1[^]*g-db, taken over from site site-a[^]*data 1\.3 s old[^]*db running/);
});
