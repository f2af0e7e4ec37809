// Continuous replication of a VM whose disks are on an RBD pool (issue 18), between two site
// daemons that each have an RBD pool in the same throw-away Ceph (prefixes a- and b-): the guest
// streams ordered writes over its two disks while they replicate; at checkpoints taken while it
// writes the replica holds a prefix of the guest's writes (never a later write without an earlier
// one), later checkpoints never less; the replicas and their checkpoints are RBD images and
// snapshots at the target (`rbd ls`, `rbd snap ls`); and once the guest stopped, the next
// checkpoint equals the source byte for byte (SHA-256 over NBD at both sites, and `rbd export`).
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { startCeph, type Ceph } from '../support/ceph.js';
import {
  checkReplica,
  guestWrites,
  GUEST_IO_ERROR,
  replicaCheckpoints,
  replicationGroup,
  reportedPast,
  sha256OfExport,
  streamingVm,
} from '../support/replica-check.js';
import { eventually, pairedSites, type TestSite } from '../support/sites.js';
import type { OrderedWrite } from '../support/write-order.js';
import { wholeConsoleLog } from '../support/site.js';

let ceph: Ceph;
before(async () => {
  ceph = await startCeph();
});
after(async () => {
  await ceph?.stop();
});

const rbdPool = (s: TestSite, prefix: string) => s.haven(...ceph.poolCreateArgs(prefix));

test('a VM on an RBD pool replicates to an RBD pool at the other site: prefix-consistent checkpoints, then equal to the source', async (t) => {
  const { a, b } = await pairedSites(t);
  await rbdPool(a, 'a-');
  await rbdPool(b, 'b-');
  const vm = await streamingVm(a, 'db', 31, { rate: 50, pool: 'ceph' });
  for (const v of vm.volumes)
    assert.equal((await a.api<{ pool: string }>('GET', `/volumes/${v}`)).pool, 'ceph');
  await a.haven(
    'replication',
    'enable',
    'db',
    '--group',
    'g',
    '--to',
    'site-b',
    '--pool',
    'ceph',
    '--rpo',
    '5s',
    '--checkpoint-every',
    '1s',
  );
  await a.haven('vm', 'start', 'db');
  await eventually(
    'the initial sync',
    () => replicationGroup(a, 'g'),
    (g) => !!g.source?.appliedCheckpoint,
    120_000,
  );
  const images = await ceph.rbd('ls', ceph.pool);
  for (const v of vm.volumes) {
    assert.match(images, new RegExp(`^a-${v}$`, 'm'), `the source ${v} is an RBD image`);
    assert.match(images, new RegExp(`^b-${v}$`, 'm'), `the replica of ${v} is an RBD image`);
  }
  const history = await eventually(
    '6 checkpoints while the guest writes',
    () => replicaCheckpoints(a, 'g'),
    (cps) => cps.filter((c) => c.name !== 'initial-sync').length >= 6,
    120_000,
  );
  await eventually(
    'the guest to report 40 writes',
    () => guestWrites(a, 'db'),
    (w) => w.length >= 40,
    120_000,
  );
  await reportedPast(a, 'db');
  await a.haven('vm', 'stop', 'db', '--force');
  const log = await wholeConsoleLog(a, 'db');
  assert.doesNotMatch(log, GUEST_IO_ERROR, 'the guest saw no I/O error');
  const writes: Record<string, OrderedWrite[]> = { db: await guestWrites(a, 'db') };
  assert.ok(writes.db!.length >= 40, `the guest wrote ${writes.db!.length} times`);

  // The checkpoints taken while it wrote: RBD snapshots of the replicas, each a prefix.
  const taken = history.filter((c) => c.name !== 'initial-sync').slice(-4);
  const snaps = await ceph.rbd('snap', 'ls', `${ceph.pool}/b-db-a`);
  let previous = 0;
  for (const cp of taken) {
    assert.match(snaps, new RegExp(`\\b${cp.snapshot}\\b`), `checkpoint ${cp.seq} is an RBD snapshot`);
    const r = await checkReplica(b, [vm], writes, cp.snapshot);
    assert.ok(r.ok, `checkpoint ${cp.seq}: ${r.ok ? '' : r.message}`);
    const cut = r.cuts.db!.prefix;
    assert.ok(cut >= previous, `checkpoint ${cp.seq} holds less than an earlier one`);
    previous = cut;
  }
  assert.ok(previous > 0, 'the checkpoints hold some of the writes');

  // Stopped: a checkpoint marked after the stop holds everything, byte for byte.
  const mark = JSON.parse(await a.haven('replication', 'checkpoint', 'g', '--name', 'stopped', '--json')) as {
    seq: number;
  };
  const cps = await eventually(
    'the checkpoint after the stop at the target',
    () => replicaCheckpoints(b, 'g'),
    (x) => (x.at(-1)?.seq ?? 0) >= mark.seq,
    60_000,
  );
  const final = cps.at(-1)!;
  const r = await checkReplica(b, [vm], writes, final.snapshot);
  assert.ok(r.ok, `final checkpoint: ${r.ok ? '' : r.message}`);
  for (const v of vm.volumes) {
    const clone = `final-${v}`;
    await b.api('POST', `/volumes/${v}/clone`, { snapshot: final.snapshot, name: clone });
    try {
      const source = await sha256OfExport(a, v);
      assert.equal(await sha256OfExport(b, clone), source, `the replica of ${v} at the last checkpoint`);
      // And what Ceph holds of both.
      for (const image of [`a-${v}`, `b-${v}@${final.snapshot}`]) {
        const file = join(a.dir, '..', `${image.replace('@', '_')}.img`);
        await ceph.rbd('export', '--no-progress', `${ceph.pool}/${image}`, file);
        assert.equal(
          createHash('sha256').update(readFileSync(file)).digest('hex'),
          source,
          `rbd export ${image}`,
        );
        rmSync(file);
      }
    } finally {
      await b.api('DELETE', `/volumes/${clone}`);
    }
  }
});
