// A pool on a small filesystem of its own (a loop-mounted ext4): a volume fills it until writes
// fail with ENOSPC; a whole-volume TRIM and a FLUSH over NBD give the space back to the
// filesystem (df), and new writes succeed — also after the daemon restarts.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdirSync, statfsSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { site, startDaemon } from '../support/site.js';
import { tempDir } from '../support/tmp.js';

const run = promisify(execFile);
const MiB = 1024 * 1024;
const free = (dir: string) => {
  const s = statfsSync(dir);
  return s.bavail * s.bsize;
};

/** A 64 MiB ext4 mounted on a loop device; unmounted and detached by the returned cleanup. */
async function smallFilesystem(t: { after: (fn: () => unknown) => void }): Promise<string> {
  const tmp = tempDir('haven-smallfs-');
  const img = join(tmp.path, 'fs.img');
  const mnt = join(tmp.path, 'mnt');
  mkdirSync(mnt);
  await run('truncate', ['-s', '64M', img]);
  await run('mkfs.ext4', ['-q', '-F', img]);
  const loop = (await run('losetup', ['-f', '--show', img])).stdout.trim();
  let mounted = false;
  t.after(async () => {
    if (mounted) await run('umount', [mnt]).catch(() => run('umount', ['-l', mnt]).catch(() => undefined));
    await run('losetup', ['-d', loop]).catch(() => undefined);
    tmp.cleanup();
  });
  await run('mount', [loop, mnt]);
  mounted = true;
  return mnt;
}

test('a full pool gets its space back from a whole-volume trim, also after a restart', async (t) => {
  const s = await site(t);
  const mnt = await smallFilesystem(t); // its cleanup runs after the daemon has stopped
  const pool = join(mnt, 'pool');
  await s.haven('pool', 'create', 'small', '--path', pool);
  await s.haven('volume', 'create', 'v', '--size', '128M', '--pool', 'small');
  const uri = `nbd+unix:///v?socket=${join(s.dir, 'run', 'nbd.sock')}`;
  const io = async (...cmds: string[]) => {
    const r = await run('qemu-io', [
      '-f',
      'raw',
      '-d',
      'unmap',
      ...cmds.flatMap((c) => ['-c', c]),
      uri,
    ]).catch((e: { stdout: string; stderr: string }) => e);
    return r.stdout + r.stderr;
  };
  const empty = free(mnt);

  // Fill the filesystem through the volume: the write that does not fit fails, no space left.
  const fill = await io('write -P 0xab 0 120M', 'flush');
  assert.match(fill, /No space left on device/);
  const full = free(mnt);
  assert.ok(full < 6 * MiB, `${full} bytes free after filling`);
  assert.match(await io('write -P 0xcd 120M 1M'), /No space left on device/);

  // Trim the whole volume and flush: the filesystem has its space back, the volume maps nothing.
  assert.doesNotMatch(await io('discard 0 128M', 'flush'), /failed|error/i);
  const after = free(mnt);
  t.diagnostic(`filesystem free: ${empty} empty, ${full} full, ${after} after the trim`);
  assert.ok(after > empty - 2 * MiB, `${after} bytes free after the trim (${empty} when empty)`);
  const vols = JSON.parse(await s.haven('volume', 'list', '--json')) as {
    name: string;
    allocatedBytes: number;
  }[];
  assert.equal(vols.find((v) => v.name === 'v')!.allocatedBytes, 0);
  const pools = JSON.parse(await s.haven('pool', 'list', '--json')) as {
    name: string;
    allocatedBytes: number;
  }[];
  assert.equal(pools.find((p) => p.name === 'small')!.allocatedBytes, 0);
  const w = await io('write -P 0x11 0 32M', 'flush', 'read -P 0x11 0 32M');
  assert.doesNotMatch(w, /failed|error/i);

  // After a restart: the space is still free, writes still succeed, the data is there.
  await s.daemon.stop();
  s.daemon = await startDaemon(s.dir);
  assert.ok(free(mnt) > empty - 36 * MiB);
  const again = await io('read -P 0x11 0 32M', 'write -P 0x22 64M 8M', 'flush', 'read -P 0x22 64M 8M');
  assert.doesNotMatch(again, /failed|error|Pattern verification/i);
  assert.match(await io('discard 0 128M', 'flush'), /discard 134217728\/134217728 bytes/);
  assert.ok(free(mnt) > empty - 2 * MiB);
});
