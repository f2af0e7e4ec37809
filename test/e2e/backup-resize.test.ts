// Backups of a volume through the site daemon and the CLI after `volume resize`: the next backup
// succeeds by itself (an incremental aware of the new size: the unchanged old chunks from the
// parent, the rest read) and restores identical to the volume (qemu-img compare); `--full`
// reads everything; two backups of one volume started together both succeed, one after the other.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { site } from '../support/site.js';
import { tempDir } from '../support/tmp.js';

const run = promisify(execFile);
const MiB = 1024 * 1024;

interface BackupJob {
  state: string;
  result: { snapshot: string; parent?: string; stats: { readBytes: number } };
}

test('a resized volume backs up by itself and restores identical; --full; two backups at once', async (t) => {
  const s = await site(t);
  const tmp = tempDir('haven-resize-');
  t.after(tmp.cleanup);
  const repo = join(tmp.path, 'repo');
  await s.haven('repo', 'init', '--repo', repo, '--chunk-size', '64K');
  await s.haven('volume', 'create', 'v', '--size', '8100K'); // not a whole number of chunks
  const uri = `nbd+unix:///v?socket=${join(s.dir, 'run', 'nbd.sock')}`;
  const io = (...cmds: string[]) => run('qemu-io', ['-f', 'raw', ...cmds.flatMap((c) => ['-c', c]), uri]);
  const backup = async (...extra: string[]) =>
    JSON.parse(await s.haven('backup', 'volume:v', '--repo', repo, '--json', ...extra)) as BackupJob;
  /** The volume now against a snapshot restored to a file, by an independent tool. */
  const restoresIdentical = async (snapshot: string) => {
    const out = join(tmp.path, `${snapshot}.raw`);
    await s.haven('restore', snapshot, '--repo', repo, '--to', out);
    const now = join(tmp.path, `${snapshot}.now.raw`);
    await run('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', uri, now]);
    await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', now, out]);
  };

  await io('write -P 0x11 0 1M', 'write -P 0x12 5M 100K');
  const first = await backup();
  assert.equal(first.result.parent, undefined);
  await io('write -P 0x21 2M 64K');
  const second = await backup();
  assert.equal(second.result.parent, first.result.snapshot);

  // Grow it (to a size that is not a whole number of chunks either), write old and new space.
  await s.haven('volume', 'resize', 'v', '--size', '20500K');
  await io('write -P 0x31 3M 64K', 'write -P 0x32 8000K 64K', 'write -P 0x33 20M 16K');
  const third = await backup();
  assert.equal(third.state, 'succeeded');
  assert.equal(third.result.parent, second.result.snapshot, 'an incremental aware of the new size');
  assert.ok(
    third.result.stats.readBytes <= 5 * 64 * 1024,
    `read ${third.result.stats.readBytes} bytes: the chunks changed, the old partial last one, the new data`,
  );
  t.diagnostic(`after the resize: read ${third.result.stats.readBytes} bytes`);
  await restoresIdentical(third.result.snapshot);
  await io('write -P 0x41 4M 64K');
  const fourth = await backup();
  assert.equal(fourth.result.parent, third.result.snapshot);
  await restoresIdentical(fourth.result.snapshot);

  // --full reads everything allocated, even with a parent to build on.
  const full = await backup('--full');
  assert.equal(full.result.parent, undefined);
  assert.ok(full.result.stats.readBytes >= MiB + 6 * 64 * 1024, `--full read ${full.result.stats.readBytes}`);
  t.diagnostic(`--full: read ${full.result.stats.readBytes} bytes`);
  await restoresIdentical(full.result.snapshot);

  // Two backups of the volume at once: the second waits for the first, then builds on it.
  await io('write -P 0x51 6M 64K');
  const [a, b] = await Promise.all([backup(), backup()]);
  assert.equal(a.state, 'succeeded');
  assert.equal(b.state, 'succeeded');
  const earlier = a.result.parent === full.result.snapshot ? a : b;
  const later = earlier === a ? b : a;
  assert.equal(earlier.result.parent, full.result.snapshot);
  assert.equal(later.result.parent, earlier.result.snapshot);
  await restoresIdentical(later.result.snapshot);
  // No checkpoint snapshot is left behind but the newest backup's.
  const snaps = JSON.parse(await s.haven('snapshot', 'list', 'v', '--json')) as { name: string }[];
  assert.equal(snaps.length, 1);
});
