// The QEMU driver with the test guest: a VM boots, its agent's lines reach the console log, its
// writes land; it is stopped, found again by a new driver after a "daemon restart", and a VM
// killed from outside is reported as crashed.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { QemuVm, type VmSpec } from '../../src/compute/index.js';
import { HavenError } from '../../src/common/index.js';
import { tempDir } from '../support/tmp.js';
import { ensureGuest, patternBytes } from '../support/guest.js';

const MiB = 1024 * 1024;

function spec(id: string, disk: string, commands: string): VmSpec {
  const paths = ensureGuest();
  return {
    id,
    name: id,
    cpus: 1,
    memoryMiB: 192,
    disks: [{ source: disk }],
    nics: [],
    boot: {
      kind: 'kernel',
      kernel: paths.kernel,
      initrd: paths.initrd,
      cmdline: `console=ttyS0 quiet panic=-1 haven.disks=1 haven.cmd="${commands}"`,
    },
  };
}

async function waitForConsole(vm: QemuVm, re: RegExp, ms = 30_000): Promise<string> {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    const log = vm.consoleLog();
    if (re.test(log)) return log;
    await sleep(100);
  }
  throw new Error(`console never matched ${re}:\n${vm.consoleLog()}`);
}

test('a VM boots, writes, powers itself off cleanly', async (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  const disk = join(dir.path, 'd.img');
  writeFileSync(disk, '');
  truncateSync(disk, 16 * MiB);
  const started = Date.now();
  const vm = await QemuVm.start(
    spec('vm-a', disk, 'write-pattern disk=vda seed=5 count=4 len=4096 step=1M; poweroff'),
    join(dir.path, 'run-a'),
  );
  t.after(() => vm.kill().catch(() => undefined));
  const exit = new Promise((r) => vm.once('exit', r));
  await waitForConsole(vm, /HAVEN-GUEST \{"event":"ready"/);
  t.diagnostic(`start to first guest line: ${Date.now() - started} ms`);
  assert.deepEqual(await exit, { clean: true, crashed: false, reason: 'shut down' });
  const file = readFileSync(disk);
  const writes = vm
    .consoleLog()
    .split('\n')
    .filter((l) => l.includes('"event":"write"'))
    .map((l) => JSON.parse(l.slice(l.indexOf('{'))) as { seq: number; offset: number; length: number });
  assert.equal(writes.length, 4);
  for (const w of writes)
    assert.ok(
      file.subarray(w.offset, w.offset + w.length).equals(patternBytes(5, w.seq, w.offset, w.length)),
    );
});

test('a new driver attaches to a running VM and stops it; a VM killed from outside is a crash', async (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  const disk = join(dir.path, 'd.img');
  writeFileSync(disk, '');
  truncateSync(disk, 16 * MiB);
  const run = join(dir.path, 'run-b');
  const first = await QemuVm.start(spec('vm-b', disk, 'ping'), run);
  t.after(() => first.kill().catch(() => undefined));
  await waitForConsole(first, /"event":"done"/);
  first.detach(); // the daemon goes away; the VM goes on

  const again = await QemuVm.attach(run, 'vm-b');
  assert.equal(again.pid, first.pid);
  assert.equal(await again.state(), 'running');
  // The test guest ignores ACPI power buttons: after the grace time the driver quits QEMU.
  assert.deepEqual(await again.stop(1500), { clean: true, crashed: false, reason: 'stopped by Haven' });
  await assert.rejects(QemuVm.attach(run, 'vm-b'), (e: HavenError) => e.code === 'NOT_FOUND');

  const victim = await QemuVm.start(spec('vm-c', disk, 'ping'), join(dir.path, 'run-c'));
  t.after(() => victim.kill().catch(() => undefined));
  const exit = new Promise((r) => victim.once('exit', r));
  process.kill(victim.pid, 'SIGKILL');
  assert.deepEqual(await exit, { clean: false, crashed: true, reason: 'QEMU exited unexpectedly' });
});
