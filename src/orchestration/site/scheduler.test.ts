// The scheduler on a real site database with a manual clock and a fake runner (its runs end when
// the test says): the pure timing (cron in a time zone, intervals, jitter, missed runs), overlap
// skips, catch-up once vs skip after "downtime", the limits per repository, bad input changing
// nothing, and a check schedule going through site.checks.start (ScheduledRuns, fake checks).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { tempDir } from '../../../test/support/tmp.js';
import { HavenError, ManualClock } from '../../common/index.js';
import { openDatabase } from './database.js';
import type { SiteParts } from './domain.js';
import { EventLog } from './events.js';
import { ScheduledRuns } from './schedule-runs.js';
import type { ScheduleSpec } from './schedule-spec.js';
import { decide, jitterMs, slotAfter, MISSED_AFTER_MS } from './schedule-timing.js';
import { Scheduler, type ScheduleRunner } from './scheduler.js';

const H = 3600_000;
const T0 = Date.parse('2026-03-01T00:00:00Z');
const code = (c: string, re?: RegExp) => (e: unknown) =>
  e instanceof HavenError && e.code === c && (!re || re.test(e.message));

test('timing: cron slots in a time zone, interval slots from the anchor, bounded stable jitter', () => {
  // 02:30 Berlin is 01:30 UTC in winter.
  assert.equal(
    new Date(slotAfter({ cron: '30 2 * * *', timezone: 'Europe/Berlin' }, 0, T0)!).toISOString(),
    '2026-03-01T01:30:00.000Z',
  );
  assert.equal(slotAfter({ everySeconds: 600 }, T0, T0 + 601_000), T0 + 1200_000);
  assert.equal(slotAfter({ everySeconds: 600 }, T0, T0), T0 + 600_000);
  const j = jitterMs('s-1', T0, 30);
  assert.ok(j >= 0 && j <= 30_000);
  assert.equal(jitterMs('s-1', T0, 30), j);
  assert.equal(jitterMs('s-1', T0, 0), 0);
});

test('timing: a missed slot runs once (catch-up once) or is skipped, and the next slot is after now', () => {
  const t = { cron: '0 * * * *' };
  const onTime = decide(t, 's', 0, T0, T0 + 1000);
  assert.deepEqual(onTime, { run: true, nextSlot: T0 + H, missed: 0 });
  const late = decide(t, 's', 0, T0, T0 + 5 * H + 10 * 60_000);
  assert.equal(late.run, true);
  assert.equal(late.missed, 6);
  assert.equal(late.nextSlot, T0 + 6 * H);
  const skipped = decide(t, 's', 0, T0, T0 + 5 * H, 'skip');
  assert.equal(skipped.run, false);
  assert.match(!skipped.run ? skipped.reason : '', /skipped: 6 run\(s\) missed while the daemon was down/);
  assert.equal(decide(t, 's', 0, T0, T0 + MISSED_AFTER_MS, 'skip').run, true);
});

/** A runner whose runs end when `end(i)` is called; records every start. */
function fakeRunner(check: (s: ScheduleSpec) => void = () => undefined) {
  const runs: { spec: ScheduleSpec; at: Date; end: (ok?: boolean) => void }[] = [];
  const runner: ScheduleRunner = {
    check,
    repository: (s) => (s.params?.repo as string | undefined) ?? undefined,
    start(spec, _actor, at) {
      let end!: (ok?: boolean) => void;
      const done = new Promise<{ outcome: 'succeeded' | 'failed' }>((r) => {
        end = (ok = true) => r({ outcome: ok ? 'succeeded' : 'failed' });
      });
      runs.push({ spec, at, end });
      return { job: `job-${runs.length}`, done };
    },
  };
  return { runner, runs };
}

function world(t: { after: (fn: () => void) => void }) {
  const tmp = tempDir('haven-scheduler-');
  const db = openDatabase(join(tmp.path, 'site.db'));
  t.after(() => {
    db.close();
    tmp.cleanup();
  });
  return { db, events: new EventLog(db), dir: tmp.path };
}

/** The event loop's turns a run's end takes to start the next (the scheduler yields once). */
const tick = async () => {
  for (let i = 0; i < 3; i++) await new Promise((r) => setImmediate(r));
};

