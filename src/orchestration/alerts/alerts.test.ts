// The alert engine on a real site database, event log and job manager: rules fire and resolve,
// are deduplicated and persisted; the events of the other parts of issue 16 (schedules, policy
// compliance, recoverability checks) are appended to the log as those parts will.
import { mkdirSync } from 'node:fs';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { HavenError } from '../../common/index.js';
import { tempDir } from '../../../test/support/tmp.js';
import { openDatabase } from '../site/database.js';
import { EventLog } from '../site/events.js';
import { JobManager, type Job } from '../site/jobs.js';
import { SiteAlerts, type AlertOptions } from './alerts.js';

interface World {
  pools: { name: string; capacityBytes: number; allocatedBytes: number }[];
  replication: {
    name: string;
    role: string;
    paused: boolean;
    rpoObjectiveSeconds?: number;
    source?: { state: string; rpoSeconds?: number };
  }[];
  recoveries: { vm: string; warning?: string }[];
}

function open(path: string, world: World, opts: AlertOptions = {}) {
  const db = openDatabase(join(path, 'site.db'));
  const events = new EventLog(db);
  const jobs = new JobManager(db, events);
  const alerts = new SiteAlerts(
    {
      site: 'test',
      version: '0',
      db,
      events,
      job: (id) => {
        const code = jobs.get(id).errorCode;
        return code ? { errorCode: code } : {};
      },
      pools: () => world.pools,
      replication: () => world.replication,
      recoveries: () => world.recoveries,
    },
    { checkIntervalSeconds: 3600, ...opts },
  );
  return {
    db,
    events,
    jobs,
    alerts,
    close: async () => {
      await alerts.close();
      db.close();
    },
  };
}

const empty = (): World => ({ pools: [], replication: [], recoveries: [] });

function ended(jobs: JobManager, id: string): Promise<Job> {
  return new Promise((resolve) => {
    const on = (j: Job) => {
      if (j.id === id && j.state !== 'running') {
        jobs.off('update', on);
        resolve(j);
      }
    };
    jobs.on('update', on);
  });
}

async function runJob(jobs: JobManager, kind: string, target: string, fail?: HavenError): Promise<Job> {
  const j = jobs.start({ kind, target, actor: 'tester' }, async () => {
    if (fail) throw fail;
    return {};
  });
  return ended(jobs, j.id);
}

test('a failed job fires once per kind and target, counts repeats, resolves on the next success; persisted', async (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  let s = open(dir.path, empty());
  t.after(() => s.close());
  await runJob(s.jobs, 'vm.backup', 'app1', new HavenError('IO', 'the repository is gone'));
  await runJob(s.jobs, 'vm.backup', 'app1', new HavenError('IO', 'the repository is still gone'));
  await runJob(s.jobs, 'vm.backup', 'app2', new HavenError('IO', 'no'));
  await runJob(s.jobs, 'volume.backup', 'app1', new HavenError('IO', 'no'));
  const open1 = s.alerts.list({ state: 'open' });
  assert.deepEqual(open1.map((a) => a.object).sort(), [
    'vm.backup:app1',
    'vm.backup:app2',
    'volume.backup:app1',
  ]);
  const a1 = open1.find((a) => a.object === 'vm.backup:app1')!;
  assert.equal(a1.rule, 'job.failed');
  assert.equal(a1.count, 2);
  assert.match(a1.message, /still gone/);
  assert.equal(s.events.query({ action: 'alert.fire' }).length, 3, 'one alert.fire per rule and object');

  // A cancelled job is no failure.
  const j = s.jobs.start({ kind: 'vm.backup', target: 'app3', actor: 'tester' }, (ctx) => {
    return new Promise((_, reject) =>
      ctx.signal.addEventListener('abort', () => reject(ctx.signal.reason as Error)),
    );
  });
  const done = ended(s.jobs, j.id);
  s.jobs.cancel(j.id, 'tester');
  assert.equal((await done).state, 'cancelled');
  assert.equal(s.alerts.list({ state: 'open' }).length, 3);

  // Another kind's success on the same target resolves nothing; the same kind's does.
  await runJob(s.jobs, 'volume.backup', 'app2');
  await runJob(s.jobs, 'vm.backup', 'app1');
  const resolved = s.alerts.list({ state: 'resolved' });
  assert.deepEqual(
    resolved.map((a) => a.object),
    ['vm.backup:app1'],
  );
  assert.match(resolved[0]!.message, /still gone/, 'the message says why it fired');
  assert.equal(s.events.query({ action: 'alert.resolve' }).length, 1);

  // After a restart: the same alerts, and a new failure of app1 opens a new one.
  await s.close();
  s = open(dir.path, empty());
  assert.equal(s.alerts.list({ state: 'open' }).length, 2);
  await runJob(s.jobs, 'vm.backup', 'app1', new HavenError('IO', 'again'));
  const all = s.alerts.list({ rule: 'job.failed' }).filter((a) => a.object === 'vm.backup:app1');
  assert.deepEqual(
    all.map((a) => a.state),
    ['open', 'resolved'],
  );
});

