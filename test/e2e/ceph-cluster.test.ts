/** The throw-away single-node Ceph of scripts/ceph: it starts, serves RBD and S3, and stops by PID. */
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { after, before, test } from 'node:test';
import { startCeph, type Ceph } from '../support/ceph.js';

let ceph: Ceph;
before(async () => {
  ceph = await startCeph();
});
after(async () => {
  await ceph?.stop();
});

test('scripts/ceph: an rbd pool with snapshots and v2 clones, on loopback only', async () => {
  await ceph.rbd('create', '--size', '64M', `${ceph.pool}/base`);
  await ceph.rbd('snap', 'create', `${ceph.pool}/base@s1`);
  await ceph.rbd('clone', '--rbd-default-clone-format', '2', `${ceph.pool}/base@s1`, `${ceph.pool}/child`);
  assert.match(await ceph.rbd('snap', 'ls', `${ceph.pool}/base`), /\bs1\b/);
  assert.match(await ceph.rbd('children', `${ceph.pool}/base@s1`), /child/);
  const conf = readFileSync(ceph.conf, 'utf8');
  assert.match(conf, /public addr = 127\.0\.0\.1/);
  assert.match(conf, /cluster addr = 127\.0\.0\.1/);
});

test('scripts/ceph: the radosgw answers S3 on its loopback endpoint', async () => {
  assert.match(ceph.s3.endpoint, /^http:\/\/127\.0\.0\.1:\d+$/);
  const res = await fetch(ceph.s3.endpoint + '/');
  // Anonymous: an empty bucket list (200) or a refusal in S3's XML; either way the gateway answered.
  assert.ok(res.status === 200 || res.status === 403, `status ${res.status}`);
  assert.match(await res.text(), /ListAllMyBucketsResult|AccessDenied/);
});

test('scripts/ceph stop: every daemon is gone and no pid file is left', async () => {
  const pids = readdirSync(`${ceph.dir}/run`)
    .filter((f) => f.endsWith('.pid'))
    .map((f) => Number(readFileSync(`${ceph.dir}/run/${f}`, 'utf8')));
  assert.equal(pids.length, 3, 'mon, osd and radosgw pid files');
  const { execFileSync } = await import('node:child_process');
  execFileSync(new URL('../../../scripts/ceph', import.meta.url).pathname, ['stop', ceph.dir]);
  for (const pid of pids) assert.throws(() => process.kill(pid, 0), /ESRCH/, `pid ${pid} still runs`);
  assert.deepEqual(
    readdirSync(`${ceph.dir}/run`).filter((f) => f.endsWith('.pid')),
    [],
  );
});
