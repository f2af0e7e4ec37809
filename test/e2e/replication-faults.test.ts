// Faults under continuous replication between two site daemons while a guest streams ordered
// writes over two disks: kill -9 of the source daemon, of the target daemon and of both, at
// random moments (HAVEN_SOAK_ROUNDS for a longer soak; 12 here): replication resumes by itself,
// no checkpoint the target had applied is lost, the replica stays a prefix of the guest's writes,
// and the guest never sees a write fail. And the link cut for 30 s by a fault proxy between the
// sites: bitmap mode, then a resync on reconnect during which the last consistent image is
// usable (cloned and checked at the target), then consistent again.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  checkExports,
  checkReplica,
  guestWrites,
  GUEST_IO_ERROR,
  streamingVm,
  type StreamingVm,
} from '../support/replica-check.js';
import {
  type CheckpointView,
  replicaCheckpoints,
  replicationGroup,
  reportedPast,
} from '../support/replica-check.js';
import { eventually, pairedSites, type TestSite } from '../support/sites.js';
import { wholeConsoleLog } from '../support/site.js';

const group = replicationGroup;
const checkpoints = replicaCheckpoints;

async function enable(a: TestSite, vm: StreamingVm, groupName: string, ...extra: string[]) {
  await a.haven(
    'replication',
    'enable',
    vm.name,
    '--group',
    groupName,
    '--to',
    'site-b',
    '--pool',
    'default',
    '--checkpoint-every',
    '1s',
    ...extra,
  );
}

const ROUNDS = Number(process.env.HAVEN_SOAK_ROUNDS ?? 12);

test(`kill -9 of the source daemon, the target daemon and both, ${ROUNDS} times at random moments: replication resumes, no applied checkpoint is lost, the replica stays consistent`, async (t) => {
  const { a, b } = await pairedSites(t);
  const vm = await streamingVm(a, 'kv', 44);
  await enable(a, vm, 'gk');
  await a.haven('vm', 'start', vm.name);
  await eventually(
    'the initial sync',
    () => group(a, 'gk'),
    (g) => !!g.source?.appliedCheckpoint,
    120_000,
  );
  const seen = new Map<number, CheckpointView>();
  const victims = ['source', 'target', 'both'] as const;
  for (let round = 0; round < ROUNDS; round++) {
    const victim = victims[round % 3]!;
    for (const cp of await checkpoints(b, 'gk')) seen.set(cp.seq, cp);
    const newest = Math.max(...seen.keys());
    // A random moment: somewhere in the next 1.5 s of the stream.
    await sleep(Math.random() * 1500);
    if (victim !== 'target') await a.kill();
    if (victim !== 'source') await b.kill();
    if (victim !== 'target') await a.restart();
    if (victim !== 'source') await b.restart();
    // By itself: back to journal mode, with a checkpoint applied after the restart.
    await eventually(
      `round ${round} (${victim}): replicating again with a new checkpoint`,
      () => group(a, 'gk'),
      (g) => g.source?.state === 'replicating' && (g.source.appliedCheckpoint?.seq ?? 0) > newest,
      120_000,
    );
    const held = new Set((await checkpoints(b, 'gk')).map((c) => c.seq));
    for (const seq of seen.keys())
      assert.ok(held.has(seq), `round ${round} (${victim}): checkpoint ${seq} was lost`);
    t.diagnostic(`round ${round}: killed ${victim}; checkpoints held ${held.size}`);
  }
  await reportedPast(a, vm.name);
  await a.haven('vm', 'stop', vm.name, '--force');
  const log = await wholeConsoleLog(a, vm.name);
  assert.doesNotMatch(log, GUEST_IO_ERROR, 'the guest never saw a write fail');
  const writes = { [vm.name]: await guestWrites(a, vm.name) };
  // Every checkpoint held is a prefix of the guest's writes, each at least as far as the one before.
  const all = await checkpoints(b, 'gk');
  let cut = 0;
  for (const cp of all) {
    if (Date.parse(cp.time) > Date.now()) continue;
    const r = await checkReplica(b, [vm], writes, cp.snapshot);
    assert.ok(r.ok, `checkpoint ${cp.seq}: ${r.ok ? '' : r.message}`);
    assert.ok(r.cuts[vm.name]!.prefix >= cut, `checkpoint ${cp.seq} holds less than the one before`);
    cut = r.cuts[vm.name]!.prefix;
  }
  t.diagnostic(
    `${all.length} checkpoints checked; the newest holds ${cut} of ${writes[vm.name]!.length} writes`,
  );
});