test('events of schedules, policies, recoverability checks and verify fire and resolve their rules', async (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  const s = open(dir.path, empty());
  t.after(() => s.close());
  const e = (
    action: string,
    target: string,
    outcome: 'ok' | 'failed' | 'info' | 'warning',
    details?: Record<string, unknown>,
  ) =>
    s.events.append({
      actor: 'system',
      action,
      target,
      outcome,
      message: `${action} ${target} ${outcome}`,
      ...(details ? { details } : {}),
    });

  e('schedule.missed', 'app1', 'warning', { kind: 'vm.backup' });
  e('schedule.skipped', 'db1', 'warning');
  e('policy.compliance', 'app1', 'warning', { reasons: ['last backup older than allowed'] });
  e('recovery.check', 'app1', 'failed', { job: 'not-a-job-id' });
  const rules = () =>
    s.alerts
      .list({ state: 'open' })
      .map((a) => `${a.rule} ${a.object}`)
      .sort();
  assert.deepEqual(rules(), [
    'policy.noncompliant app1',
    'recovery.check.failed app1',
    'schedule.missed db1',
    'schedule.missed vm.backup:app1',
  ]);
  await runJob(s.jobs, 'vm.backup', 'app1');
  await runJob(s.jobs, 'vm.backup', 'db1');
  e('policy.compliance', 'app1', 'ok');
  e('recovery.check', 'app1', 'ok');
  assert.deepEqual(rules(), []);

  // Verify: damage (the job fails CORRUPT) is its own rule; a clean verify resolves it.
  await runJob(
    s.jobs,
    'repository.verify',
    '/r',
    new HavenError('CORRUPT', 'verify found 1 damaged chunk(s)'),
  );
  await runJob(s.jobs, 'repository.verify', '/q', new HavenError('IO', 'cannot read'));
  assert.deepEqual(rules(), ['job.failed repository.verify:/q', 'verify.damage /r']);
  await runJob(s.jobs, 'repository.verify', '/r');
  assert.deepEqual(rules(), ['job.failed repository.verify:/q']);

  // The replication events fire early what the state check also sees.
  e('replication.state', 'g1', 'warning', { state: 'bitmap', link: 'down' });
  e('replication.rpo', 'g1', 'warning');
  assert.deepEqual(rules(), [
    'job.failed repository.verify:/q',
    'replication.bitmap g1',
    'replication.rpo g1',
  ]);
  e('replication.state', 'g1', 'info', { state: 'replicating', link: 'up' });
  e('replication.rpo', 'g1', 'info');
  assert.deepEqual(rules(), ['job.failed repository.verify:/q']);
});

test('the state check: full pools (with hysteresis), RPO, bitmap, paused, recovery overdue; gone objects resolve', async (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  const w = empty();
  const s = open(dir.path, w, { fullPercent: 80 });
  t.after(() => s.close());
  const rules = () =>
    s.alerts
      .list({ state: 'open' })
      .map((a) => `${a.rule} ${a.object}`)
      .sort();
  w.pools = [
    { name: 'fast', capacityBytes: 100, allocatedBytes: 85 },
    { name: 'slow', capacityBytes: 100, allocatedBytes: 10 },
  ];
  w.replication = [
    {
      name: 'g1',
      role: 'source',
      paused: false,
      rpoObjectiveSeconds: 15,
      source: { state: 'bitmap', rpoSeconds: 40 },
    },
    {
      name: 'g2',
      role: 'source',
      paused: true,
      rpoObjectiveSeconds: 15,
      source: { state: 'paused', rpoSeconds: 400 },
    },
    { name: 'g3', role: 'target', paused: false },
  ];
  w.recoveries = [{ vm: 'old', warning: 'running from backup x for 2 d' }, { vm: 'new' }];
  await s.alerts.check();
  assert.deepEqual(rules(), [
    'pool.full fast',
    'recovery.overdue old',
    'replication.bitmap g1',
    'replication.paused g2',
    'replication.rpo g1',
  ]);
  await s.alerts.check();
  const fast = s.alerts.list({ rule: 'pool.full' })[0]!;
  assert.equal(fast.count, 1, 'a state seen again does not count up');
  // 78%: under the threshold but within the hysteresis: still open. 70%: resolved.
  w.pools[0]!.allocatedBytes = 78;
  await s.alerts.check();
  assert.ok(rules().includes('pool.full fast'));
  w.pools[0]!.allocatedBytes = 70;
  w.replication = [
    {
      name: 'g1',
      role: 'source',
      paused: false,
      rpoObjectiveSeconds: 15,
      source: { state: 'replicating', rpoSeconds: 2 },
    },
  ];
  w.recoveries = [];
  await s.alerts.check();
  assert.deepEqual(rules(), []);
  assert.equal(s.events.query({ action: 'alert.resolve' }).length, 5);
});

test('repository.full watches a repository that only backups used, as well as those of repository jobs', async (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  // Any real file system is "full" at 0.001%.
  const s = open(dir.path, empty(), { fullPercent: 0.001 });
  t.after(() => s.close());
  const backupOnly = join(dir.path, 'backup-only');
  mkdirSync(backupOnly);
  const j = s.jobs.start({ kind: 'vm.backup', target: 'app1', actor: 'tester' }, async () => ({
    snapshot: 'x',
    repository: backupOnly,
  }));
  await ended(s.jobs, j.id);
  await runJob(s.jobs, 'repository.verify', dir.path);
  await s.alerts.check();
  assert.deepEqual(
    s.alerts
      .list({ state: 'open', rule: 'repository.full' })
      .map((a) => a.object)
      .sort(),
    [backupOnly, dir.path].sort(),
  );
});

test('bad input: an unknown rule, a silence of no time, a missing alert; nothing is stored', async (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  const s = open(dir.path, empty());
  t.after(() => s.close());
  assert.throws(
    () => s.alerts.silence('tester', 'job.failes', 3600),
    /unknown alert rule job\.failes: give .*job\.failed/,
  );
  assert.throws(() => s.alerts.silence('tester', 'job.failed', 0), /more than 0 s/);
  assert.throws(() => s.alerts.silence('tester', '42', 60), /no alert 42/);
  assert.throws(() => s.alerts.list({ rule: 'nope' }), /unknown alert rule nope/);
  assert.deepEqual(s.alerts.silences(), []);
  assert.equal(s.events.query({ action: 'alert.silence' }).length, 0);
});