test('overlap: a run still running makes the next one skip, recorded; limits per repository queue runs', async (t) => {
  const { db, events } = world(t);
  const clock = new ManualClock(T0);
  const { runner, runs } = fakeRunner();
  const sch = new Scheduler(db, events, runner, { clock, maxRunsPerRepository: 1 });
  sch.start();
  const a = sch.create('me', { kind: 'backup', target: 'a', everySeconds: 3600, params: { repo: '/r' } });
  const b = sch.create('me', { kind: 'backup', target: 'b', everySeconds: 3600, params: { repo: '/r' } });
  assert.equal(a.nextRun, new Date(T0 + H).toISOString());
  clock.advance(H);
  assert.equal(runs.length, 1, 'one repository slot: b waits');
  assert.equal(sch.get(b.id).state, 'queued');
  assert.equal(runs[0]!.at.getTime(), T0 + H, 'runs are dated by the clock');
  clock.advance(H); // a and b are still busy: both skip
  assert.equal(sch.get(a.id).lastOutcome, 'skipped');
  assert.match(sch.get(a.id).lastMessage!, /skipped: previous run still running \(job job-1\)/);
  assert.match(sch.get(b.id).lastMessage!, /skipped: previous run still running \(queued\)/);
  runs[0]!.end();
  await tick();
  assert.equal(runs.length, 2, 'b starts once a ends');
  assert.equal(sch.get(a.id).lastOutcome, 'succeeded');
  runs[1]!.end(false);
  await sch.idle();
  assert.equal(sch.get(b.id).lastOutcome, 'failed');
  clock.advance(H);
  assert.equal(runs.length, 3);
  runs[2]!.end();
  await tick();
  assert.equal(runs.length, 4);
  runs[3]!.end();
  await sch.idle();
  const skips = events.query({ action: 'schedule.backup', outcome: 'warning' });
  assert.equal(skips.length, 2);
  sch.close();
});

test('catch-up after downtime: once runs one run whatever was missed, skip runs none', async (t) => {
  const { db, events } = world(t);
  const clock = new ManualClock(T0);
  const first = fakeRunner();
  const sch = new Scheduler(db, events, first.runner, { clock });
  sch.start();
  const once = sch.create('me', { kind: 'snapshot', target: 'v1', cron: '0 * * * *' });
  const skip = sch.create('me', { kind: 'snapshot', target: 'v2', cron: '0 * * * *', catchUp: 'skip' });
  clock.advance(H);
  assert.equal(first.runs.length, 2);
  for (const r of first.runs) r.end();
  await sch.idle();
  sch.close(); // the daemon stops for 10 h 20 min
  const later = new ManualClock(T0 + 11 * H + 20 * 60_000);
  const second = fakeRunner();
  const again = new Scheduler(db, events, second.runner, { clock: later });
  again.start();
  await tick();
  assert.deepEqual(
    second.runs.map((r) => [r.spec.target, r.at.toISOString()]),
    [['v1', '2026-03-01T11:20:00.000Z']],
    'exactly one catch-up run, for the "once" schedule only',
  );
  assert.match(again.get(skip.id).lastMessage!, /skipped: 10 run\(s\) missed while the daemon was down/);
  assert.equal(again.get(once.id).nextRun, '2026-03-01T12:00:00.000Z');
  second.runs[0]!.end();
  await again.idle();
  later.advance(40 * 60_000);
  assert.equal(second.runs.length, 3, 'both run on time again');
  for (const r of second.runs.slice(1)) r.end();
  await again.idle();
  again.close();
});

