// A business service of three test guests in two tiers (db; then app and web), each group
// replicated from site A to site B. The service is defined once at A and known at B. A rehearsal
// of the service at B boots all three from clones on isolated networks, tier by tier, each
// passing its heartbeat while production writes; cleanup leaves nothing. Then A is lost (kill -9
// of its daemon and QEMUs) and the takeover of the service at B starts tier 1 before tier 2.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { eventually, pairedSites, type TestSite } from '../support/sites.js';
import { guestWrites, replicationGroup, streamingVm } from '../support/replica-check.js';

interface Named {
  name: string;
}
interface VmView extends Named {
  state: string;
  pid?: number;
}
interface Tier<G> {
  tier: number;
  startedAt: string;
  groups: G[];
}
interface ServiceJob<G> {
  state: string;
  error?: string;
  result: { service: string; tiers: Tier<G>[] };
}
interface RehearsalView {
  group: string;
  endedAt: string;
  vms: { name: string; passed: boolean }[];
}
interface TakeoverView {
  group: string;
  vms: { name: string; state: string; startedAt?: string }[];
}

const names = async (s: TestSite, path: string) =>
  (await s.api<Named[]>('GET', path)).map((x) => x.name).sort();
const inventory = async (s: TestSite) => ({
  vms: await names(s, '/vms'),
  volumes: await names(s, '/volumes'),
  networks: await names(s, '/networks'),
});

