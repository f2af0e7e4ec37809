// A planned migrate and the failback, through two site daemons: a guest streams ordered writes
// over two disks at site A. `haven dr migrate` at A stops it, drains replication to a final
// checkpoint, verifies, and B starts the VM from that checkpoint — which holds every write the
// guest reported before it stopped — and replication runs from B back to A, sending almost
// nothing (A's volumes were equal). `haven dr migrate` at B fails back the same way: A runs the
// same VM again from a checkpoint holding every write B's guest reported.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { connectNbd } from '../../src/nbd/index.js';
import { writesIn } from '../support/site.js';
import { eventually, pairedSites, type TestSite } from '../support/sites.js';
import { checkExports, guestWrites, streamingVm } from '../support/replica-check.js';
import type { OrderedWrite } from '../support/write-order.js';

const MiB = 1024 * 1024;
const nbdUri = (s: TestSite, exp: string) =>
  `nbd+unix:///${encodeURIComponent(exp)}?socket=${join(s.dir, 'run', 'nbd.sock')}`;

interface VmView {
  id: string;
  name: string;
  state: string;
}
interface MigrateJob {
  state: string;
  error?: string;
  result: {
    from: string;
    to: string;
    checkpoint: { seq: number; snapshot: string };
    verified: boolean;
    started: { name: string; state: string }[];
    downtimeSeconds: number;
    reversed: boolean;
  };
}
interface EvacuateJob {
  state: string;
  error?: string;
  result: {
    services: {
      service?: string;
      to: string;
      tiers: { groups: { group: string }[] }[];
      downtimeSeconds: number;
    }[];
  };
}
interface GroupAnswer {
  role: string;
  source?: { state: string; sentBytes: number; appliedCheckpoint?: { seq: number } };
}

const vmAt = async (s: TestSite) => (await s.api<VmView[]>('GET', '/vms')).find((v) => v.name === 'app');
const group = (s: TestSite) => s.api<GroupAnswer>('GET', '/replication/groups/g');
const replicatingFrom = (s: TestSite) =>
  eventually(
    'the group replicating',
    () => group(s),
    (g) => g.role === 'source' && g.source?.state === 'replicating' && !!g.source.appliedCheckpoint,
    90_000,
  );

/** Clones of the volumes at `snapshot` at site `s`, named `PREFIX-VOLUME`. */
async function clones(
  s: TestSite,
  volumes: readonly string[],
  snapshot: string,
  prefix: string,
): Promise<void> {
  for (const v of volumes) await s.api('POST', `/volumes/${v}/clone`, { snapshot, name: `${prefix}-${v}` });
}

