// A planned migrate of a whole business service and its failback, through two site daemons: two
// guests in two tiers (db; then web) stream ordered writes over two disks at site A, each VM its
// own replication group. `haven dr migrate shop` at A stops web before db, then switches db's
// group and starts it at B before web's: B's checkpoints hold every write each guest reported,
// and replication runs back from B. `haven dr migrate shop` at B fails back the same way, sending
// only what the guests wrote at B, and the same VMs run at A again.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { eventually, pairedSites, type TestSite } from '../support/sites.js';
import { checkExports, guestWrites, streamingVm } from '../support/replica-check.js';
import type { OrderedWrite } from '../support/write-order.js';

const MiB = 1024 * 1024;

interface VmView {
  id: string;
  name: string;
  state: string;
}
interface MigrateReport {
  group: string;
  from: string;
  to: string;
  checkpoint: { seq: number; snapshot: string };
  stopped: { name: string; stoppedAt: string }[];
  started: { name: string; state: string; startedAt?: string }[];
  reversed: boolean;
}
interface ServiceJob {
  state: string;
  error?: string;
  result: { service: string; tiers: { tier: number; groups: MigrateReport[] }[] };
}

const vms = async (s: TestSite) => await s.api<VmView[]>('GET', '/vms');
const running = async (s: TestSite) =>
  (await vms(s))
    .filter((v) => v.state === 'running')
    .map((v) => v.name)
    .sort();
interface GroupAnswer {
  role: string;
  source?: { state: string; sentBytes: number; appliedCheckpoint?: { seq: number } };
}
const replicatingFrom = (s: TestSite, g: string) =>
  eventually(
    `group ${g} replicating from site ${s.name}`,
    () => s.api<GroupAnswer>('GET', `/replication/groups/${g}`),
    (x) => x.role === 'source' && x.source?.state === 'replicating' && !!x.source.appliedCheckpoint,
    120_000,
  );

/** Every write each guest reported at `from` is in the checkpoint each group's report names, at `to`. */
async function checkMigrated(
  to: TestSite,
  reports: MigrateReport[],
  guests: Awaited<ReturnType<typeof streamingVm>>[],
  reported: Record<string, OrderedWrite[]>,
  prefix: string,
  before?: (volume: string) => { site: TestSite; exp: string },
): Promise<void> {
  for (const r of reports) {
    const vm = guests.find((g) => `g-${g.name}` === r.group)!;
    for (const v of vm.volumes)
      await to.api('POST', `/volumes/${v}/clone`, {
        snapshot: r.checkpoint.snapshot,
        name: `${prefix}-${v}`,
      });
    const c = await checkExports(
      to,
      [vm],
      { [vm.name]: reported[vm.name]! },
      (v) => `${prefix}-${v}`,
      before,
    );
    assert.ok(
      c.ok && c.cuts[vm.name]!.prefix >= reported[vm.name]!.length,
      `${r.group} at ${to.name}: ${JSON.stringify(c).slice(0, 300)}; ${reported[vm.name]!.length} writes reported`,
    );
  }
}