test('a service of 3 guests in 2 tiers: rehearsal tier by tier with heartbeats, cleanup leaves nothing; takeover after the loss of A starts the tiers in order; service stop and start there in order', async (t) => {
  const { a, b } = await pairedSites(t);
  const groups = { db: 'g-db', app: 'g-app', web: 'g-web' };
  for (const [i, vm] of ['db', 'app', 'web'].entries()) {
    await streamingVm(a, vm, 10 + i, { rate: 5 });
    await a.haven('vm', 'start', vm);
    await a.haven(
      'replication',
      'enable',
      vm,
      '--group',
      groups[vm as keyof typeof groups],
      '--to',
      'site-b',
      '--pool',
      'default',
      '--rpo',
      '10s',
    );
  }
  for (const g of Object.values(groups))
    await eventually(
      `group ${g} replicating`,
      () => replicationGroup(a, g),
      (x) => x.source?.state === 'replicating' && !!x.source.appliedCheckpoint,
      120_000,
    );

  // Bad input: nothing stored on either site.
  assert.match(
    await a.havenFails('service', 'create', 'shop', '--tier', 'g-db', '--tier', 'g-app,g-db'),
    /group g-db is in tier 1 and tier 2/,
  );
  assert.match(
    await a.havenFails('service', 'create', 'shop', '--tier', 'g-nosuch'),
    /replication group g-nosuch does not exist/,
  );
  assert.match(
    await a.havenFails('service', 'create', 'g-db', '--tier', 'g-app'),
    /names a replication group/,
  );
  assert.deepEqual(await b.api('GET', '/services'), []);
  await a.haven('service', 'create', 'shop', '--tier', 'g-db', '--tier', 'g-app,g-web');
  const atB = await b.api<{ tiers: string[][] }>('GET', '/services/shop');
  assert.deepEqual(atB.tiers, [['g-db'], ['g-app', 'g-web']], 'the service is known where the replicas are');
  assert.match(
    await a.havenFails('service', 'create', 'other', '--tier', 'g-web'),
    /group g-web belongs to business service shop/,
  );

  // Rehearsal of the whole service at B, while production writes.
  await eventually(
    'the guests streaming',
    () => guestWrites(a, 'web'),
    (w) => w.length >= 3,
    120_000,
  );
  const before = await inventory(b);
  const writes = (await guestWrites(a, 'db')).length;
  const rh = JSON.parse(
    await b.haven(
      'dr',
      'rehearse',
      'shop',
      '--heartbeat',
      'console:"event":"write"',
      '--timeout',
      '120s',
      '--json',
    ),
  ) as ServiceJob<RehearsalView>;
  assert.equal(rh.state, 'succeeded', rh.error);
  const [t1, t2] = rh.result.tiers;
  assert.deepEqual(
    t1!.groups.map((g) => g.group),
    ['g-db'],
  );
  assert.deepEqual(
    t2!.groups.map((g) => g.group),
    ['g-app', 'g-web'],
  );
  assert.ok(rh.result.tiers.every((x) => x.groups.every((g) => g.vms.every((v) => v.passed))));
  assert.ok(
    Date.parse(t2!.startedAt) >= Date.parse(t1!.groups[0]!.endedAt),
    'tier 2 started once tier 1 was up',
  );
  assert.ok((await guestWrites(a, 'db')).length > writes, 'production went on writing');
  const running = (await b.api<VmView[]>('GET', '/vms'))
    .filter((v) => v.state === 'running')
    .map((v) => v.name)
    .sort();
  assert.deepEqual(running, ['app-rehearsal', 'db-rehearsal', 'web-rehearsal']);
  await b.haven('dr', 'cleanup', 'shop');
  assert.deepEqual(await inventory(b), before);

  // Site A is lost; the service is taken over at B, tier by tier.
  const pids = (await a.api<VmView[]>('GET', '/vms')).map((v) => v.pid!).filter(Boolean);
  await a.kill();
  for (const pid of pids) process.kill(pid, 'SIGKILL');
  const to = JSON.parse(await b.haven('dr', 'takeover', 'shop', '--json')) as ServiceJob<TakeoverView>;
  assert.equal(to.state, 'succeeded', to.error);
  const started = to.result.tiers.map((x) =>
    x.groups.flatMap((g) => g.vms.map((v) => Date.parse(v.startedAt!))),
  );
  t.diagnostic(`takeover of shop: tier starts ${to.result.tiers.map((x) => x.startedAt).join(', ')}`);
  assert.ok(Math.max(...started[0]!) <= Math.min(...started[1]!), 'every tier 1 VM started before tier 2');
  const up = (await b.api<VmView[]>('GET', '/vms'))
    .filter((v) => v.state === 'running')
    .map((v) => v.name)
    .sort();
  assert.deepEqual(up, ['app', 'db', 'web']);

  // The service stopped and started again at B in its order: the last tier first, then tier by tier.
  type PowerView = { group: string; vms: { name: string; action: string; at: string }[] };
  const down = JSON.parse(
    await b.haven('service', 'stop', 'shop', '--grace', '0', '--json'),
  ) as ServiceJob<PowerView>;
  assert.equal(down.state, 'succeeded', down.error);
  assert.deepEqual(
    down.result.tiers.map((x) => x.groups.map((g) => g.group)),
    [['g-web', 'g-app'], ['g-db']],
    'stopped the last tier first',
  );
  assert.ok(
    down.result.tiers.every((x) => x.groups.every((g) => g.vms.every((v) => v.action === 'stopped'))),
  );
  assert.deepEqual(
    (await b.api<VmView[]>('GET', '/vms')).filter((v) => v.state === 'running'),
    [],
  );
  const again = JSON.parse(await b.haven('service', 'start', 'shop', '--json')) as ServiceJob<PowerView>;
  assert.equal(again.state, 'succeeded', again.error);
  const at = again.result.tiers.map((x) => x.groups.flatMap((g) => g.vms.map((v) => Date.parse(v.at))));
  assert.deepEqual(
    again.result.tiers.map((x) => x.groups.map((g) => g.group)),
    [['g-db'], ['g-app', 'g-web']],
  );
  assert.ok(Math.max(...at[0]!) <= Math.min(...at[1]!), 'tier 1 running before tier 2 started');
  assert.deepEqual(
    (await b.api<VmView[]>('GET', '/vms'))
      .filter((v) => v.state === 'running')
      .map((v) => v.name)
      .sort(),
    ['app', 'db', 'web'],
  );
  await assert.rejects(b.haven('service', 'start', 'nope'), /nope/);
});
