// A rehearsal at the site holding the replica, while production goes on: site A's guest streams
// writes over two disks, replicated to B. `haven dr rehearse` at B boots the group's VM from
// clones of a checkpoint on an isolated network made for it and checks its heartbeat (its console
// shows it writing again); meanwhile A's guest keeps writing and the RPO stays within its
// objective. `haven dr cleanup` then leaves no VM, volume or network behind, and replication goes
// on (a checkpoint the clones came from is released with them).
import { test } from 'node:test';
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { promisify } from 'node:util';
import assert from 'node:assert/strict';
import { eventually, pairedSites, type TestSite } from '../support/sites.js';
import { guestWrites, replicationGroup, streamingVm } from '../support/replica-check.js';

interface Named {
  name: string;
}
interface RehearseJob {
  id: string;
  state: string;
  error?: string;
  result: {
    checkpoint: { seq: number };
    network?: string;
    vms: { name: string; of: string; passed: boolean; detail: string }[];
    passed: boolean;
  };
}
interface Objective {
  compliance: { compliant: boolean; reasons: { code: string; message: string }[] }[];
}
interface Report {
  id: string;
  outcome: string;
  groups: string[];
  checkpoints: { seq: number }[];
  rpoSeconds?: number;
  rtoSeconds?: number;
  objective?: { name: string; rpoMet?: boolean; rtoMet?: boolean };
  steps: { time: string; level: string; message: string }[];
}
interface VmView extends Named {
  state: string;
  seed?: string;
  nics: { network: string; mac?: string }[];
  disks: { volume: string }[];
}
interface NetworkView extends Named {
  kind: string;
}

const RPO = 5;
const run = promisify(execFile);
const names = async (s: TestSite, path: string) =>
  (await s.api<Named[]>('GET', path)).map((x) => x.name).sort();
const inventory = async (s: TestSite) => ({
  vms: await names(s, '/vms'),
  volumes: await names(s, '/volumes'),
  networks: await names(s, '/networks'),
});

