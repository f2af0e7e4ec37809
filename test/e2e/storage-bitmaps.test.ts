// Changed-block tracking on volumes: dirty bitmaps read over NBD by the real tools, epochs ended
// at snapshots, and bitmaps not trusted after the storage service was killed. On both kinds of
// Haven's own pools: a file pool, and an RBD pool on the single-node Ceph of scripts/ceph.
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { withStorage } from '../../src/storage/index.js';
import { startCeph, type Ceph } from '../support/ceph.js';
import { HAVEN_BIN, run, start, waitForListen } from '../support/proc.js';
import { tempDir } from '../support/tmp.js';

const KiB = 1024;
const MiB = 1024 * KiB;

/** nbdinfo --map output as [offset, length, flags] rows. */
async function map(context: string, uri: string): Promise<number[][]> {
  const { stdout } = await run('nbdinfo', [`--map=${context}`, uri]);
  return stdout
    .trim()
    .split('\n')
    .map((l) => l.trim().split(/\s+/).slice(0, 3).map(Number));
}

let ceph: Promise<Ceph> | undefined;
after(async () => {
  await (await ceph)?.stop();
});

for (const kind of ['file', 'rbd'] as const)
  test(`bitmaps over NBD list exactly the written extents; a checkpoint freezes them on the snapshot (${kind} pool)`, async (t) => {
    const dir = tempDir();
    t.after(dir.cleanup);
    const data = join(dir.path, 'site');
    const sock = join(dir.path, 'nbd.sock');
    const c = kind === 'rbd' ? await (ceph ??= startCeph()) : undefined;
    await withStorage(data, async (s) => {
      if (c) await s.createRbdPool('p', { conf: c.conf, cephPool: c.pool, prefix: 'bitmaps-' });
      else s.createPool('p', {});
      s.createVolume('v', 64 * MiB, 'p');
      s.addBitmap('v', 'b0', 64 * KiB);
    });
    const serve = async () => {
      const srv = start(process.execPath, [HAVEN_BIN, 'storage', 'serve', '--data', data, '--socket', sock]);
      await waitForListen({ path: sock }, 15000, srv);
      return srv;
    };
    let srv = await serve();
    t.after(() => srv.stop(0));
    const uri = (name: string) => `nbd+unix:///${name}?socket=${sock}`;
    // Unaligned writes: the bitmap marks whole 64 KiB granules.
    await run('qemu-io', [
      '-f',
      'raw',
      '-c',
      `write -P 1 ${MiB + 100} 100k`,
      '-c',
      `write -z ${10 * MiB} 4k`,
      uri('v'),
    ]);
    assert.deepEqual(await map('qemu:dirty-bitmap:b0', uri('v')), [
      [0, MiB, 0],
      [MiB, 128 * KiB, 1],
      [MiB + 128 * KiB, 9 * MiB - 128 * KiB, 0],
      [10 * MiB, 64 * KiB, 1],
      [10 * MiB + 64 * KiB, 54 * MiB - 64 * KiB, 0],
    ]);
    await srv.stop();

    // End the epoch at a snapshot; later writes go to the fresh bitmap only.
    await withStorage(data, (s) => s.checkpoint('v', 's1', 'b0'));
    srv = await serve();
    await run('qemu-io', ['-f', 'raw', '-c', `write -P 2 ${32 * MiB} 64k`, uri('v')]);
    assert.deepEqual(await map('qemu:dirty-bitmap:b0', uri('v')), [
      [0, 32 * MiB, 0],
      [32 * MiB, 64 * KiB, 1],
      [32 * MiB + 64 * KiB, 32 * MiB - 64 * KiB, 0],
    ]);
    const frozen = await map('qemu:dirty-bitmap:b0', uri('v@s1'));
    assert.deepEqual(
      frozen.filter((r) => r[2] === 1),
      [
        [MiB, 128 * KiB, 1],
        [10 * MiB, 64 * KiB, 1],
      ],
    );

    assert.match((await run('nbdinfo', [uri('v')])).stdout, /qemu:dirty-bitmap:b0/);
    // kill -9 while the bitmap is in use: afterwards it is marked inconsistent and not offered.
    await run('qemu-io', ['-f', 'raw', '-c', `write -P 3 ${40 * MiB} 64k`, uri('v')]);
    srv.child.kill('SIGKILL');
    await srv.stop(0);
    const after = await withStorage(data, (s) => s.listBitmaps('v'));
    assert.ok(after.length >= 1 && after.every((b) => b.inconsistent), JSON.stringify(after));
    srv = await serve();
    assert.doesNotMatch((await run('nbdinfo', [uri('v')])).stdout, /qemu:dirty-bitmap:b0/);
    await srv.stop();
    // Clearing makes it trusted again.
    await withStorage(data, (s) => s.clearBitmap('v', 'b0'));
    assert.equal(
      (await withStorage(data, (s) => s.listBitmaps('v'))).find((b) => b.name === 'b0')?.inconsistent,
      false,
    );
    await withStorage(data, (s) => {
      s.deleteSnapshot('v', 's1');
      s.deleteVolume('v');
    });
  });