test('migrate of a business service: stopped last tier first, started tier by tier at B with every reported write; failback sends only the delta', async (t) => {
  const { a, b } = await pairedSites(t);
  const guests = [
    await streamingVm(a, 'db', 31, { rate: 20 }),
    await streamingVm(a, 'web', 32, { rate: 20 }),
  ];
  for (const g of guests) {
    await a.haven('vm', 'start', g.name);
    await a.haven(
      'replication',
      'enable',
      g.name,
      '--group',
      `g-${g.name}`,
      '--to',
      'site-b',
      '--pool',
      'default',
      '--rpo',
      '5s',
    );
  }
  for (const g of guests) await replicatingFrom(a, `g-${g.name}`);
  await a.haven('service', 'create', 'shop', '--tier', 'g-db', '--tier', 'g-web');
  for (const g of guests)
    await eventually(
      `${g.name} streaming`,
      () => guestWrites(a, g.name),
      (w) => w.length >= 5,
      120_000,
    );
  const ids = Object.fromEntries((await vms(a)).map((v) => [v.name, v.id]));

  // Refused where the replicas are: nothing changes, the service runs on at A.
  assert.match(await b.havenFails('dr', 'migrate', 'shop'), /replicated to this site from site-a/);
  assert.deepEqual(await running(a), ['db', 'web']);

  const out = JSON.parse(await a.haven('dr', 'migrate', 'shop', '--grace', '3s', '--json')) as ServiceJob;
  assert.equal(out.state, 'succeeded', out.error);
  const [t1, t2] = out.result.tiers;
  assert.deepEqual([t1!.groups.map((g) => g.group), t2!.groups.map((g) => g.group)], [['g-db'], ['g-web']]);
  const [db, web] = [t1!.groups[0]!, t2!.groups[0]!];
  assert.ok(
    Date.parse(web.stopped[0]!.stoppedAt) <= Date.parse(db.stopped[0]!.stoppedAt),
    'web (tier 2) stopped before db (tier 1)',
  );
  assert.ok(
    Date.parse(db.started[0]!.startedAt!) <= Date.parse(web.started[0]!.startedAt!),
    'db (tier 1) started at B before web (tier 2)',
  );
  assert.ok(db.reversed && web.reversed, 'replication runs back from B');
  assert.deepEqual(await running(a), []);
  assert.deepEqual(await running(b), ['db', 'web']);
  const atA = {
    db: (await guestWrites(a, 'db')) as OrderedWrite[],
    web: (await guestWrites(a, 'web')) as OrderedWrite[],
  };
  await checkMigrated(b, [db, web], guests, atA, 'mig');

  // B runs the service and replicates it back: what it sends is what the guests write there.
  const sentByB: Record<string, number> = {};
  for (const g of guests) {
    await eventually(
      `${g.name} writing at B`,
      () => guestWrites(b, g.name),
      (w) => w.length >= 5,
      120_000,
    );
    await replicatingFrom(b, `g-${g.name}`);
  }
  for (const g of guests) {
    const before = (await guestWrites(b, g.name)).length;
    sentByB[g.name] = (await replicatingFrom(b, `g-${g.name}`)).source!.sentBytes;
    const writes = Math.max(before, 1);
    t.diagnostic(`g-${g.name} B → A: ${sentByB[g.name]} bytes sent for ${writes} guest writes of 4 KiB`);
    // The delta: the guest's 4 KiB writes (and framing), never the 2 × 16 MiB volumes again.
    assert.ok(
      sentByB[g.name]! <= 1.5 * (writes + 64) * 4096 + 256 * 1024,
      `g-${g.name}: ${sentByB[g.name]} bytes sent for ${writes} writes`,
    );
  }
  const fb = JSON.parse(await b.haven('dr', 'migrate', 'shop', '--grace', '3s', '--json')) as ServiceJob;
  assert.equal(fb.state, 'succeeded', fb.error);
  const back = fb.result.tiers.flatMap((x) => x.groups);
  assert.deepEqual(
    back.map((g) => [g.group, g.from, g.to]),
    [
      ['g-db', 'site-b', 'site-a'],
      ['g-web', 'site-b', 'site-a'],
    ],
  );
  assert.deepEqual(await running(a), ['db', 'web']);
  for (const v of await vms(a)) if (ids[v.name]) assert.equal(v.id, ids[v.name], `${v.name} is the same VM`);
  const atB = {
    db: (await guestWrites(b, 'db')) as OrderedWrite[],
    web: (await guestWrites(b, 'web')) as OrderedWrite[],
  };
  await checkMigrated(a, back, guests, atB, 'fb', (v) => ({ site: b, exp: `mig-${v}` }));
  const again = await Promise.all(
    guests.map(async (g) => (await replicatingFrom(a, `g-${g.name}`)).source!.sentBytes),
  );
  t.diagnostic(`replication A → B after the failback: ${again.join(', ')} bytes sent`);
  for (const n of again) assert.ok(n < MiB, `sent ${n} bytes after the failback`);
});
