// A site opened in this process (what the CLI does with --data): the same API over a private
// unix socket, so an offline command gets the daemon's checks, jobs and audit. Real Site on a
// temp data directory, real HTTP over the socket.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { tempDir } from '../../test/support/tmp.js';
import { HavenError } from '../common/index.js';
import type { Job, SiteEvent } from '../orchestration/index.js';
import { openLocalSite } from './local.js';

const MiB = 1024 * 1024;
const code = (c: string) => (e: unknown) => e instanceof HavenError && e.code === c;

test('a local site answers the API over a socket only its user reaches, and locks its data directory', async (t) => {
  const tmp = tempDir();
  t.after(tmp.cleanup);
  const dir = join(tmp.path, 'data');
  const local = await openLocalSite(dir);
  const sock = local.client.endpoint.socketPath!;
  try {
    assert.ok(sock.startsWith(join(dir, 'run')));
    assert.equal(statSync(join(dir, 'run')).mode & 0o077, 0, 'DATA/run is private to the site user');
    const pools = await local.client.get<{ name: string }[]>('/pools');
    assert.deepEqual(
      pools.map((p) => p.name),
      ['default'],
    );
    // A second process (or daemon) cannot open the same site meanwhile.
    await assert.rejects(openLocalSite(dir), code('CONFLICT'));
  } finally {
    await local.close();
  }
  assert.equal(existsSync(sock), false, 'the socket goes with the site');
  // Closed: the data directory is free again.
  await (await openLocalSite(dir)).close();
});

test('offline work is a job and an audit entry as through the daemon; bitmaps have routes of their own', async (t) => {
  const tmp = tempDir();
  t.after(tmp.cleanup);
  const dir = join(tmp.path, 'data');
  const local = await openLocalSite(dir);
  const c = local.client;
  let jobId: string;
  try {
    await c.post('/volumes', { name: 'v', sizeBytes: 8 * MiB, pool: 'default' });
    const b = await c.post<{ name: string; granularity: number; dirtyBytes: number }>('/volumes/v/bitmaps', {
      name: 'b0',
      granularity: 65536,
    });
    assert.deepEqual([b.name, b.granularity, b.dirtyBytes], ['b0', 65536, 0]);
    await assert.rejects(c.post('/volumes/v/bitmaps', { name: 'b0' }), code('CONFLICT'));
    await assert.rejects(c.post('/volumes/nope/bitmaps', { name: 'b1' }), code('NOT_FOUND'));
    await assert.rejects(
      c.post('/volumes/v/bitmaps', { name: 'b1', granularity: 'big' }),
      code('INVALID_ARGUMENT'),
    );
    const job = await c.post<Job>('/volumes/v/snapshots', { name: 's1', bitmap: 'b0' });
    jobId = job.id;
    let end: Job | undefined;
    await c.stream(`/jobs/${job.id}/watch`, (j) => (end = j as Job));
    assert.equal(end?.state, 'succeeded');
    const bitmaps = await c.get<{ name: string }[]>('/volumes/v/bitmaps');
    // The checkpoint keeps the epoch's changes frozen beside the restarted bitmap.
    assert.deepEqual(
      bitmaps.map((x) => x.name),
      ['b0', 'b0@s1'],
    );
    await c.post('/volumes/v/bitmaps/b0/clear');
    await c.delete('/volumes/v/bitmaps/b0');
    const left = await c.get<{ name: string }[]>('/volumes/v/bitmaps');
    assert.ok(!left.some((x) => x.name === 'b0'));
  } finally {
    await local.close();
  }
  // What the offline commands did is in the site's job list and audit log for the next opener.
  const again = await openLocalSite(dir);
  try {
    const j = await again.client.get<Job>(`/jobs/${jobId}`);
    assert.equal(j.kind, 'snapshot.create');
    assert.equal(j.target, 'v@s1');
    const events = await again.client.get<SiteEvent[]>('/events');
    const actions = events.map((e) => `${e.action} ${e.target} ${e.outcome}`);
    for (const want of [
      'volume.create v ok',
      'bitmap.add v#b0 ok',
      'bitmap.clear v#b0 ok',
      'bitmap.remove v#b0 ok',
    ])
      assert.ok(actions.includes(want), `${want} in ${actions.join('; ')}`);
    assert.ok(
      actions.some((a) => a.startsWith('bitmap.add v#b0 failed')),
      'a refused change is audited too',
    );
  } finally {
    await again.close();
  }
});
