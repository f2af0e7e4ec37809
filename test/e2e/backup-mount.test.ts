// `haven backup mount`: a backup's disk served over NBD straight from the repository. qemu-img
// compare finds it identical to the restored image; nbdinfo sees its holes; a read-only mount
// refuses writes; a writable mount keeps writes in a throw-away overlay; the repository's files
// are byte-for-byte unchanged either way.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, openSync, readdirSync, truncateSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { backupSource, restoreSnapshot } from '../../src/protection/index.js';
import { Repository } from '../../src/repository/index.js';
import { HAVEN_BIN, start, waitForListen } from '../support/proc.js';
import { tempDir, treeHash } from '../support/tmp.js';

const run = promisify(execFile);
const MiB = 1024 * 1024;

const mounts = () => readdirSync(tmpdir()).filter((n) => n.startsWith('haven-mount-')).length;

test('a mounted backup is identical to its restore; read-only refuses writes; writable discards them', async (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  const repo = join(dir.path, 'repo');
  await Repository.init(repo);
  const img = join(dir.path, 'disk.raw');
  const fd = openSync(img, 'w');
  const repeated = randomBytes(MiB);
  for (let m = 0; m < 40; m++)
    if (m % 3) writeSync(fd, m % 3 === 1 ? randomBytes(MiB) : repeated, 0, MiB, m * MiB);
  closeSync(fd);
  truncateSync(img, 40 * MiB + 4096 * 3); // not a multiple of the chunk size
  const snap = await backupSource({ repo, source: img });
  const restored = join(dir.path, 'restored.raw');
  await restoreSnapshot({ repo, snapshot: snap.id, to: restored });
  const repoBefore = treeHash(repo);

  const sock = join(dir.path, 'ro.sock');
  const ro = start(HAVEN_BIN, ['backup', 'mount', snap.id, '--repo', repo, '--socket', sock]);
  t.after(() => ro.stop());
  await waitForListen({ path: sock });
  const uri = `nbd+unix:///${snap.id}?socket=${sock}`;
  const cmp = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', restored, uri]);
  assert.match(cmp.stdout, /Images are identical/);
  await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', img, uri]);
  const map = await run('nbdinfo', ['--map', uri]);
  assert.match(map.stdout, /hole,zero/, 'the zero chunks are reported as holes');
  assert.match(map.stdout, /data/);
  // The mount's only export is its default one too (nbd+unix:///, as qemu-img and nbdcopy spell it).
  assert.equal((await run('nbdinfo', ['--map', `nbd+unix:///?socket=${sock}`])).stdout, map.stdout);
  await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', restored, `nbd+unix:///?socket=${sock}`]);
  await assert.rejects(
    run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5a 1M 64k', uri]),
    (e: { stdout: string; stderr: string }) =>
      /read.only|Permission|not permitted/i.test(e.stdout + e.stderr),
  );
  await ro.stop();

  const before = mounts();
  const wsock = join(dir.path, 'rw.sock');
  const rw = start(HAVEN_BIN, ['backup', 'mount', snap.id, '--repo', repo, '--socket', wsock, '--writable']);
  t.after(() => rw.stop());
  await waitForListen({ path: wsock });
  const wuri = `nbd+unix:///${snap.id}?socket=${wsock}`;
  assert.equal(mounts(), before + 1, 'the overlay lives in a temporary directory');
  await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5a 1M 64k', wuri]);
  await run('qemu-io', ['-f', 'raw', '-c', 'read -P 0x5a 1M 64k', wuri]);
  // Beyond the write, the backup still reads through.
  await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', restored, wuri]).then(
    () => assert.fail('the written mount differs from the backup'),
    (e: { stdout: string }) => assert.match(e.stdout, /Content mismatch at offset 1048576/),
  );
  await rw.stop();
  assert.equal(mounts(), before, 'stopping the mount removed its overlay');
  assert.equal(treeHash(repo), repoBefore, 'the repository is byte-for-byte unchanged');
});