test('bad input changes nothing: unknown kind, invalid cron, bad time zone, a retention that keeps nothing, unknown target', (t) => {
  const { db, events } = world(t);
  const { runner } = fakeRunner((s) => {
    if (s.target === 'ghost') throw new HavenError('NOT_FOUND', 'unknown target ghost');
  });
  const sch = new Scheduler(db, events, runner, { clock: new ManualClock(T0) });
  sch.start();
  const bad: [Partial<ScheduleSpec>, string, RegExp][] = [
    [
      { kind: 'dance' as never, cron: '0 * * * *' },
      'INVALID_ARGUMENT',
      /unknown schedule kind "dance": use backup, snapshot, prune, verify, gc, check/,
    ],
    [{ cron: '61 * * * *' }, 'INVALID_ARGUMENT', /cron expression "61 \* \* \* \*" is not valid/],
    [{ cron: '0 * * * *', timezone: 'Mars/Olympus' }, 'INVALID_ARGUMENT', /time zone Mars\/Olympus/],
    [{ cron: '0 * * * *', everySeconds: 60 }, 'INVALID_ARGUMENT', /exactly one of a cron expression/],
    [
      { cron: '0 * * * *', params: { repo: '/r', keep: { hourly: 0 } } },
      'INVALID_ARGUMENT',
      /the retention keeps nothing/,
    ],
    [
      { cron: '0 * * * *', params: { repo: '/r', keep: { fortnightly: 2 } as never } },
      'INVALID_ARGUMENT',
      /no period "fortnightly"/,
    ],
    [{ cron: '0 * * * *', params: {} }, 'INVALID_ARGUMENT', /needs a repository \(--repo\)/],
    [{ cron: '0 * * * *', target: 'ghost' }, 'NOT_FOUND', /unknown target ghost/],
    [
      { kind: 'prune', target: '/r', cron: '0 * * * *' },
      'INVALID_ARGUMENT',
      /a prune schedule needs a retention/,
    ],
  ];
  for (const [spec, c, re] of bad)
    assert.throws(
      () =>
        sch.create('me', { kind: 'backup', target: 'vm1', params: { repo: '/r' }, ...spec } as ScheduleSpec),
      code(c, re),
      JSON.stringify(spec),
    );
  assert.deepEqual(sch.list(), []);
  assert.equal((db.prepare('SELECT count(*) AS n FROM schedules').get() as { n: number }).n, 0);
  assert.equal(events.query({ action: 'schedule.create' }).length, 0);
  sch.close();
});

test('policy-owned schedules: replaced as a whole, unchanged ones kept, not deletable by hand', (t) => {
  const { db, events } = world(t);
  const { runner } = fakeRunner();
  const sch = new Scheduler(db, events, runner, { clock: new ManualClock(T0) });
  sch.start();
  const owner = 'policy:gold:vm1';
  const backup: ScheduleSpec = { kind: 'backup', target: 'vm1', cron: '0 * * * *', params: { repo: '/r' } };
  sch.replaceOwned(owner, [backup, { kind: 'verify', target: '/r', cron: '0 3 * * *' }]);
  const [b1] = sch.list({ owner, kind: 'backup' });
  sch.replaceOwned(owner, [backup]);
  assert.deepEqual(
    sch.list({ owner }).map((s) => s.id),
    [b1!.id],
  );
  assert.throws(
    () => sch.delete('me', b1!.id),
    code('CONFLICT', /belongs to policy gold \(assigned to vm1\)/),
  );
  sch.replaceOwned(owner, []);
  assert.deepEqual(sch.list(), []);
  sch.close();
});

test('a check schedule starts site.checks.start with its VM, repository and options', async (t) => {
  const { db, events, dir } = world(t);
  const repo = join(dir, 'repo');
  mkdirSync(repo);
  writeFileSync(join(repo, 'config.json'), '{}');
  const calls: unknown[] = [];
  const parts = {
    storage: { listVolumes: () => [] },
    compute: { listVms: () => [{ name: 'web1' }] },
    jobs: { wait: async (id: string) => ({ id, state: 'succeeded' }) },
  } as unknown as SiteParts;
  const checks = {
    start: (actor: string, req: unknown) => {
      calls.push([actor, req]);
      return { id: 'check-job' };
    },
  };
  const runs = new ScheduledRuns(parts, {} as never, checks as never);
  const clock = new ManualClock(T0);
  const sch = new Scheduler(db, events, runs, { clock });
  sch.start();
  assert.throws(
    () => sch.create('me', { kind: 'check', target: 'db9', cron: '0 4 * * *', params: { repo } }),
    code('NOT_FOUND', /unknown target db9: a check schedule takes a VM/),
  );
  const s = sch.create('me', {
    kind: 'check',
    target: 'web1',
    cron: '0 4 * * *',
    params: { repo, heartbeat: 'tcp:10.0.0.1:22', timeoutSeconds: 60 },
  });
  clock.advance(4 * H);
  await sch.idle();
  assert.deepEqual(calls, [
    [`schedule:${s.id}`, { vm: 'web1', repo, heartbeat: 'tcp:10.0.0.1:22', timeoutSeconds: 60 }],
  ]);
  assert.equal(sch.get(s.id).lastOutcome, 'succeeded');
  assert.equal(sch.get(s.id).lastJob, 'check-job');
  sch.close();
});
