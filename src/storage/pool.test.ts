import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { tempDir } from '../../test/support/tmp.js';
import { Pool } from './pool.js';
import { HavenError } from '../common/index.js';

const MiB = 1024 * 1024;
const code = (c: string) => (e: unknown) => e instanceof HavenError && e.code === c;
const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

test('volumes, snapshots and clones by name, persistent across reopen', async (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  const path = join(dir.path, 'p');
  let pool = Pool.create(path, { name: 'fast', tier: 'fast' });
  assert.equal(pool.info().capabilities.tier, 'fast');
  pool.createVolume('db', 64 * MiB, { vm: 'vm1' });
  const dev = pool.openDevice('db');
  const data = randomBytes(MiB);
  dev.write(data, 5 * MiB);
  pool.snapshot('db', 'before');
  dev.write(Buffer.alloc(MiB, 9), 5 * MiB);
  pool.clone('db', 'before', 'db-test');
  assert.equal(pool.volume('db-test').origin, 'db@before');
  pool.close();

  pool = Pool.open(path);
  assert.deepEqual(
    pool.listVolumes().map((v) => [v.name, v.allocatedBytes]),
    [
      ['db', MiB],
      ['db-test', MiB],
    ],
  );
  assert.equal(pool.volume('db').labels.vm, 'vm1');
  assert.deepEqual(
    pool.listSnapshots('db').map((s) => s.name),
    ['before'],
  );
  const read = async (target: string) => {
    const b = Buffer.alloc(MiB);
    await pool.openDevice(target).read(b, 5 * MiB); // a snapshot's large reads go to the thread pool
    return sha(b);
  };
  assert.equal(await read('db@before'), sha(data));
  assert.equal(await read('db-test'), sha(data));
  assert.equal(await read('db'), sha(Buffer.alloc(MiB, 9)));
  assert.throws(() => pool.openDevice('db@before').write(Buffer.alloc(1), 0), code('READ_ONLY'));
  pool.close();
});

test('bad input gives a clear error and changes nothing', (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  const pool = Pool.create(join(dir.path, 'p'), { name: 'p', capacityBytes: 4 * MiB });
  assert.throws(() => pool.createVolume('bad name', MiB), /volume name "bad name" is not valid/);
  assert.throws(() => pool.createVolume('v', 0), /size 0 must be a positive multiple/);
  assert.throws(() => pool.createVolume('v', 2 ** 60), /at most/);
  assert.throws(() => pool.createVolume('v', 1000), /multiple of 512/);
  assert.throws(() => pool.volume('nope'), code('NOT_FOUND'));
  assert.throws(() => pool.snapshot('nope', 's'), /no volume nope/);
  pool.createVolume('v', 16 * MiB);
  assert.throws(() => pool.createVolume('v', MiB), code('CONFLICT'));
  pool.snapshot('v', 's');
  assert.throws(() => pool.snapshot('v', 's'), code('CONFLICT'));
  assert.throws(() => pool.revert('v', 'nope'), /has no snapshot nope/);
  pool.clone('v', 's', 'c');
  assert.throws(() => pool.deleteSnapshot('v', 's'), /origin of clone c/);
  assert.throws(() => pool.deleteVolume('v'), /has snapshot s/);
  assert.equal(pool.listVolumes().length, 2);

  // A full pool: the write that does not fit fails with NO_SPACE, and what was written stays.
  const dev = pool.openDevice('c');
  const ok = randomBytes(4 * MiB);
  dev.write(ok, 0);
  assert.throws(() => dev.write(Buffer.alloc(64 * 1024, 1), 8 * MiB), code('NO_SPACE'));
  const back = Buffer.alloc(4 * MiB);
  dev.read(back, 0);
  assert.equal(sha(back), sha(ok));
  const hole = Buffer.alloc(64 * 1024, 5);
  dev.read(hole, 8 * MiB);
  assert.deepEqual(hole, Buffer.alloc(64 * 1024));
  // Freeing space makes room again.
  dev.trim(0, 4 * MiB);
  dev.flush();
  dev.write(Buffer.alloc(64 * 1024, 1), 8 * MiB);
  pool.close();
});

test('deleting the last member removes the family from disk', (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  const path = join(dir.path, 'p');
  const pool = Pool.create(path, { name: 'p' });
  pool.createVolume('v', MiB);
  pool.snapshot('v', 's');
  pool.deleteSnapshot('v', 's');
  pool.deleteVolume('v');
  assert.deepEqual(readdirSync(join(path, 'families')), []);
  assert.throws(() => Pool.create(path, { name: 'p' }), code('CONFLICT'));
  pool.close();
});

test('names stay findable through rename, clone, delete and reopen (the name index)', async (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  const path = join(dir.path, 'p');
  let pool = Pool.create(path, { name: 'p' });
  for (const n of ['a', 'b', 'c']) pool.createVolume(n, MiB);
  pool.snapshot('a', 's');
  pool.clone('a', 's', 'a2');
  pool.renameVolume('a2', 'a3');
  assert.equal(pool.hasVolume('a2'), false);
  assert.equal(pool.volume('a3').origin, 'a@s');
  pool.renameVolume('b', 'a2'); // the freed name, now in another family
  assert.equal(pool.volume('a2').origin, undefined);
  pool.deleteVolume('a3');
  assert.equal(pool.hasVolume('a3'), false);
  await pool.dropVolume('c');
  assert.equal(pool.hasVolume('c'), false);
  assert.throws(() => pool.volume('c'), code('NOT_FOUND'));
  pool.createVolume('c', MiB); // a dropped name can be used again
  const names = () => pool.listVolumes().map((v) => v.name);
  assert.deepEqual(names(), ['a', 'a2', 'c']);
  for (const n of names()) assert.equal(pool.hasVolume(n), true, n);
  pool.close();
  pool = Pool.open(path);
  assert.deepEqual(names(), ['a', 'a2', 'c']);
  for (const n of names()) assert.equal(pool.volume(n).name, n);
  assert.equal(pool.hasVolume('b'), false);
  assert.deepEqual(
    pool.listSnapshots('a').map((s) => s.name),
    ['s'],
  );
  pool.close();
});