test('rehearsal: the VM boots from a checkpoint on an isolated network and passes its heartbeat while production writes within its RPO; cleanup leaves nothing', async (t) => {
  const { a, b } = await pairedSites(t);
  // On a production network of A's, which B does not have: the rehearsal puts the NIC on its own.
  await a.haven('network', 'create', 'prod', '--kind', 'isolated');
  await streamingVm(a, 'app', 3, { rate: 20, nics: ['prod'] });
  await a.haven('vm', 'start', 'app');
  // What the guest gets where it is recovered (a NoCloud seed); bad input first, nothing stored.
  assert.match(
    await a.havenFails('vm', 'recovery', 'app', '--nic', '10.20.0.5'),
    /10\.20\.0\.5 is not an address with a prefix length/,
  );
  assert.match(
    await a.havenFails('vm', 'recovery', 'app', '--nic', '-', '--nic', '10.20.0.6/24'),
    /VM app has 1 NIC\(s\): no settings for NIC 1/,
  );
  assert.match(await a.havenFails('vm', 'recovery', 'app', '--hostname', 'bad_name'), /not a host name/);
  await a.haven(
    'vm',
    'recovery',
    'app',
    '--hostname',
    'app-dr',
    '--nic',
    '10.20.0.5/24,gw=10.20.0.1,dns=10.20.0.53',
  );
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
  );
  await eventually(
    'the group replicating',
    () => replicationGroup(a, 'g'),
    (g) => g.source?.state === 'replicating' && !!g.source.appliedCheckpoint,
  );
  await eventually(
    'the guest streaming',
    () => guestWrites(a, 'app'),
    (w) => w.length >= 5,
    90_000,
  );
  const before = await inventory(b);

  // A service objective for the group, applied at A and told to B: the RPO is met, but the
  // group was never rehearsed, so neither the rehearsal cadence nor the RTO is.
  assert.match(await a.havenFails('objective', 'create', 'bad'), /give at least one target/);
  await a.haven(
    'objective',
    'create',
    'gold',
    '--rpo',
    `${RPO}s`,
    '--history',
    '30m',
    '--rehearse-every',
    '1h',
    '--rto',
    '2m',
  );
  assert.match(
    await a.havenFails('objective', 'apply', 'gold', '--group', 'nosuch'),
    /replication group nosuch does not exist/,
  );
  const applied = JSON.parse(await a.haven('objective', 'apply', 'gold', '--group', 'g', '--json')) as {
    notTold?: string[];
  };
  assert.equal(applied.notTold, undefined);
  assert.deepEqual(
    (await b.api<{ name: string; appliedTo: unknown[] }[]>('GET', '/objectives')).map((o) => [
      o.name,
      o.appliedTo,
    ]),
    [['gold', [{ kind: 'group', target: 'g' }]]],
  );
  const unmet = await a.api<Objective>('GET', '/objectives/gold');
  assert.equal(unmet.compliance[0]?.compliant, false);
  assert.deepEqual(unmet.compliance[0]?.reasons.map((x) => x.code).sort(), ['rehearsal', 'rto']);
  assert.match(await a.haven('objective', 'show', 'gold'), /never rehearsed successfully/);
  await eventually(
    'an objective alert at A',
    () => a.api<{ rule: string; object: string }[]>('GET', '/alerts?state=open&rule=objective.noncompliant'),
    (al) => al.some((x) => x.object === 'group:g'),
  );

  // Refused, changing nothing: at the source, a bad heartbeat, an unknown network.
  assert.match(await a.havenFails('dr', 'rehearse', 'g'), /replicated from this site to site-b/);
  assert.match(
    await b.havenFails('dr', 'rehearse', 'g', '--heartbeat', 'ping'),
    /heartbeat "ping" is not agent/,
  );
  assert.match(await b.havenFails('dr', 'rehearse', 'g', '--network', 'nosuch'), /network nosuch/);
  assert.match(await b.havenFails('dr', 'cleanup', 'g'), /no rehearsal to clean up/);
  assert.deepEqual(await inventory(b), before);

  // Production's pace during the rehearsal: RPO samples and the guest's writes.
  const rpo: number[] = [];
  let sampling = true;
  const sampler = (async () => {
    while (sampling) {
      const g = await a.api<{ source?: { rpoSeconds?: number } }>('GET', '/replication/groups/g');
      if (g.source?.rpoSeconds !== undefined) rpo.push(g.source.rpoSeconds);
      await new Promise((r) => setTimeout(r, 250));
    }
  })();
  // Changed while replicating: the target is told (the rehearsal's seed has the new name).
  await a.haven(
    'vm',
    'recovery',
    'app',
    '--hostname',
    'app-dr2',
    '--nic',
    '10.20.0.5/24,gw=10.20.0.1,dns=10.20.0.53',
  );
  const writesBefore = (await guestWrites(a, 'app')).length;
  const out = await b.haven(
    'dr',
    'rehearse',
    'g',
    '--heartbeat',
    'console:"event":"write"',
    '--timeout',
    '90s',
    '--json',
  );
  const job = JSON.parse(out) as RehearseJob;
  sampling = false;
  await sampler;
  assert.equal(job.state, 'succeeded', job.error);
  const r = job.result;
  assert.equal(r.passed, true);
  assert.deepEqual(
    r.vms.map((v) => [v.name, v.of, v.passed]),
    [['app-rehearsal', 'app', true]],
  );
  t.diagnostic(
    `rehearsal: ${r.vms[0]!.detail}; RPO at A during it: max ${Math.max(...rpo).toFixed(2)} s over ${rpo.length} samples`,
  );
  const vm = (await b.api<VmView[]>('GET', '/vms')).find((v) => v.name === 'app-rehearsal')!;
  assert.equal(vm.state, 'running');
  assert.deepEqual(
    vm.disks.map((d) => d.volume),
    ['app-a-rehearsal', 'app-b-rehearsal'],
  );
  const net = (await b.api<NetworkView[]>('GET', '/networks')).find((n) => n.name === r.network)!;
  assert.equal(net.kind, 'isolated');
  assert.deepEqual(
    vm.nics.map((n) => n.network),
    [net.name],
  );
  // The rehearsal VM booted with its NoCloud seed: a "cidata" ISO naming its NIC by its MAC.
  assert.ok(vm.seed, 'the rehearsal VM has a seed');
  assert.match(vm.nics[0]!.mac ?? '', /^52:54:00(:[0-9a-f]{2}){3}$/);
  assert.match((await run('isoinfo', ['-d', '-i', vm.seed])).stdout, /Volume id: cidata/);
  const iso = async (f: string) =>
    JSON.parse((await run('isoinfo', ['-R', '-i', vm.seed!, '-x', `/${f}`])).stdout) as Record<
      string,
      unknown
    >;
  assert.equal((await iso('meta-data'))['local-hostname'], 'app-dr2');
  assert.deepEqual(await iso('network-config'), {
    version: 2,
    ethernets: {
      nic0: {
        match: { macaddress: vm.nics[0]!.mac },
        addresses: ['10.20.0.5/24'],
        routes: [{ to: '0.0.0.0/0', via: '10.20.0.1' }],
        nameservers: { addresses: ['10.20.0.53'] },
      },
    },
  });
  assert.ok(rpo.length >= 3 && Math.max(...rpo) <= RPO, `RPO during the rehearsal: ${rpo.join(', ')}`);
  assert.ok((await guestWrites(a, 'app')).length > writesBefore, 'production went on writing');
  assert.equal((await a.api<VmView[]>('GET', '/vms')).find((v) => v.name === 'app')?.state, 'running');
  // A takeover waits for the cleanup (one copy of the group at a time at this site).
  assert.match(
    await b.havenFails('dr', 'takeover', 'g', '--force'),
    /rehearsal running since .*haven dr cleanup g/,
  );

  // The rehearsal's report is kept at B: RPO and RTO achieved against the objective, and steps.
  const report = await eventually(
    'the rehearsal report at B',
    () => b.api<Report[]>('GET', '/dr/reports?kind=rehearse'),
    (rs) => rs.some((x) => x.id === job.id),
  ).then(() => b.haven('dr', 'report', job.id, '--json').then((o) => JSON.parse(o) as Report));
  assert.equal(report.outcome, 'succeeded');
  assert.deepEqual(report.groups, ['g']);
  assert.equal(report.checkpoints[0]?.seq, r.checkpoint.seq);
  assert.equal(report.objective?.name, 'gold');
  assert.equal(report.objective?.rpoMet, true);
  assert.equal(report.objective?.rtoMet, true);
  assert.ok(report.steps.length >= 3 && report.steps.every((x) => !!x.time && !!x.level));
  const text = await b.haven('dr', 'report', job.id);
  assert.match(text, /Rehearsal of g at site site-b: SUCCEEDED/);
  assert.match(text, /RPO achieved: .* — objective 5 s: met/);
  assert.match(text, /app-rehearsal \(group g\).*heartbeat passed/);
  const html = await b.haven('dr', 'report', job.id, '--html');
  assert.match(html, /^<!doctype html>[\s\S]*<title>Rehearsal of g at site site-b<\/title>/);
  assert.match(html, /app-rehearsal.*passed/s);
  assert.match(
    await b.havenFails('dr', 'report', job.id, '--html', '--json'),
    /one of --json, --text and --html/,
  );
  t.diagnostic(`rehearsal report: RPO ${report.rpoSeconds} s, RTO ${report.rtoSeconds} s`);
  assert.match(await b.havenFails('dr', 'report', 'nosuch'), /no DR report nosuch/);
  // A asks B for its reports: the group meets its objective now; the alert resolves.
  const met = await a.api<Objective>('GET', '/objectives/gold');
  assert.equal(met.compliance[0]?.compliant, true, JSON.stringify(met.compliance));
  const changes = await a.api<{ outcome: string }[]>(
    'GET',
    '/events?action=objective.compliance&target=group:g',
  );
  assert.deepEqual(
    changes.map((e) => e.outcome),
    ['ok', 'warning'],
  );
  await eventually(
    'the objective alert resolved at A',
    () => a.api<{ object: string }[]>('GET', '/alerts?state=open&rule=objective.noncompliant'),
    (al) => !al.some((x) => x.object === 'group:g'),
  );

  const cleaned = JSON.parse(await b.haven('dr', 'cleanup', 'g', '--json')) as { removed: string[] };
  assert.deepEqual(cleaned.removed.sort(), [
    'VM app-rehearsal',
    `network ${r.network}`,
    'volume app-a-rehearsal',
    'volume app-b-rehearsal',
  ]);
  assert.deepEqual(await inventory(b), before);
  assert.equal(existsSync(vm.seed!), false, "the seed went with the rehearsal VM's run directory");
  // Replication went on, and goes on.
  const seq = (await replicationGroup(a, 'g')).source?.appliedCheckpoint?.seq ?? 0;
  await eventually(
    'a checkpoint after the cleanup',
    () => replicationGroup(a, 'g'),
    (g) => g.source?.state === 'replicating' && (g.source.appliedCheckpoint?.seq ?? 0) > seq + 1,
  );
  // Stored network maps (per paired site): bad input first, nothing stored.
  await b.haven('network', 'create', 'lab', '--kind', 'isolated');
  await b.haven('network', 'create', 'prod-b', '--kind', 'nat');
  assert.match(await b.havenFails('network', 'map', 'add', 'site-x', 'prod', 'prod-b'), /site-x/);
  assert.match(await b.havenFails('network', 'map', 'add', 'site-a', 'prod', 'nosuch'), /network nosuch/);
  assert.match(
    await b.havenFails('network', 'map', 'add', 'site-a', 'prod', 'prod-b', '--rehearsal', 'prod-b'),
    /prod-b is a nat network: a rehearsal network must be isolated/,
  );
  assert.deepEqual(await b.api('GET', '/network-maps'), []);
  await b.haven('network', 'map', 'add', 'site-a', 'prod', 'prod-b', '--rehearsal', 'lab');
  const maps = JSON.parse(await b.haven('network', 'map', 'list', '--json')) as unknown[];
  assert.deepEqual(
    maps.map((m) => {
      const { updatedAt, ...rest } = m as { updatedAt: string };
      assert.ok(Date.parse(updatedAt) > 0);
      return rest;
    }),
    [{ peer: 'site-a', source: 'prod', recovery: 'prod-b', rehearsal: 'lab' }],
  );
  // A rehearsal puts the NIC on the stored isolated network and makes none; cleanup keeps it.
  const mapped = JSON.parse(
    await b.haven(
      'dr',
      'rehearse',
      'g',
      '--heartbeat',
      'console:"event":"write"',
      '--timeout',
      '90s',
      '--json',
    ),
  ) as RehearseJob & { result: { networkMap?: Record<string, string> } };
  assert.equal(mapped.state, 'succeeded', mapped.error);
  assert.equal(mapped.result.network, undefined);
  assert.deepEqual(mapped.result.networkMap, { prod: 'lab' });
  const onLab = (await b.api<VmView[]>('GET', '/vms')).find((v) => v.name === 'app-rehearsal')!;
  assert.deepEqual(
    onLab.nics.map((n) => n.network),
    ['lab'],
  );
  const again = JSON.parse(await b.haven('dr', 'cleanup', 'g', '--json')) as { removed: string[] };
  assert.deepEqual(again.removed.sort(), [
    'VM app-rehearsal',
    'volume app-a-rehearsal',
    'volume app-b-rehearsal',
  ]);
  assert.ok((await names(b, '/networks')).includes('lab'));
  // A takeover joins the stored recovery network.
  const to = JSON.parse(await b.haven('dr', 'takeover', 'g', '--force', '--no-start', '--json')) as {
    state: string;
    error?: string;
  };
  assert.equal(to.state, 'succeeded', to.error);
  const taken = (await b.api<VmView[]>('GET', '/vms')).find((v) => v.name === 'app')!;
  assert.deepEqual(
    taken.nics.map((n) => n.network),
    ['prod-b'],
  );
  await b.haven('network', 'map', 'remove', 'site-a', 'prod');
  assert.deepEqual(await b.api('GET', '/network-maps'), []);
  assert.match(
    await b.havenFails('network', 'map', 'remove', 'site-a', 'prod'),
    /no network map for network prod/,
  );
});
