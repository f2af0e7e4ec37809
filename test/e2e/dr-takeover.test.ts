// Takeover after the loss of a site: a guest streams ordered writes over two disks at site A,
// replicated to site B. A's daemon and the guest's QEMU are killed with -9; `haven dr takeover`
// at B promotes the newest checkpoint (no older than the RPO objective when A was lost), whose
// disks hold a prefix of the guest's writes, defines the VM there and starts it. A, restarted,
// learns it was taken over and keeps the VM stopped (fenced). Bad input first: nothing changes.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { writesIn } from '../support/site.js';
import { eventually, pairedSites, type TestSite } from '../support/sites.js';
import {
  checkExports,
  replicaCheckpoints,
  replicationGroup,
  reportedPast,
  streamingVm,
} from '../support/replica-check.js';
import type { OrderedWrite } from '../support/write-order.js';

interface VmView {
  id: string;
  name: string;
  state: string;
  pid?: number;
  disks: { volume: string }[];
}
interface TakeoverJob {
  state: string;
  error?: string;
  result: {
    from: string;
    peerReachable: boolean;
    checkpoint: { seq: number; time: string };
    dataAgeSeconds: number;
    vms: { name: string; state: string }[];
  };
}

const RPO = 5;
const vmsAt = (s: TestSite) => s.api<VmView[]>('GET', '/vms');

test('takeover after kill -9 of the source site and its QEMU: the replica holds a prefix of the writes, the VM runs at the target; the old source is fenced', async (t) => {
  const { a, b } = await pairedSites(t);
  const vm = await streamingVm(a, 'app', 41, { rate: 20 });
  await a.haven('vm', 'start', 'app');
  await a.haven(
    'replication',
    'enable',
    'app',
    '--group',
    'g',
    '--to',
    'site-b',
    '--pool',
    'default',
    '--rpo',
    `${RPO}s`,
    '--checkpoint-every',
    '1s',
  );
  await eventually(
    'the group replicating',
    () => replicationGroup(a, 'g'),
    (g) => g.source?.state === 'replicating' && !!g.source.appliedCheckpoint,
  );
  await reportedPast(a, 'app');

  // Refused, each naming what is wrong; nothing changes.
  assert.match(
    await a.havenFails('dr', 'takeover', 'g'),
    /replicated from this site to site-b: a takeover is run at the site holding the replica/,
  );
  assert.match(
    await b.havenFails('dr', 'takeover', 'g', '--checkpoint', 'nosuch'),
    /holds no checkpoint nosuch: it holds \d+, from/,
  );
  assert.match(
    await b.havenFails('dr', 'takeover', 'g', '--network-map', 'oops'),
    /--network-map oops: use SOURCE=TARGET/,
  );
  assert.match(
    await b.havenFails('dr', 'takeover', 'g'),
    /site site-a answers: a takeover now would let group g run at both sites/,
  );
  assert.deepEqual(await vmsAt(b), []);
  assert.equal((await replicationGroup(b, 'g')).source, undefined);
  assert.ok(!(await b.api<{ takenOver?: unknown }>('GET', '/replication/groups/g')).takenOver);

  // Site A is lost: its daemon and the guest's QEMU, both with -9.
  const running = (await vmsAt(a)).find((v) => v.name === 'app')!;
  await a.kill();
  const lostAt = Date.now();
  process.kill(running.pid!, 'SIGKILL');
  const log = readFileSync(join(a.dir, 'vms', running.id, 'console.log'), 'utf8');
  const writes = writesIn(log) as unknown as OrderedWrite[];
  assert.ok(writes.length >= 3, `the guest wrote before the loss (${writes.length} writes)`);

  const job = JSON.parse(await b.haven('dr', 'takeover', 'g', '--no-start', '--json')) as TakeoverJob;
  assert.equal(job.state, 'succeeded', job.error);
  const r = job.result;
  assert.equal(r.from, 'site-a');
  assert.equal(r.peerReachable, false);
  const age = (lostAt - Date.parse(r.checkpoint.time)) / 1000;
  t.diagnostic(
    `takeover at checkpoint ${r.checkpoint.seq}: ${age.toFixed(2)} s older than the loss of site A`,
  );
  assert.ok(age <= RPO, `the checkpoint is ${age} s older than the loss, more than the RPO of ${RPO} s`);
  assert.equal(
    r.checkpoint.seq,
    (await replicaCheckpoints(b, 'g').catch(() => [])).at(-1)?.seq ?? r.checkpoint.seq,
  );
  assert.deepEqual(r.vms, [{ name: 'app', state: 'defined' }]);

  // The promoted volumes are ordinary volumes now, exported, holding a prefix of the guest's writes.
  const c = await checkExports(b, [vm], { app: writes }, (v) => v);
  assert.ok(c.ok, `the taken-over disks are not a prefix of the writes: ${JSON.stringify(c).slice(0, 400)}`);
  if (c.ok) assert.ok((c.cuts.app?.prefix ?? 0) >= 1, 'the replica holds writes of the guest');
  const defined = (await vmsAt(b)).find((v) => v.name === 'app')!;
  assert.deepEqual(
    defined.disks.map((d) => d.volume),
    vm.volumes,
  );

  // The VM runs at B: its guest boots on the recovered disks and writes again.
  await b.haven('vm', 'start', 'app');
  await eventually(
    'the guest writing at site B',
    async () => writesIn(await b.text('/vms/app/console-log?bytes=999999999')).length,
    (n) => n >= 3,
    90_000,
  );
  assert.ok(
    (await b.api<{ takenOver?: { checkpoint: { seq: number } } }>('GET', '/replication/groups/g')).takenOver,
  );

  // A comes back: it asks B, learns the takeover, and keeps the VM stopped.
  await a.restart();
  const fenced = await eventually(
    'site A fenced',
    () => a.api<{ fenced?: { by: string; checkpoint: number } }>('GET', '/replication/groups/g'),
    (g) => !!g.fenced,
  );
  assert.equal(fenced.fenced?.by, 'site-b');
  assert.equal(fenced.fenced?.checkpoint, r.checkpoint.seq);
  assert.match(
    await a.havenFails('vm', 'start', 'app'),
    /VM app is in replication group g, which site site-b took over at .*fenced here/,
  );
  assert.notEqual((await vmsAt(a)).find((v) => v.name === 'app')?.state, 'running');
});