test('migrate A → B with every reported write on B, replication back almost free; failback B → A the same way', async (t) => {
  const { a, b } = await pairedSites(t);
  const vm = await streamingVm(a, 'app', 7, { rate: 20 });
  // Data beyond the guest's slots: what neither direction may send again.
  for (const v of vm.volumes) {
    const d = await connectNbd(nbdUri(a, v));
    for (let at = 8 * MiB; at < 14 * MiB; at += MiB) await d.write(randomBytes(MiB), at);
    await d.flush();
    await d.close();
  }
  await a.haven('vm', 'start', 'app');
  const homeId = (await vmAt(a))!.id;
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
    '5s',
  );
  await replicatingFrom(a);
  await eventually(
    'the guest streaming',
    () => guestWrites(a, 'app'),
    (w) => w.length >= 10,
    90_000,
  );

  assert.match(
    await b.havenFails('dr', 'migrate', 'g'),
    /replicated to this site from site-a: migrate it from there/,
  );

  // Migrate: no write the guest reported is lost.
  const out = JSON.parse(await a.haven('dr', 'migrate', 'g', '--grace', '5s', '--json')) as MigrateJob;
  assert.equal(out.state, 'succeeded', out.error);
  const m = out.result;
  t.diagnostic(`migrate: checkpoint ${m.checkpoint.seq}, downtime ${m.downtimeSeconds} s`);
  assert.deepEqual([m.from, m.to, m.verified, m.reversed], ['site-a', 'site-b', true, true]);
  assert.deepEqual(
    m.started.map((v) => [v.name, v.state]),
    [['app', 'running']],
  );
  assert.notEqual((await vmAt(a))?.state, 'running');
  const atA = (await guestWrites(a, 'app')) as OrderedWrite[];
  await clones(b, vm.volumes, m.checkpoint.snapshot, 'mig');
  const c1 = await checkExports(b, [vm], { app: atA }, (v) => `mig-${v}`);
  assert.ok(
    c1.ok && c1.cuts.app!.prefix >= atA.length,
    `B's checkpoint: ${JSON.stringify(c1).slice(0, 300)}; ${atA.length} writes reported at A`,
  );

  // B runs the VM; replication runs from B to A, and sent next to nothing to start (A was equal).
  await eventually(
    'the guest writing at site B',
    async () => writesIn(await b.text('/vms/app/console-log?bytes=999999999')).length,
    (n) => n >= 5,
    90_000,
  );
  const back = await replicatingFrom(b);
  t.diagnostic(
    `replication B → A after the migrate: ${back.source!.sentBytes} bytes sent so far (volumes hold > 12 MiB)`,
  );
  assert.ok(back.source!.sentBytes < MiB, `sent ${back.source!.sentBytes} bytes`);
  assert.equal((await group(a)).role, 'target');
  assert.match(
    await a.havenFails('vm', 'start', 'app'),
    /is the replica of replication group g from site site-b/,
  );

  // Failback: B → A, the VM at A is the same VM, every write B's guest reported is there.
  const fb = JSON.parse(await b.haven('dr', 'migrate', 'g', '--grace', '5s', '--json')) as MigrateJob;
  assert.equal(fb.state, 'succeeded', fb.error);
  t.diagnostic(`failback: checkpoint ${fb.result.checkpoint.seq}, downtime ${fb.result.downtimeSeconds} s`);
  assert.deepEqual([fb.result.from, fb.result.to, fb.result.reversed], ['site-b', 'site-a', true]);
  const home = await vmAt(a);
  assert.equal(home?.state, 'running');
  assert.equal(home?.id, homeId, 'the VM at A is the one it always was');
  const atB = (await guestWrites(b, 'app')) as OrderedWrite[];
  await clones(a, vm.volumes, fb.result.checkpoint.snapshot, 'fb');
  // Before B's guest wrote, its disks held the migrate's checkpoint (the clones at B).
  const c2 = await checkExports(
    a,
    [vm],
    { app: atB },
    (v) => `fb-${v}`,
    (v) => ({ site: b, exp: `mig-${v}` }),
  );
  assert.ok(
    c2.ok && c2.cuts.app!.prefix >= atB.length,
    `A's checkpoint: ${JSON.stringify(c2).slice(0, 300)}; ${atB.length} writes reported at B`,
  );
  const again = await replicatingFrom(a);
  t.diagnostic(`replication A → B after the failback: ${again.source!.sentBytes} bytes sent so far`);
  assert.ok(again.source!.sentBytes < MiB, `sent ${again.source!.sentBytes} bytes`);

  // Evacuate: the business service of the group moves off A's host to B, then off site B back.
  await a.haven('service', 'create', 'shop', '--tier', 'g');
  const hostA = (await a.api<{ name: string }[]>('GET', '/hosts'))[0]!.name;
  assert.match(await a.havenFails('dr', 'evacuate'), /give --site \(this site\) or --host/);
  assert.match(await a.havenFails('dr', 'evacuate', '--site', 'site-b'), /run it at site site-b itself/);
  assert.match(await a.havenFails('dr', 'evacuate', '--host', 'nosuch'), /no host nosuch/);
  assert.match(
    await b.havenFails('dr', 'evacuate', '--site', 'site-b'),
    /nothing to evacuate: no business service or replication group runs from this site/,
  );
  assert.equal((await vmAt(a))?.state, 'running', 'nothing changed');
  const ev = JSON.parse(
    await a.haven('dr', 'evacuate', '--host', hostA, '--grace', '1s', '--json'),
  ) as EvacuateJob;
  assert.equal(ev.state, 'succeeded', ev.error);
  assert.deepEqual(
    ev.result.services.map((x) => [x.service, x.to, x.tiers.map((t) => t.groups.map((g) => g.group))]),
    [['shop', 'site-b', [['g']]]],
  );
  t.diagnostic(`evacuate --host ${hostA}: downtime ${ev.result.services[0]!.downtimeSeconds} s`);
  assert.equal((await vmAt(b))?.state, 'running');
  assert.notEqual((await vmAt(a))?.state, 'running');
  await replicatingFrom(b);
  const evb = JSON.parse(
    await b.haven('dr', 'evacuate', '--site', 'site-b', '--grace', '1s', '--json'),
  ) as EvacuateJob;
  assert.equal(evb.state, 'succeeded', evb.error);
  assert.equal((await vmAt(a))?.state, 'running');
  assert.equal((await vmAt(a))?.id, homeId);
  // Each evacuation's report is kept where it ran.
  const [rep] = await a.api<
    { id: string; kind: string; groups: string[]; rpoSeconds?: number; rtoSeconds?: number }[]
  >('GET', '/dr/reports?kind=evacuate');
  assert.deepEqual([rep?.kind, rep?.groups, rep?.rpoSeconds], ['evacuate', ['g'], 0]);
  assert.match(await a.haven('dr', 'report', rep!.id), /Evacuation of host:.* SUCCEEDED/);
});
