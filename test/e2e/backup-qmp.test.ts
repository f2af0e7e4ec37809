// Backup of a running QEMU VM that Haven does not manage, through its QMP socket: the first
// backup reads what is allocated; after the guest writes about 1% of its qcow2 disk, the second
// reads only the dirty extents from QEMU's own bitmap and still restores bit-identically.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, execFileSync, spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { createConnection } from 'node:net';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { HAVEN_BIN } from '../support/proc.js';
import { tempDir } from '../support/tmp.js';
import { ensureGuest } from '../support/guest.js';

const run = promisify(execFile);

async function waitFor(file: string, re: RegExp, ms = 60_000): Promise<string> {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    const text = existsSync(file) ? readFileSync(file, 'utf8') : '';
    if (re.test(text)) return text;
    await sleep(100);
  }
  throw new Error(`${file} never matched ${re}:\n${existsSync(file) ? readFileSync(file, 'utf8') : ''}`);
}

test('a foreign QEMU VM with a qcow2 disk: incremental backups through QMP read only what changed', async (t) => {
  const dir = tempDir();
  const g = ensureGuest();
  const disk = join(dir.path, 'disk.qcow2');
  execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', disk, '64M']);
  execFileSync('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x3c 0 3M', disk], { stdio: 'ignore' });
  const qmp = join(dir.path, 'qmp.sock');
  const serial = join(dir.path, 'serial.sock');
  const log = join(dir.path, 'console.log');
  const qemu = spawn(
    'qemu-system-x86_64',
    [
      ...['-machine', 'pc', '-accel', 'tcg', '-m', '192', '-nodefaults', '-display', 'none', '-no-reboot'],
      ...['-qmp', `unix:${qmp},server=on,wait=off`],
      ...[
        '-chardev',
        `socket,id=ser0,path=${serial},server=on,wait=off,logfile=${log}`,
        '-serial',
        'chardev:ser0',
      ],
      ...[
        '-blockdev',
        JSON.stringify({ driver: 'qcow2', 'node-name': 'drive0', file: { driver: 'file', filename: disk } }),
      ],
      ...['-device', 'virtio-blk-pci,drive=drive0,id=vblk0'],
      ...[
        '-kernel',
        g.kernel,
        '-initrd',
        g.initrd,
        '-append',
        'console=ttyS0 quiet panic=-1 haven.disks=1 haven.cmd=ping',
      ],
    ],
    { stdio: 'ignore' },
  );
  t.after(() => {
    qemu.kill('SIGKILL');
    dir.cleanup();
  });
  await waitFor(log, /"cmd":"ping"/);
  const repo = join(dir.path, 'repo');
  await run(HAVEN_BIN, ['repo', 'init', '--repo', repo]);
  const backup = async () =>
    (
      JSON.parse(
        (await run(HAVEN_BIN, ['backup', `qemu:${qmp}#drive0`, '--repo', repo, '--json'])).stdout,
      ) as {
        result: { snapshot: string; parent?: string; stats: { readBytes: number } };
      }
    ).result;
  const full = await backup();
  assert.equal(full.parent, undefined);
  assert.ok(full.stats.readBytes >= 3 * 1024 * 1024);

  // About 1% of the disk, in scattered 64 KiB writes by the guest.
  const console = createConnection(serial);
  await new Promise((r) => console.once('connect', r));
  console.write('write-pattern disk=vda seed=4 count=10 len=64K step=640K start=4M\n');
  await waitFor(log, /"cmd":"write-pattern","writes":10/);
  const inc = await backup();
  assert.equal(inc.parent, full.snapshot);
  assert.equal(inc.stats.readBytes, 10 * 64 * 1024, 'only the dirty extents were read');
  // A backup with nothing written since reads nothing.
  const none = await backup();
  assert.equal(none.parent, inc.snapshot);
  assert.equal(none.stats.readBytes, 0);

  // Stop the VM cleanly and compare each restore with the disk.
  console.write('poweroff\n');
  await new Promise((r) => qemu.once('exit', r));
  console.destroy();
  const out = join(dir.path, 'inc.raw');
  await run(HAVEN_BIN, ['restore', inc.snapshot, '--repo', repo, '--to', out]);
  execFileSync('qemu-img', ['compare', '-f', 'qcow2', '-F', 'raw', disk, out]);
  const first = join(dir.path, 'full.raw');
  await run(HAVEN_BIN, ['restore', full.snapshot, '--repo', repo, '--to', first]);
  const a = readFileSync(first);
  assert.ok(a.subarray(0, 3 * 1024 * 1024).equals(Buffer.alloc(3 * 1024 * 1024, 0x3c)));
  assert.ok(
    a.subarray(4 * 1024 * 1024).equals(Buffer.alloc(60 * 1024 * 1024)),
    'the full backup precedes the writes',
  );
  // The fleecing images and QEMU's NBD server are gone: nothing of the backups is left in the VM.
  assert.deepEqual(
    JSON.parse(execFileSync('qemu-img', ['info', '--output=json', '-U', disk]).toString())['format-specific']
      .data.bitmaps?.length ?? 1,
    1,
  );
});
