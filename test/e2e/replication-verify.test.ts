// Verify through two site daemons: a replica equal to its source verifies clean; a block of the
// replica corrupted on purpose at the target (written into the volume while its daemon is down,
// as a stray writer or bad sector would) is found by `haven replication verify`, named with its
// volume and offset; `--repair` resends it and verifies again; after that the replica's newest
// checkpoint equals the source byte for byte (SHA-256 over NBD on both sides).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { connectNbd } from '../../src/nbd/index.js';
import { StorageService } from '../../src/storage/index.js';
import { guestArgs } from '../support/site.js';
import { eventually, pairedSites, type TestSite } from '../support/sites.js';
import { replicaCheckpoints, replicationGroup, sha256OfExport } from '../support/replica-check.js';

const MiB = 1024 * 1024;
const SIZE = 16 * MiB;
const BAD = 9 * MiB + 12 * 1024; // inside an extent the source wrote

interface JobView {
  id: string;
  state: string;
  error?: string;
  errorCode?: string;
  result?: VerifyView;
}
interface VerifyView {
  checkpoint: number;
  comparedBytes: number;
  differences: { name?: string; offset: number; length: number }[];
  repair?: { bytes: number; checkpoint?: number };
  recheck?: VerifyView;
}

const nbd = (s: TestSite, exp: string) =>
  `nbd+unix:///${encodeURIComponent(exp)}?socket=${join(s.dir, 'run', 'nbd.sock')}`;

async function verifyJob(a: TestSite, body: object): Promise<JobView> {
  const job = await a.api<JobView>('POST', '/replication/groups/g/verify', body);
  return eventually(
    `verify job ${job.id}`,
    () => a.api<JobView>('GET', `/jobs/${job.id}`),
    (j) => j.state !== 'running',
    120_000,
  );
}

test('verify finds a block corrupted at the target, names it, repairs it; the replica then equals the source', async (t) => {
  const { a, b } = await pairedSites(t);
  await a.haven('volume', 'create', 'data', '--size', '16M');
  // Data at scattered places, written through the source's export (so through its tap).
  const dev = await connectNbd(nbd(a, 'data'));
  for (const at of [0, 5 * MiB, 9 * MiB, 15 * MiB]) await dev.write(randomBytes(MiB), at);
  await dev.flush();
  await dev.close();
  await a.haven('vm', 'create', 'db', '--disk', 'data', ...guestArgs('ping'));
  await a.haven('replication', 'enable', 'db', '--group', 'g', '--to', 'site-b', '--pool', 'default');
  await eventually(
    'the group replicating',
    () => replicationGroup(a, 'g'),
    (g) => g.source?.state === 'replicating' && !!g.source.appliedCheckpoint,
  );

  // The replica is nobody's disk: a VM at the target gets a clone of a checkpoint instead.
  assert.match(
    await b.havenFails('vm', 'create', 'thief', '--disk', 'data', ...guestArgs('ping')),
    /volume data is the replica of replication group g from site site-a: clone one of its checkpoints/,
  );

  const clean = await verifyJob(a, {});
  assert.equal(clean.state, 'succeeded', clean.error);
  assert.equal(clean.result?.comparedBytes, SIZE);
  assert.deepEqual(clean.result?.differences, []);

  // Four bytes of the replica go bad while the target daemon is down.
  await b.kill();
  const storage = StorageService.open(b.dir);
  try {
    const replica = storage.openDevice('data');
    await replica.write(Buffer.from('ROT!'), BAD);
    await replica.flush();
    await replica.close();
  } finally {
    storage.close();
  }
  await b.restart();
  await eventually(
    'the link up again',
    () => replicationGroup(a, 'g'),
    (g) => g.source?.state === 'replicating' && g.source.link === 'up',
  );

  // Found, and named: the volume and the extent (1 MiB) holding the bad bytes.
  const found = await verifyJob(a, {});
  assert.equal(found.state, 'failed');
  assert.equal(found.errorCode, 'CORRUPT');
  assert.match(
    found.error ?? '',
    /replica differs from the source .* in 1 range\(s\): data at 9437184 \(1048576 bytes\).*--repair/,
  );
  const cli = await a.havenFails('replication', 'verify', 'g');
  assert.match(cli, /data at 9437184/);

  // Repaired through the journal, then verified again at a checkpoint after the repair.
  const out = JSON.parse(await a.haven('replication', 'verify', 'g', '--repair', '--json')) as JobView;
  assert.equal(out.state, 'succeeded');
  assert.deepEqual(
    out.result?.differences.map((d) => [d.name, d.offset, d.length]),
    [['data', 9 * MiB, MiB]],
  );
  assert.ok((out.result?.repair?.bytes ?? 0) >= 4, 'the repair resent the extent');
  assert.deepEqual(out.result?.recheck?.differences, []);

  // Independently of verify: the newest checkpoint at the target equals the source.
  const repaired = out.result?.recheck?.checkpoint ?? 0;
  const cp = await eventually(
    'a checkpoint after the repair at the target',
    () => replicaCheckpoints(b, 'g'),
    (cps) => (cps.at(-1)?.seq ?? 0) >= repaired,
  );
  await b.api('POST', '/volumes/data/clone', { snapshot: cp.at(-1)!.snapshot, name: 'check' });
  t.after(() => b.api('DELETE', '/volumes/check').catch(() => undefined));
  assert.equal(await sha256OfExport(b, 'check'), await sha256OfExport(a, 'data'));
});

