// The acceptance of schedules and retention: a real `haven serve` on a test clock
// ($HAVEN_TEST_CLOCK, moved through POST /test/clock), a policy of hourly backups of a 2 MiB volume
// kept 24 hourly / 7 daily / 4 weekly, and a daily gc schedule, driven through 40 simulated days
// in hourly steps (each step answers once its runs have ended). Midway the daemon is down for
// 7.5 simulated hours: the missed backup runs once when it is back, not once per missed slot. At
// the end the repository holds exactly the snapshots an independent retention (below, not the
// production code) keeps of the backup times the test expects.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { site, startDaemon } from '../support/site.js';
import { siteApi } from '../support/site-api.js';

const H = 3600_000;
const DAY = 24 * H;
const T0 = Date.parse('2026-01-01T00:00:00Z');
const DAYS = 40;
const DOWN_AT = 20 * DAY; // after the 00:00 run of day 20
const BACK_AT = DOWN_AT + 7.5 * H; // slots 01:00 … 07:00 missed

/**
 * Which backup times a 24 hourly / 7 daily / 4 weekly retention keeps, computed on its own: per
 * period, the newest time of each of the newest N buckets (UTC hours, UTC days, Monday weeks).
 */
function expectedKept(times: number[]): number[] {
  const keep = new Set<number>();
  const periods: [number, (t: number) => number][] = [
    [24, (t) => Math.floor(t / H)],
    [7, (t) => Math.floor(t / DAY)],
    // 1970-01-01 was a Thursday: days + 3 counts from the Monday before it.
    [4, (t) => Math.floor((Math.floor(t / DAY) + 3) / 7)],
  ];
  for (const [n, bucket] of periods) {
    const newest = new Map<number, number>();
    for (const t of times) newest.set(bucket(t), Math.max(newest.get(bucket(t)) ?? -Infinity, t));
    [...newest.keys()]
      .sort((a, b) => b - a)
      .slice(0, n)
      .forEach((b) => keep.add(newest.get(b)!));
  }
  return [...keep].sort((a, b) => a - b);
}

test('hourly backups for 40 simulated days: retention keeps exactly 24 hourly / 7 daily / 4 weekly; a missed run runs once', async (t) => {
  const started = performance.now();
  // On a memory file system where there is one: ~1,000 backups' flushes to this machine's
  // shared disk are not what this test is about (bench/scheduler.ts measures them).
  const s = await site(
    t,
    [],
    { HAVEN_TEST_CLOCK: new Date(T0).toISOString(), HAVEN_LOG_LEVEL: 'warn' },
    existsSync('/dev/shm') ? '/dev/shm' : undefined,
  );
  const repo = join(s.dir, '..', 'repo');
  await s.haven('repo', 'init', '--repo', repo);
  await s.haven('volume', 'create', 'v', '--size', '2M');
  await s.haven(
    'policy',
    'create',
    'hourly',
    '--backup-cron',
    '0 * * * *',
    '--repo',
    repo,
    '--keep-hourly',
    '24',
    '--keep-daily',
    '7',
    '--keep-weekly',
    '4',
  );
  await s.haven('policy', 'assign', 'hourly', '--volume', 'v');
  await s.haven('schedule', 'create', '--kind', 'gc', '--target', repo, '--cron', '30 0 * * *');
  const listed = JSON.parse(await s.haven('schedule', 'list', '--json')) as {
    kind: string;
    owner: string;
    nextRun: string;
  }[];
  assert.deepEqual(listed.map((x) => [x.kind, x.owner, x.nextRun]).sort(), [
    ['backup', 'policy:hourly:v', '2026-01-01T01:00:00.000Z'],
    ['gc', 'person', '2026-01-01T00:30:00.000Z'],
  ]);

  const api = <T>(method: string, path: string, body?: unknown) => siteApi<T>(s.dir, method, path, body);
  const advanceTo = async (ms: number) => {
    const r = await api<{ now: string; running: number; queued: number }>('POST', '/test/clock', {
      to: new Date(ms).toISOString(),
    });
    assert.equal(r.now, new Date(ms).toISOString());
    assert.equal(r.running + r.queued, 0);
  };

  const expected: number[] = [];
  const stepStarted = performance.now();
  for (let at = T0 + H; at <= T0 + DOWN_AT; at += H) {
    await advanceTo(at);
    expected.push(at);
  }
  const perStep = (performance.now() - stepStarted) / (DOWN_AT / H);
  t.diagnostic(`first ${DOWN_AT / H} hourly steps: ${perStep.toFixed(1)} ms per step (backup + retention)`);

  // Down for 7.5 hours: back at 07:30, the missed slots run once, now.
  await s.daemon.stop();
  s.daemon = await startDaemon(s.dir, [], {
    HAVEN_TEST_CLOCK: new Date(T0 + BACK_AT).toISOString(),
    HAVEN_LOG_LEVEL: 'warn',
  });
  await api('POST', '/test/clock', { advanceSeconds: 0 }); // answers once the catch-up run ended
  expected.push(T0 + BACK_AT);
  const [backup] = (await api<{ id: string; lastRun: string; lastOutcome: string; nextRun: string }[]>(
    'GET',
    '/schedules?kind=backup',
  ))!;
  assert.equal(backup!.lastRun, new Date(T0 + BACK_AT).toISOString());
  assert.equal(backup!.lastOutcome, 'succeeded');
  assert.equal(backup!.nextRun, new Date(T0 + BACK_AT + H / 2).toISOString());

  for (let at = T0 + BACK_AT + H / 2; at <= T0 + DAYS * DAY; at += H) {
    await advanceTo(at);
    expected.push(at);
  }

  // Every run was one backup job: none for the missed slots but the one catch-up.
  const jobs = await api<{ state: string; actor: string }[]>('GET', '/jobs?kind=volume.backup&limit=1000');
  assert.equal(jobs.length, expected.length, 'one backup per hourly slot while up, one catch-up');
  assert.ok(jobs.every((j) => j.state === 'succeeded' && j.actor.startsWith('schedule:')));
  const gcs = await api<{ state: string }[]>('GET', '/jobs?kind=repository.gc&limit=1000');
  assert.equal(gcs.length, DAYS, 'gc once per simulated day (day 20 caught up once)');
  assert.ok(gcs.every((j) => j.state === 'succeeded'));

  const snapshots = JSON.parse(await s.haven('repo', 'list', '--repo', repo, '--json')) as {
    createdAt: string;
  }[];
  const kept = expectedKept(expected);
  assert.deepEqual(
    snapshots.map((x) => x.createdAt),
    kept.map((x) => new Date(x).toISOString()),
  );
  // Ends Tuesday 2026-02-10 00:00: 24 hours, 5 more days (Feb 4-8), 2 more weeks (to Feb 1, Jan 25).
  assert.equal(kept.length, 24 + 5 + 2);
  t.diagnostic(
    `${expected.length} scheduled backups in ${((performance.now() - started) / 1000).toFixed(1)} s`,
  );
});
