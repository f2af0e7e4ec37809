// Resiliency groups across two paired sites: a group is defined with its VMs, replicated as one
// consistency group by naming only the group, known at the target as a replica; a VM is in at
// most one group; membership is fixed while the group replicates; a group that does not
// replicate gets a clear refusal from every DR path (an operation, a business service).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { eventually, pairedSites, type TestSite } from '../support/sites.js';

interface GroupView {
  name: string;
  vms: string[];
  defined: boolean;
  description?: string;
  replication?: { role: string; peer: string; state?: string };
  service?: string;
}

async function defineVm(s: TestSite, name: string): Promise<void> {
  await s.haven('volume', 'create', `${name}-disk`, '--size', '4M');
  await s.haven('vm', 'create', name, '--disk', `${name}-disk`, '--memory', '64M');
}

const group = async (s: TestSite, name: string) =>
  JSON.parse(await s.haven('group', 'show', name, '--json')) as GroupView;

test('groups: define, one group per VM, replicate by the group, fixed membership while replicating, clear refusals where it does not replicate', async (t) => {
  const { a, b } = await pairedSites(t);
  for (const vm of ['v1', 'v2', 'v3']) await defineVm(a, vm);

  const g1 = JSON.parse(
    await a.haven('group', 'create', 'g1', '--vm', 'v1', '--vm', 'v2', '--description', 'shop', '--json'),
  ) as GroupView;
  assert.deepEqual(g1.vms, ['v1', 'v2'], 'the VMs in the order given');
  assert.equal(g1.defined, true);
  assert.equal(g1.replication, undefined, 'not replicated yet');

  // Bad input: each refused with a message naming the reason, and nothing changed.
  assert.match(await a.havenFails('group', 'create', 'g2', '--vm', 'v2'), /VM v2 is in group g1 already/);
  assert.match(await a.havenFails('group', 'create', 'g2', '--vm', 'nosuch'), /nosuch/);
  assert.match(await a.havenFails('group', 'create', 'g1'), /group g1 exists already/);
  assert.match(await a.havenFails('group', 'create', 'bad/name'), /name/);
  assert.match(await a.havenFails('group', 'add', 'g1', 'v1'), /VM v1 is in group g1 already/);
  assert.match(
    await a.havenFails('replication', 'enable', 'v3', '--group', 'g1', '--to', 'site-b', '--pool', 'default'),
    /group g1 holds VM\(s\) v1, v2: replicate exactly those/,
  );
  assert.match(
    await a.havenFails('replication', 'enable', 'v1', '--group', 'gx', '--to', 'site-b', '--pool', 'default'),
    /VM v1 is in group g1: a VM belongs to at most one group/,
  );
  assert.match(await a.havenFails('dr', 'migrate', 'g1'), /group g1 does not replicate/);
  assert.match(
    await a.havenFails('service', 'create', 'shop', '--tier', 'g1'),
    /group g1 does not replicate/,
  );
  assert.deepEqual(
    (JSON.parse(await a.haven('group', 'list', '--json')) as GroupView[]).map((g) => g.name),
    ['g1'],
    'no group was made by a refused request',
  );
  assert.deepEqual(
    JSON.parse(await a.haven('replication', 'list', '--json')),
    [],
    'no replication group either',
  );

  // Replicated by naming the group only: its VMs are the consistency group.
  await a.haven(
    'replication',
    'enable',
    '--group',
    'g1',
    '--to',
    'site-b',
    '--pool',
    'default',
    '--rpo',
    '10s',
  );
  const r = JSON.parse(await a.haven('replication', 'show', 'g1', '--json')) as { vms: string[] };
  assert.deepEqual(r.vms, ['v1', 'v2']);
  await eventually(
    'group g1 replicating',
    () => group(a, 'g1'),
    (g) => g.replication?.state === 'replicating',
    60_000,
  );
  const atB = (JSON.parse(await b.haven('group', 'list', '--json')) as GroupView[]).find(
    (g) => g.name === 'g1',
  );
  assert.equal(atB?.replication?.role, 'target', 'the target site knows the group as a replica');
  assert.equal(atB?.replication?.peer, 'site-a');
  assert.equal(atB?.defined, false);

  // Membership is fixed while it replicates; the group cannot be deleted either.
  assert.match(
    await a.havenFails('group', 'add', 'g1', 'v3'),
    /replicates to site site-b as one consistency group/,
  );
  assert.match(await a.havenFails('group', 'remove', 'g1', 'v2'), /replicates to site site-b/);
  assert.match(await a.havenFails('group', 'delete', 'g1'), /disable its replication first/);
  assert.match(await b.havenFails('group', 'add', 'g1', 'v3'), /does not exist|replica of site site-a/);

  // Replicating VMs that are in no group makes them one.
  await a.haven('replication', 'enable', 'v3', '--group', 'g3', '--to', 'site-b', '--pool', 'default');
  const g3 = await group(a, 'g3');
  assert.deepEqual(g3.vms, ['v3']);
  assert.equal(g3.defined, true);

  // A service of a replicated group is named in the group's view.
  await a.haven('service', 'create', 'shop', '--tier', 'g1');
  assert.equal((await group(a, 'g1')).service, 'shop');

  // Disabled, the group is the operator's again: it changes, and goes.
  await a.haven('service', 'delete', 'shop');
  await a.haven('replication', 'disable', 'g1');
  await b.haven('replication', 'disable', 'g1').catch(() => undefined); // told already, or not
  const after = JSON.parse(await a.haven('group', 'remove', 'g1', 'v2', '--json')) as GroupView;
  assert.deepEqual(after.vms, ['v1']);
  assert.equal(after.replication, undefined);
  await a.haven('group', 'add', 'g1', 'v2');
  assert.deepEqual((await group(a, 'g1')).vms, ['v1', 'v2']);
  await a.haven('group', 'delete', 'g1');
  assert.match(await a.havenFails('group', 'show', 'g1'), /group g1 does not exist/);

  // A deleted VM leaves its group (v3's group g3 still replicates: v3 cannot be deleted).
  assert.match(await a.havenFails('vm', 'delete', 'v3'), /replication group g3/);
  await a.haven('group', 'create', 'g4', '--vm', 'v1');
  await a.haven('vm', 'delete', 'v1');
  assert.deepEqual((await group(a, 'g4')).vms, []);

  // Audited: each change names the actor's action.
  const events = JSON.parse(await a.haven('event', 'list', '--json', '--limit', '200')) as {
    action: string;
  }[];
  for (const action of ['group.create', 'group.add', 'group.remove', 'group.delete'])
    assert.ok(
      events.some((e) => e.action === action),
      `an event ${action}`,
    );
});
