// Continuous replication of running guests between two site daemons: two test guests with two
// disks each stream ordered writes (as fast as they can) while their four disks replicate as one
// consistency group. At 20 random checkpoints the replica's four disks hold a prefix of each
// guest's writes — never a later write without an earlier one, on either disk — and a later
// checkpoint never holds less than an earlier one. Then a write burst fills a small journal
// (bitmap mode, no guest write error) and the group goes back to journal mode by itself.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { checkReplica, guestWrites, GUEST_IO_ERROR, streamingVm } from '../support/replica-check.js';
import { replicaCheckpoints, replicationGroup, reportedPast } from '../support/replica-check.js';
import { eventually, pairedSites } from '../support/sites.js';
import type { OrderedWrite } from '../support/write-order.js';
import { wholeConsoleLog } from '../support/site.js';

const group = replicationGroup;
const checkpoints = replicaCheckpoints;

function pick<T>(items: readonly T[], n: number): T[] {
  const copy = [...items];
  for (let i = copy.length - 1; i > 0; i--) {
    const j = Math.floor(Math.random() * (i + 1));
    [copy[i], copy[j]] = [copy[j]!, copy[i]!];
  }
  return copy.slice(0, n);
}

test('two guests with two disks each: at 20 random checkpoints the replica holds a prefix of every guest’s writes', async (t) => {
  const { a, b } = await pairedSites(t);
  const vms = [await streamingVm(a, 'g1', 11), await streamingVm(a, 'g2', 22)];
  await a.haven(
    'replication',
    'enable',
    'g1',
    'g2',
    '--group',
    'pair',
    '--to',
    'site-b',
    '--pool',
    'default',
    '--rpo',
    '5s',
    '--checkpoint-every',
    '1s',
  );
  for (const vm of vms) await a.haven('vm', 'start', vm.name);
  await eventually(
    'the initial sync',
    () => group(a, 'pair'),
    (g) => !!g.source?.appliedCheckpoint,
  );
  // Checkpoints taken while both guests write (the guests' slots wrap many times over them).
  const history = await eventually(
    '22 checkpoints while the guests write',
    () => checkpoints(a, 'pair'),
    (cps) => cps.filter((c) => c.name !== 'initial-sync').length >= 22,
    120_000,
  );
  for (const vm of vms) await reportedPast(a, vm.name);
  for (const vm of vms) await a.haven('vm', 'stop', vm.name, '--force');
  const writes: Record<string, OrderedWrite[]> = {};
  for (const vm of vms) {
    const log = await wholeConsoleLog(a, vm.name);
    assert.doesNotMatch(log, GUEST_IO_ERROR, `guest ${vm.name} saw no I/O error`);
    writes[vm.name] = await guestWrites(a, vm.name);
    assert.ok(writes[vm.name]!.length > 100, `guest ${vm.name} wrote ${writes[vm.name]!.length} times`);
  }
  const chosen = pick(
    history.filter((c) => c.name !== 'initial-sync'),
    20,
  ).sort((x, y) => x.seq - y.seq);
  let previous: Record<string, number> = {};
  const cutsSeen: string[] = [];
  for (const cp of chosen) {
    const r = await checkReplica(b, vms, writes, cp.snapshot);
    assert.ok(r.ok, `checkpoint ${cp.seq}: ${r.ok ? '' : r.message}`);
    for (const vm of vms) {
      const cut = r.cuts[vm.name]!.prefix;
      assert.ok(
        cut >= (previous[vm.name] ?? 0),
        `checkpoint ${cp.seq} holds less of ${vm.name} than an earlier one`,
      );
      previous = { ...previous, [vm.name]: cut };
    }
    cutsSeen.push(`${cp.seq}:${vms.map((vm) => r.cuts[vm.name]!.prefix).join('/')}`);
  }
  t.diagnostic(`cuts (checkpoint: writes of g1/g2): ${cutsSeen.join(' ')}`);
  // The guests wrote between the chosen checkpoints: the cuts are not all the same.
  assert.ok(
    new Set(cutsSeen.map((c) => c.split(':')[1])).size > 5,
    'the checkpoints cut the streams at different places',
  );
});

test('a write burst fills the journal: bitmap mode without a guest write error, then journal mode again', async (t) => {
  const { a, b } = await pairedSites(t);
  const vm = await streamingVm(a, 'burst', 33, { len: '64K', slots: 32, rate: 5 });
  // A 1 MiB journal behind a 32 KiB/s link: the guest's 5 writes/s of 64 KiB fill it in seconds (not
  // compressed: the guest's pattern lines would shrink to almost nothing).
  await a.haven(
    'replication',
    'enable',
    'burst',
    '--group',
    'gb',
    '--to',
    'site-b',
    '--pool',
    'default',
    '--journal',
    '1M',
    '--no-compress',
    '--checkpoint-every',
    '1s',
  );
  await eventually(
    'the initial sync',
    () => group(a, 'gb'),
    (g) => !!g.source?.appliedCheckpoint,
  );
  await a.haven('replication', 'limit', 'gb', '32K');
  await a.haven('vm', 'start', vm.name);
  await eventually(
    'bitmap mode',
    () => group(a, 'gb'),
    (g) => g.source?.state === 'bitmap',
    120_000,
  );
  const events = await a.api<{ action: string; message: string }[]>('GET', '/events?target=gb');
  assert.ok(
    events.some((e) => e.action === 'replication.state' && /replicating → bitmap/.test(e.message)),
    `an event says the group went to bitmap mode: ${JSON.stringify(events.map((e) => e.message))}`,
  );
  // The link runs free again: the journal drains, the marked extents are resent, journal mode.
  const before = (await checkpoints(a, 'gb')).at(-1)!.seq;
  await a.haven('replication', 'limit', 'gb', '0');
  await eventually(
    'journal mode and a new checkpoint',
    () => group(a, 'gb'),
    (g) => g.source?.state === 'replicating' && (g.source.appliedCheckpoint?.seq ?? 0) > before,
    120_000,
  );
  const cp = (await checkpoints(b, 'gb')).at(-1)!;
  await reportedPast(a, vm.name);
  await a.haven('vm', 'stop', vm.name, '--force');
  const log = await wholeConsoleLog(a, vm.name);
  assert.doesNotMatch(log, GUEST_IO_ERROR, 'the guest saw no I/O error');
  const r = await checkReplica(b, [vm], { [vm.name]: await guestWrites(a, vm.name) }, cp.snapshot);
  assert.ok(r.ok, r.ok ? '' : r.message);
});
