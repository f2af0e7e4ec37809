// Takeover after the loss of a site: a guest streams ordered writes over two disks at site A,
// replicated to site B. A's daemon and the guest's QEMU are killed with -9; `haven dr takeover`
// at B promotes the newest checkpoint (no older than the RPO objective when A was lost), whose
// disks hold a prefix of the guest's writes, defines the VM there and starts it. A, restarted,
// learns it was taken over and keeps the VM stopped (fenced). `haven dr resync` at B then
// replicates the group back to A's diverged volumes, sending only what differs (2 MiB written at B
// after the takeover: 2.0 MiB sent), and A's newest checkpoint equals B. Bad input first: nothing
// changes.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { connectNbd } from '../../src/nbd/index.js';
import { writesIn } from '../support/site.js';
import { eventually, pairedSites, type TestSite } from '../support/sites.js';
import {
  checkExports,
  replicaCheckpoints,
  replicationGroup,
  guestWrites,
  reportedPast,
  sha256OfExport,
  streamingVm,
} from '../support/replica-check.js';
import type { OrderedWrite } from '../support/write-order.js';

interface PeerRow {
  name: string;
  health: { state: string; link: string; missed: number; since: string; takenOver?: string[] };
}

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
const MiB = 1024 * 1024;
const nbdUri = (s: TestSite, exp: string) =>
  `nbd+unix:///${encodeURIComponent(exp)}?socket=${join(s.dir, 'run', 'nbd.sock')}`;
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
  // Data beyond the guest's slots (6 MiB per disk), replicated before the loss: what a resync back must not resend.
  const dev = await Promise.all(vm.volumes.map((v) => connectNbd(nbdUri(a, v))));
  for (const d of dev) {
    for (let at = 8 * MiB; at < 14 * MiB; at += MiB) await d.write(randomBytes(MiB), at);
    await d.flush();
    await d.close();
  }
  const seqNow = (await replicationGroup(a, 'g')).source?.appliedCheckpoint?.seq ?? 0;
  await eventually(
    'a checkpoint after the data',
    () => replicationGroup(a, 'g'),
    (g) => (g.source?.appliedCheckpoint?.seq ?? 0) > seqNow + 1,
  );
  // The guest streams; every write it reported before a checkpoint was taken must survive the loss.
  await eventually(
    'the guest streaming',
    () => guestWrites(a, 'app'),
    (w) => w.length >= 10,
    90_000,
  );
  await reportedPast(a, 'app');
  const reported = (await guestWrites(a, 'app')).length;
  const seqReported = (await replicationGroup(a, 'g')).source?.appliedCheckpoint?.seq ?? 0;
  await eventually(
    'a checkpoint after those writes applied',
    () => replicationGroup(a, 'g'),
    (g) => (g.source?.appliedCheckpoint?.seq ?? 0) > seqReported + 1,
  );

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

  // Peer health: each site sees the other reachable by its heartbeats.
  const peerAt = async (s: TestSite, name: string) =>
    (JSON.parse(await s.haven('site', 'peers', '--json')) as PeerRow[]).find((p) => p.name === name)!;
  assert.equal((await peerAt(b, 'site-a')).health.state, 'reachable');
  assert.equal((await b.api<PeerRow>('GET', '/peers/site-a')).health.state, 'reachable');

  // Site A is lost: its daemon and the guest's QEMU, both with -9.
  const running = (await vmsAt(a)).find((v) => v.name === 'app')!;
  await a.kill();
  const lostAt = Date.now();
  process.kill(running.pid!, 'SIGKILL');
  // B's heartbeats go unanswered: A is unreachable after 3 missed (1 s apart), an event says so.
  const gone = await eventually(
    'site A unreachable at B',
    () => b.api<PeerRow>('GET', '/peers/site-a'),
    (p) => p.health.state === 'unreachable',
    20_000,
  );
  t.diagnostic(
    `site A unreachable at B ${((Date.parse(gone.health.since) - lostAt) / 1000).toFixed(2)} s after kill -9`,
  );
  assert.equal(gone.health.missed >= 3, true);
  assert.ok(
    (
      await b.api<{ action: string; target: string; outcome: string }[]>(
        'GET',
        '/events?action=peer.health&target=site-a',
      )
    ).some((e) => e.outcome === 'warning'),
  );
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
  if (c.ok)
    assert.ok(
      (c.cuts.app?.prefix ?? 0) >= reported,
      `the replica holds ${c.cuts.app?.prefix} writes; the guest had reported ${reported} before a checkpoint applied`,
    );
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

  // B took A's group over: A is taken-over at B (its link still down).
  await eventually(
    'site A taken-over at B',
    () => peerAt(b, 'site-a'),
    (p) => p.health.state === 'taken-over' && p.health.link === 'unreachable',
  );

  // A comes back: it asks B, learns the takeover, and keeps the VM stopped.
  await a.restart();
  // B's heartbeats are answered again; A stays taken-over there (B runs its group).
  const answering = await eventually(
    'site A answering B again',
    () => b.api<PeerRow>('GET', '/peers/site-a'),
    (p) => p.health.link === 'reachable',
  );
  assert.equal(answering.health.state, 'taken-over');
  assert.deepEqual(answering.health.takenOver, ['g']);
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

  // Resync back: B replicates the group to A's diverged volumes, sending only what differs.
  assert.match(await a.havenFails('dr', 'resync', 'g'), /was not taken over by this site/);
  await b.haven('vm', 'stop', 'app', '--force');
  // New data at B after the takeover: 1 MiB per disk that A does not have.
  for (const v of vm.volumes) {
    const d = await connectNbd(nbdUri(b, v));
    await d.write(randomBytes(MiB), 4 * MiB);
    await d.flush();
    await d.close();
  }
  await b.haven('dr', 'resync', 'g');
  const back = await eventually(
    'the group replicating back to site A',
    () =>
      b.api<{
        role: string;
        source?: { state: string; sentBytes: number; appliedCheckpoint?: { seq: number } };
      }>('GET', '/replication/groups/g'),
    (g) => g.source?.state === 'replicating' && !!g.source.appliedCheckpoint,
  );
  const sent = back.source!.sentBytes;
  t.diagnostic(`resync back: ${sent} bytes sent for 2 × 16 MiB volumes holding more than 12 MiB of data`);
  assert.ok(
    sent >= 2 * MiB && sent <= 4 * MiB,
    `the resync sent ${sent} bytes: B changed 2 MiB, the guests a few extents`,
  );
  const cps = await replicaCheckpoints(a, 'g');
  for (const v of vm.volumes) {
    await a.api('POST', `/volumes/${v}/clone`, { snapshot: cps.at(-1)!.snapshot, name: `check-${v}` });
    assert.equal(
      await sha256OfExport(a, `check-${v}`),
      await sha256OfExport(b, v),
      `volume ${v} at A equals B`,
    );
    await a.api('DELETE', `/volumes/check-${v}`);
  }
  assert.match(
    await a.havenFails('vm', 'start', 'app'),
    /disk app-a is the replica of replication group g from site site-b/,
  );
  // Failback: B (replicating back, current) migrates the group home; A runs its own VM again.
  assert.match(
    await a.havenFails('dr', 'failback', 'g'),
    /neither replicates from this site nor was taken over here/,
  );
  assert.match(await b.havenFails('dr', 'failback', 'nosuch'), /nosuch/);
  const fb = JSON.parse(await b.haven('dr', 'failback', 'g', '--grace', '2s', '--json')) as {
    state: string;
    error?: string;
    kind: string;
    result: { from: string; to: string; reversed: boolean };
  };
  assert.equal(fb.state, 'succeeded', fb.error);
  assert.equal(fb.kind, 'dr.failback');
  assert.deepEqual([fb.result.from, fb.result.to, fb.result.reversed], ['site-b', 'site-a', true]);
  assert.equal((await vmsAt(a)).find((v) => v.name === 'app')?.state, 'running');
  assert.notEqual((await vmsAt(b)).find((v) => v.name === 'app')?.state, 'running');
});