test('a seeded replica (a backup restored at the target): the initial sync sends only what changed since; the replica then equals the source', async (t) => {
  const { a, b } = await pairedSites(t);
  await a.haven('volume', 'create', 'data', '--size', '16M');
  const write = async (places: number[]) => {
    const dev = await connectNbd(nbd(a, 'data'));
    for (const at of places) await dev.write(randomBytes(MiB), at);
    await dev.flush();
    await dev.close();
  };
  await write([0, 3 * MiB, 6 * MiB, 9 * MiB, 12 * MiB, 15 * MiB]);
  // The seed: a backup of the volume, restored at the target site into a volume of its name.
  const repo = join(a.dir, '..', 'seed-repo');
  await a.haven('repo', 'init', '--repo', repo);
  const snap = JSON.parse(await a.haven('backup', 'volume:data', '--repo', repo, '--json')) as {
    result: { snapshot: string };
  };
  await b.haven('restore', snap.result.snapshot, '--repo', repo, '--to', 'volume:data');
  // The source moves on: 2 of its 6 MiB change after the backup.
  await write([3 * MiB, 12 * MiB]);
  await a.haven('vm', 'create', 'db', '--disk', 'data', ...guestArgs('ping'));

  // A seed of another size is refused, naming both sizes, and nothing is made on either side.
  await b.haven('volume', 'create', 'other', '--size', '8M');
  await a.haven('volume', 'create', 'other', '--size', '16M');
  await a.haven('vm', 'create', 'db2', '--disk', 'other', ...guestArgs('ping'));
  const enable = (vm: string, g: string) => [
    'replication',
    'enable',
    vm,
    '--group',
    g,
    '--to',
    'site-b',
    '--pool',
    'default',
    '--seeded',
  ];
  assert.match(
    await a.havenFails(...enable('db2', 'g2')),
    /volume other at site site-b has 8388608 bytes; the source volume has 16777216/,
  );
  assert.deepEqual(await a.api('GET', '/replication/groups'), []);
  assert.deepEqual(await b.api('GET', '/replication/groups'), []);

  await a.haven(...enable('db', 'g'));
  const g = await eventually(
    'the seeded group replicating',
    () =>
      a.api<{ source?: { state: string; sentBytes: number; appliedCheckpoint?: { seq: number } } }>(
        'GET',
        '/replication/groups/g',
      ),
    (x) => x.source?.state === 'replicating' && !!x.source.appliedCheckpoint,
  );
  const sent = g.source!.sentBytes;
  t.diagnostic(`seeded initial sync: ${sent} bytes on the link for 2 MiB changed of 6 MiB allocated`);
  assert.ok(sent >= 2 * MiB && sent <= 2.2 * MiB, `sent ${sent} bytes; 2 MiB changed since the seed`);
  // The seed is a replica now: not exported at the target.
  await assert.rejects(sha256OfExport(b, 'data'));

  const cps = await replicaCheckpoints(b, 'g');
  await b.api('POST', '/volumes/data/clone', { snapshot: cps.at(-1)!.snapshot, name: 'check' });
  t.after(() => b.api('DELETE', '/volumes/check').catch(() => undefined));
  assert.equal(await sha256OfExport(b, 'check'), await sha256OfExport(a, 'data'));
});
