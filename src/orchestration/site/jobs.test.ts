// Jobs and events on a real SQLite database: progress with rate and ETA, results, failures,
// cancel, and jobs a dead daemon left "running" becoming failed at the next open.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import Database from 'better-sqlite3';
import { HavenError } from '../../common/index.js';
import { tempDir } from '../../../test/support/tmp.js';
import { openDatabase, schemaVersion } from './database.js';
import { EventLog } from './events.js';
import { JobManager, type Job } from './jobs.js';

function open(dir: string) {
  const db = openDatabase(join(dir, 'site.db'));
  const events = new EventLog(db);
  return { db, events, jobs: new JobManager(db, events) };
}

test('a job reports progress, rate and ETA, then its result; the event log records it', async (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  const { db, events, jobs } = open(dir.path);
  t.after(() => db.close());
  const seen: Job[] = [];
  jobs.on('update', (j: Job) => seen.push(j));
  let finish!: () => void;
  const job = jobs.start({ kind: 'test.copy', target: 'vol1', actor: 'tester' }, async (ctx) => {
    ctx.progress(0, 1000, 'copy');
    await sleep(600); // past the progress write interval
    ctx.progress(400, 1000, 'copy');
    ctx.log('half way, roughly');
    await new Promise<void>((r) => (finish = r));
    return { copied: 1000 };
  });
  assert.equal(job.state, 'running');
  await sleep(700);
  const mid = jobs.get(job.id);
  assert.equal(mid.state, 'running');
  assert.equal(mid.progress.doneBytes, 400);
  assert.equal(mid.progress.totalBytes, 1000);
  assert.equal(mid.progress.phase, 'copy');
  assert.ok(mid.progress.rateBytesPerSecond > 0);
  assert.ok(mid.progress.etaSeconds !== undefined && mid.progress.etaSeconds >= 1);
  finish();
  const end = await jobs.wait(job.id);
  assert.equal(end.state, 'succeeded');
  assert.deepEqual(end.result, { copied: 1000 });
  assert.equal(end.progress.doneBytes, 1000);
  assert.ok(end.endedAt);
  assert.ok(seen.some((j) => j.state === 'succeeded'));
  assert.deepEqual(
    jobs.logOf(job.id).map((l) => l.message),
    ['test.copy vol1 started by tester', 'half way, roughly', 'succeeded'],
  );
  const [e] = events.query({ target: 'vol1' });
  assert.equal(e!.outcome, 'ok');
  assert.equal(e!.actor, 'tester');
  assert.equal(e!.details?.job, job.id);
});

test('a failing job keeps its error; a cancelled job ends cancelled; a finished job cannot be cancelled', async (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  const { db, events, jobs } = open(dir.path);
  t.after(() => db.close());
  const bad = jobs.start({ kind: 'test.fail', target: 'x', actor: 'a' }, async () => {
    throw new HavenError('IO', 'the disk went away');
  });
  assert.equal((await jobs.wait(bad.id)).error, 'the disk went away');
  assert.equal(jobs.get(bad.id).state, 'failed');
  assert.equal(jobs.get(bad.id).errorCode, 'IO');
  // A failure the request caused keeps its code: faces report it as that, not as internal.
  const mistake = jobs.start({ kind: 'test.move', target: 'v', actor: 'a' }, async () => {
    throw new HavenError('CONFLICT', 'volume v has snapshots (s1); snapshots do not move: delete them first');
  });
  assert.equal((await jobs.wait(mistake.id)).errorCode, 'CONFLICT');
  const bug = jobs.start({ kind: 'test.bug', target: 'w', actor: 'a' }, async () => {
    throw new TypeError('undefined is not a function');
  });
  assert.equal((await jobs.wait(bug.id)).errorCode, 'INTERNAL');

  const long = jobs.start({ kind: 'test.long', target: 'y', actor: 'a' }, (ctx) => {
    return new Promise((_, reject) => ctx.signal.addEventListener('abort', () => reject(ctx.signal.reason)));
  });
  jobs.cancel(long.id, 'operator');
  const end = await jobs.wait(long.id);
  assert.equal(end.state, 'cancelled');
  assert.equal(end.errorCode, 'CANCELLED');
  assert.throws(
    () => jobs.cancel(long.id, 'operator'),
    (e: HavenError) => e.code === 'CONFLICT',
  );
  assert.throws(
    () => jobs.get('no-such-job'),
    (e: HavenError) => e.code === 'NOT_FOUND',
  );
  assert.deepEqual(
    jobs.list({ state: 'failed' }).map((j) => j.id),
    [bug.id, mistake.id, bad.id],
  );
  assert.equal(events.query({ outcome: 'failed' }).length, 4);
});

test('jobs left running by a dead daemon fail at the next open, with their cleanup run', async (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  const first = open(dir.path);
  const stuck = first.jobs.start(
    { kind: 'volume.import', target: 'half', actor: 'a' },
    () => new Promise(() => {}),
  );
  first.db.close(); // the daemon dies with the job running

  const second = open(dir.path);
  t.after(() => second.db.close());
  const cleaned: string[] = [];
  const failed = second.jobs.failInterrupted((j) => cleaned.push(j.target));
  assert.deepEqual(cleaned, ['half']);
  assert.equal(failed.length, 1);
  const j = second.jobs.get(stuck.id);
  assert.equal(j.state, 'failed');
  assert.match(j.error!, /daemon stopped while this job ran/);
  assert.equal(second.jobs.list({ state: 'running' }).length, 0);
});

test('the database migrates forward once and refuses a schema newer than this program', (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  const path = join(dir.path, 'site.db');
  const db = openDatabase(path);
  const v = schemaVersion(db);
  assert.ok(v >= 1);
  db.close();
  const again = openDatabase(path);
  assert.equal(schemaVersion(again), v);
  again.close();
  const raw = new Database(path);
  raw.pragma(`user_version = ${v + 1}`);
  raw.close();
  assert.throws(
    () => openDatabase(path),
    (e: HavenError) => e.code === 'UNSUPPORTED' && /upgrade Haven/.test(e.message),
  );
});

test('the event log filters and pages newest first', (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  const { db, events } = open(dir.path);
  t.after(() => db.close());
  for (let i = 0; i < 5; i++)
    events.append({
      actor: 'a',
      action: i % 2 ? 'vm.start' : 'vm.stop',
      target: `vm${i}`,
      outcome: 'ok',
      message: `m${i}`,
    });
  const all = events.query();
  assert.deepEqual(
    all.map((e) => e.target),
    ['vm4', 'vm3', 'vm2', 'vm1', 'vm0'],
  );
  assert.deepEqual(
    events.query({ action: 'vm.start' }).map((e) => e.target),
    ['vm3', 'vm1'],
  );
  assert.deepEqual(
    events.query({ after: all[2]!.id }).map((e) => e.target),
    ['vm4', 'vm3'],
  );
  assert.equal(events.query({ limit: 2 }).length, 2);
});