test('the link cut for 30 s: bitmap mode, a resync on reconnect during which the last consistent image is usable, consistent again', async (t) => {
  const { a, b, proxy } = await pairedSites(t, { proxied: true });
  // 10 writes/s of 8 KiB: 30 s of them overflow the 1 MiB journal; a 160 KiB/s link carries them.
  const vm = await streamingVm(a, 'cv', 55, { len: '8K', rate: 10 });
  // Uncompressed: the guest's pattern lines would make the slow link below fast again.
  await enable(a, vm, 'gc', '--journal', '1M', '--no-compress');
  await a.haven('vm', 'start', vm.name);
  await eventually(
    'journal mode after the initial sync',
    () => group(a, 'gc'),
    (g) => g.source?.state === 'replicating' && !!g.source.appliedCheckpoint,
    120_000,
  );
  const last = (await checkpoints(b, 'gc')).at(-1)!;
  proxy!.cut();
  const cutAt = Date.now();
  await eventually(
    'bitmap mode (the journal full)',
    () => group(a, 'gc'),
    (g) => g.source?.state === 'bitmap',
    60_000,
  );
  // A slow link once it heals, so the resync lasts long enough to look at the replica meanwhile.
  await a.haven('replication', 'limit', 'gc', '160K');
  await eventually(
    '30 s of outage',
    async () => Date.now() - cutAt,
    (ms) => ms >= 30_000,
    40_000,
  );
  const stable = (await checkpoints(b, 'gc')).at(-1)!;
  assert.ok(stable.seq >= last.seq, 'no checkpoint was lost in the outage');
  proxy!.heal();
  await eventually(
    'the resync',
    () => group(a, 'gc'),
    (g) => g.source?.state === 'resyncing',
    60_000,
  );
  // During the resync: the newest checkpoint is the consistent image; a clone of it is a prefix.
  // (Checkpoints journaled before the journal filled may have arrived since: as consistent.)
  const during = (await checkpoints(b, 'gc')).at(-1)!;
  assert.ok(during.seq >= stable.seq);
  for (const d of ['a', 'b'])
    await b.haven('volume', 'clone', `${vm.name}-${d}@${during.snapshot}`, `copy-${d}`);
  await reportedPast(a, vm.name);
  const soFar = { [vm.name]: await guestWrites(a, vm.name) };
  const copy = await checkExports(b, [vm], soFar, (volume) => `copy-${volume.slice(-1)}`);
  assert.ok(copy.ok, copy.ok ? '' : copy.message);
  // Not level yet: still resyncing, or back in bitmap mode because the guest's writes filled the
  // 1 MiB journal again behind the slow link (the resync then starts over from the bitmap).
  const stateThen = (await group(a, 'gc')).source?.state;
  assert.ok(
    stateThen === 'resyncing' || stateThen === 'bitmap',
    `the clone was checked before the replica was level again (state ${stateThen})`,
  );
  await a.haven('replication', 'limit', 'gc', '0');
  await eventually(
    'consistent again: journal mode with a new checkpoint',
    () => group(a, 'gc'),
    (g) => g.source?.state === 'replicating' && (g.source.appliedCheckpoint?.seq ?? 0) > during.seq,
    120_000,
  );
  const after = (await checkpoints(b, 'gc')).at(-1)!;
  await reportedPast(a, vm.name);
  await a.haven('vm', 'stop', vm.name, '--force');
  assert.doesNotMatch(await wholeConsoleLog(a, vm.name), GUEST_IO_ERROR, 'no guest write failed');
  const r = await checkReplica(b, [vm], { [vm.name]: await guestWrites(a, vm.name) }, after.snapshot);
  assert.ok(r.ok, r.ok ? '' : r.message);
  assert.ok(r.cuts[vm.name]!.prefix > copy.cuts[vm.name]!.prefix, 'the replica moved on after the resync');
});
