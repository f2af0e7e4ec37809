import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { tempDir } from '../../test/support/tmp.js';
import { nativeIo } from '../block/index.js';
import { Pool } from './pool.js';
import { VolumeFamily } from './family/family.js';

const MiB = 1024 * 1024;
const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');
/** Bytes the filesystem holds for a file (what punching gives back). */
const held = (path: string) => statSync(path).blocks * 512;
const io = nativeIo();
const skip = io ? false : 'needs the native I/O addon (fallocate)';

function dataFile(poolPath: string): string {
  const id = readdirSync(join(poolPath, 'families'))[0]!;
  return join(poolPath, 'families', id, 'data');
}

test(
  'trimmed space goes back to the filesystem, but never a cluster a snapshot or a clone still maps',
  { skip },
  async (t) => {
    const dir = tempDir();
    t.after(dir.cleanup);
    const path = join(dir.path, 'p');
    const pool = Pool.create(path, { name: 'p' });
    t.after(() => pool.close());
    pool.createVolume('v', 32 * MiB);
    const v = pool.openDevice('v');
    const data = randomBytes(16 * MiB);
    v.write(data, 0);
    v.flush();
    const file = dataFile(path);
    assert.ok(held(file) >= 16 * MiB);

    pool.snapshot('v', 's');
    pool.clone('v', 's', 'c');
    const c = pool.openDevice('c');
    c.write(randomBytes(4 * MiB), 0); // the clone's own copy of 4 MiB
    c.trim(8 * MiB, 8 * MiB); // unmaps in the clone what the snapshot still has
    v.trim(0, 32 * MiB);
    v.flush();
    assert.equal(pool.volume('v').allocatedBytes, 0);
    // The snapshot keeps every byte of its data; the clone what it did not overwrite or trim.
    const back = Buffer.alloc(16 * MiB);
    await pool.openDevice('v@s').read(back, 0); // a snapshot's large reads go to the thread pool
    assert.equal(sha(back), sha(data));
    c.read(back, 0);
    assert.equal(sha(back.subarray(4 * MiB, 8 * MiB)), sha(data.subarray(4 * MiB, 8 * MiB)));
    assert.ok(held(file) >= 20 * MiB, 'nothing the snapshot or the clone maps was punched');

    // With the clone and the snapshot gone, everything goes back.
    pool.deleteVolume('c');
    pool.deleteSnapshot('v', 's');
    assert.ok(held(file) < MiB, `${held(file)} bytes still held by the data file`);
    assert.equal(pool.info().allocatedBytes, 0);
    v.write(data.subarray(0, 4 * MiB), 0); // reuses the punched clusters
    v.flush();
    v.read(back.subarray(0, 4 * MiB), 0);
    assert.equal(sha(back.subarray(0, 4 * MiB)), sha(data.subarray(0, 4 * MiB)));
  },
);

test('a hole is punched only once the superblock that frees its clusters is durable', { skip }, (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  const fdir = join(dir.path, 'f');
  let checked = 0;
  const f = VolumeFamily.create(
    fdir,
    { name: 'v', size: 16 * MiB },
    {
      punchHole: (fd, offset, length) => {
        // What a crash now would leave: the family as the disk has it. It must map none of these.
        const durable = VolumeFamily.open(fdir);
        const used = (durable as unknown as { usedClusters: { has(c: number): boolean } }).usedClusters;
        for (let c = offset / 65536; c < (offset + length) / 65536; c++)
          assert.ok(!used.has(c), `cluster ${c} is punched while the durable state maps it`);
        durable.abandon();
        checked++;
        assert.equal(io!.fallocate(fd, 1, offset, length), 0);
      },
    },
  );
  const v = f.find('v')!.id;
  f.write(v, randomBytes(8 * MiB), 0);
  f.commit();
  f.zero(v, 0, 4 * MiB);
  f.write(v, randomBytes(2 * MiB), 6 * MiB); // in place: owned clusters, nothing freed
  f.commit();
  f.zero(v, 4 * MiB, 4 * MiB);
  f.close();
  assert.equal(checked, 2, 'one punch per run of freed clusters, per commit');
  assert.ok(held(join(fdir, 'data')) < MiB);
});

test(
  'free clusters a crash (or an older version) left unpunched are punched when the family opens',
  { skip },
  (t) => {
    const dir = tempDir();
    t.after(dir.cleanup);
    const fdir = join(dir.path, 'f');
    const f = VolumeFamily.create(fdir, { name: 'v', size: 16 * MiB }); // no punching: as if it crashed
    const v = f.find('v')!.id;
    const keep = randomBytes(MiB);
    f.write(v, randomBytes(8 * MiB), 0);
    f.write(v, keep, 12 * MiB);
    f.commit();
    f.zero(v, 0, 8 * MiB);
    f.close();
    assert.ok(held(join(fdir, 'data')) >= 9 * MiB);
    const g = VolumeFamily.open(fdir, {
      punchHole: (fd, o, l) => assert.equal(io!.fallocate(fd, 1, o, l), 0),
    });
    const h = held(join(fdir, 'data'));
    assert.ok(h >= MiB && h < 2 * MiB, `${h} bytes held after open`);
    const back = Buffer.alloc(MiB);
    g.read(v, back, 12 * MiB);
    assert.equal(sha(back), sha(keep));
    g.close();
  },
);

test(
  'after a kill, clusters mapped again since their punch are replayed, not punched as leaked',
  { skip },
  (t) => {
    const dir = tempDir();
    t.after(dir.cleanup);
    const fdir = join(dir.path, 'f');
    const opts = {
      punchHole: (fd: number, o: number, l: number) => assert.equal(io!.fallocate(fd, 1, o, l), 0),
    };
    const f = VolumeFamily.create(fdir, { name: 'v', size: 16 * MiB }, opts);
    const v = f.find('v')!.id;
    f.write(v, randomBytes(8 * MiB), 0);
    f.commit();
    f.zero(v, 0, 8 * MiB);
    f.commit(); // freed and punched
    const data = randomBytes(6 * MiB);
    f.write(v, data, MiB); // the freed clusters again: acknowledged, never flushed
    f.abandon(); // kill -9
    // The committed state maps nothing while the file holds 6 MiB: open punches what it finds leaked.
    const g = VolumeFamily.open(fdir, opts);
    const back = Buffer.alloc(6 * MiB);
    g.read(v, back, MiB);
    assert.equal(sha(back), sha(data));
    assert.ok(held(join(fdir, 'data')) >= 6 * MiB);
    g.close();
  },
);
