// The site daemon driven through the `haven` CLI, as an operator would: import an image, create a
// VM on it, start it, read its console, stop it, delete it, and find the guest's writes on the
// volume. Then kill -9 the daemon while a VM runs and a job is under way: the restarted daemon
// finds the VM again (its disk reconnects, new writes land) and no job stays "running".
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, truncateSync, writeFileSync } from 'node:fs';
import { createConnection } from 'node:net';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { assertWrites, guestArgs, site, startDaemon, waitForConsole, writesIn } from '../support/site.js';

const MiB = 1024 * 1024;

test('CLI: import, create, start, console log, stop, delete; the guest writes are on the volume', async (t) => {
  const s = await site(t);
  const image = join(s.dir, '..', 'disk.img');
  writeFileSync(image, Buffer.alloc(0));
  truncateSync(image, 32 * MiB);
  writeFileSync(image, 'an image with something at the start', { flag: 'r+' });

  const imported = await s.haven('volume', 'import', image, '--name', 'boot');
  assert.match(imported, /imported .* into volume boot/);
  assert.match(await s.haven('volume', 'list'), /^boot\s+default\s+32\.0 MiB/m);
  const created = await s.haven(
    'vm',
    'create',
    'web1',
    '--disk',
    'boot',
    ...guestArgs('write-pattern disk=vda seed=11 count=5 len=8K step=2M start=1M; ping'),
  );
  assert.match(created, /created VM web1/);
  assert.match(await s.haven('vm', 'list'), /^web1\s+defined/m);
  assert.match(await s.haven('vm', 'start', 'web1'), /VM web1 is running/);
  const list = JSON.parse(await s.haven('vm', 'list', '--json')) as {
    name: string;
    state: string;
    pid: number;
  }[];
  assert.equal(list[0]!.state, 'running');
  assert.ok(list[0]!.pid > 0);
  assert.match(await s.haven('host', 'list'), /tcg|kvm/);

  const log = await waitForConsole(s, 'web1', /"cmd":"ping"/);
  assert.match(log, /HAVEN-GUEST \{"event":"ready"/);
  const writes = writesIn(log);
  assert.equal(writes.length, 5);

  assert.match(await s.havenFails('vm', 'start', 'web1'), /conflict: VM web1 is already running/);
  assert.match(
    await s.havenFails('volume', 'delete', 'boot'),
    /conflict: volume boot is a disk of VM\(s\) web1/,
  );
  assert.match(await s.havenFails('vm', 'delete', 'web1'), /stop it before deleting it/);

  // The test guest ignores the ACPI power button: the grace time ends in a clean quit.
  assert.match(await s.haven('vm', 'stop', 'web1', '--grace', '2'), /VM web1 stopped: stopped by Haven/);
  assert.match(await s.haven('vm', 'show', 'web1'), /state:\s+stopped/);
  const jobs = JSON.parse(await s.haven('job', 'list', '--json')) as { kind: string; state: string }[];
  assert.deepEqual(jobs.map((j) => `${j.kind}:${j.state}`).sort(), [
    'vm.start:succeeded',
    'vm.stop:succeeded',
    'volume.import:succeeded',
  ]);
  assert.match(await s.haven('vm', 'delete', 'web1'), /deleted VM web1/);
  assert.match(await s.havenFails('vm', 'show', 'web1'), /not found: no VM web1/);

  const out = join(s.dir, '..', 'after.img');
  await s.haven('volume', 'export', 'boot', out);
  const disk = readFileSync(out);
  assert.equal(disk.subarray(0, 36).toString(), 'an image with something at the start');
  assertWrites(disk, 11, writes);

  const events = await s.haven('event', 'list', '--limit', '100');
  for (const a of ['volume.import', 'vm.create', 'vm.start', 'vm.stop', 'vm.delete', 'vm.exit'])
    assert.match(events, new RegExp(a));
  // The token never reaches the log.
  const token = readFileSync(join(s.dir, 'api-token'), 'utf8').trim();
  assert.ok(!s.daemon.output().includes(token), 'the API token is not in the daemon log');
});

test('kill -9 of the daemon: the VM keeps running and is found again, its disk reconnects, no job stays running', async (t) => {
  const s = await site(t);
  await s.haven('volume', 'create', 'data', '--size', '32M');
  await s.haven(
    'vm',
    'create',
    'db1',
    '--disk',
    'data',
    ...guestArgs('write-pattern disk=vda seed=21 count=3 len=4K step=1M; ping'),
  );
  await s.haven('vm', 'start', 'db1');
  const before = await waitForConsole(s, 'db1', /"cmd":"ping"/);
  const vm = (JSON.parse(await s.haven('vm', 'list', '--json')) as { id: string; pid: number }[])[0]!;

  // A job under way when the daemon dies: a graceful stop the guest ignores, with a long grace.
  const job = JSON.parse(await s.haven('vm', 'stop', 'db1', '--grace', '120', '--no-wait', '--json')) as {
    id: string;
  };
  await sleep(300);
  s.daemon.child.kill('SIGKILL');
  await s.daemon.exited;
  process.kill(vm.pid, 0); // QEMU is still there

  s.daemon = await startDaemon(s.dir);
  const after = JSON.parse(await s.haven('vm', 'list', '--json')) as {
    state: string;
    pid: number;
    stateReason: string;
  }[];
  assert.equal(after[0]!.state, 'running');
  assert.equal(after[0]!.pid, vm.pid);
  assert.match(after[0]!.stateReason, /reattached/);
  const j = JSON.parse(await s.haven('job', 'show', job.id, '--json')) as { state: string; error: string };
  assert.equal(j.state, 'failed');
  assert.match(j.error, /daemon stopped while this job ran/);
  assert.equal(
    (JSON.parse(await s.haven('job', 'list', '--state', 'running', '--json')) as unknown[]).length,
    0,
  );
  assert.match(await s.haven('event', 'list', '--action', 'vm.reattach'), /still running .*reattached/);

  // The guest's disk reconnected to the new daemon: new writes land on the volume.
  const console = createConnection(join(s.dir, 'vms', vm.id, 'console.sock'));
  await new Promise((r) => console.once('connect', r));
  console.write('write-pattern disk=vda seed=22 count=3 len=4K step=1M start=8M\n');
  const log = await waitForConsole(
    s,
    'db1',
    /"cmd":"write-pattern","writes":3,"nextSeq":3\}[\s\S]*"cmd":"write-pattern","writes":3/,
  );
  console.destroy();
  await s.haven('vm', 'stop', 'db1', '--force');

  const out = join(s.dir, '..', 'after.img');
  await s.haven('volume', 'export', 'data', out);
  const disk = readFileSync(out);
  const all = writesIn(log);
  assertWrites(disk, 21, writesIn(before));
  assertWrites(
    disk,
    22,
    all.filter((w) => w.offset >= 8 * MiB),
  );
  assert.equal(all.filter((w) => w.offset >= 8 * MiB).length, 3);

  // A VM killed while no daemon watches is reported as crashed, not as running.
  await s.haven('vm', 'start', 'db1');
  const again = (JSON.parse(await s.haven('vm', 'list', '--json')) as { pid: number }[])[0]!;
  await s.daemon.stop();
  process.kill(again.pid, 'SIGKILL');
  await sleep(300);
  s.daemon = await startDaemon(s.dir);
  const lost = (
    JSON.parse(await s.haven('vm', 'list', '--json')) as { state: string; stateReason: string }[]
  )[0]!;
  assert.equal(lost.state, 'crashed');
  assert.match(lost.stateReason, /found not running when the site daemon started/);

  // And one that dies while the daemon watches is seen at once.
  await s.haven('vm', 'start', 'db1');
  const watched = (JSON.parse(await s.haven('vm', 'list', '--json')) as { pid: number }[])[0]!;
  process.kill(watched.pid, 'SIGKILL');
  let state = '';
  for (let i = 0; i < 100 && state !== 'crashed'; i++) {
    await sleep(100);
    state = (JSON.parse(await s.haven('vm', 'list', '--json')) as { state: string }[])[0]!.state;
  }
  assert.equal(state, 'crashed');
  assert.match(
    await s.haven('event', 'list', '--action', 'vm.exit'),
    /VM db1 crashed: QEMU exited unexpectedly/,
  );
});
