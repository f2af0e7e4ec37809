import { test } from 'node:test';
import assert from 'node:assert/strict';
import { chmodSync, existsSync, mkdirSync, readdirSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { tempDir, treeHash } from '../../test/support/tmp.js';
import { StorageService } from './service.js';
import { Pool } from './pool.js';
import { POOL_MARKER } from './pool-path.js';

const MiB = 1024 * 1024;
const mode = (p: string) => statSync(p).mode & 0o777;

test('a pool path that is relative, a system directory, the data directory or another pool is refused', (t) => {
  const dir = tempDir();
  const data = join(dir.path, 'data');
  const svc = StorageService.open(data);
  t.after(() => {
    svc.close();
    dir.cleanup();
  });
  const other = join(dir.path, 'other');
  svc.createPool('other', { path: other });
  const refused: [string, RegExp][] = [
    ['p', /is relative: give an absolute path/],
    ['/', /\/ is a system directory/],
    ['/etc', /inside \/etc, a directory of the operating system/],
    ['/usr/local/haven', /inside \/usr/],
    ['/var', /system directory/],
    [data, /it is the site's data directory/],
    [dir.path, /it holds the site's data directory/],
    [join(data, 'run'), /a pool is a folder of/],
    [join(data, 'pools'), /a pool is a folder of/],
    [other, /overlaps the pool at/],
    [join(other, 'inner'), /overlaps the pool at/],
  ];
  for (const [path, why] of refused) assert.throws(() => svc.createPool('p', { path }), why, path);
  // A symbolic link does not smuggle a forbidden place in.
  symlinkSync('/etc', join(dir.path, 'link'));
  assert.throws(() => svc.createPool('p', { path: join(dir.path, 'link') }), /inside \/etc/);
  // A directory holding someone's files is refused, and left as it was.
  const full = join(dir.path, 'full');
  mkdirSync(full);
  writeFileSync(join(full, 'precious'), 'mine');
  const before = treeHash(full);
  assert.throws(
    () => svc.createPool('p', { path: full }),
    /not empty \(precious\) and is not a pool Haven began/,
  );
  assert.equal(treeHash(full), before);
  // An ancestor of another pool is refused too.
  const nested = join(dir.path, 'a', 'b');
  svc.createPool('nested', { path: nested });
  assert.throws(() => svc.createPool('p', { path: dirname(nested) }), /overlaps the pool at/);
  assert.deepEqual(
    svc.listPools().map((p) => p.name),
    ['nested', 'other'],
  );
});

test("deleting a pool removes only Haven's files; the operator's stay, with the directory", (t) => {
  const dir = tempDir();
  const data = join(dir.path, 'data');
  const svc = StorageService.open(data);
  t.after(() => {
    svc.close();
    dir.cleanup();
  });
  const path = join(dir.path, 'pool');
  mkdirSync(path); // an empty directory the operator made for it
  svc.createPool('p', { path });
  svc.createPool('q');
  assert.ok(existsSync(join(path, POOL_MARKER)));
  svc.createVolume('v', 4 * MiB, 'p');
  svc.openDevice('v').write(Buffer.alloc(MiB, 7), 0);
  svc.addBitmap('v', 'b');
  svc.deleteVolume('v');
  writeFileSync(join(path, 'notes.txt'), 'the operator put this here');
  mkdirSync(join(path, 'families', 'mine'));
  writeFileSync(join(path, 'families', 'mine', 'keep'), 'x');
  assert.deepEqual(svc.deletePool('p').left.sort(), ['families', 'notes.txt']);
  assert.deepEqual(readdirSync(path).sort(), ['families', 'notes.txt']);
  assert.deepEqual(readdirSync(join(path, 'families', 'mine')), ['keep']);
  // With nothing foreign left, the directory goes too; the data directory and other pools stay.
  assert.deepEqual(svc.deletePool('q').left, []);
  assert.ok(!existsSync(join(data, 'pools', 'q')));
  assert.ok(existsSync(join(data, 'pools.json')));
  // A pool Haven began but did not finish (a crash after the marker) may be created again.
  const begun = join(dir.path, 'r');
  mkdirSync(join(begun, 'families'), { recursive: true });
  writeFileSync(join(begun, POOL_MARKER), JSON.stringify({ id: 'x', name: 'r' }));
  svc.createPool('r', { path: begun });
  assert.deepEqual(svc.deletePool('r').left, []);
  assert.ok(!existsSync(begun));
});

test('volume files are 0600 and pool folders 0700, also for families made before', (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  const path = join(dir.path, 'p');
  let pool = Pool.create(path, { name: 'p' });
  pool.createVolume('v', MiB);
  const fam = join(path, 'families', readdirSync(join(path, 'families'))[0]!);
  assert.equal(mode(path), 0o700);
  assert.equal(mode(join(path, 'families')), 0o700);
  assert.equal(mode(fam), 0o700);
  assert.equal(mode(join(fam, 'data')), 0o600);
  assert.equal(mode(join(fam, 'meta')), 0o600);
  pool.close();
  chmodSync(join(fam, 'data'), 0o644); // as older versions made them
  chmodSync(join(fam, 'meta'), 0o644);
  pool = Pool.open(path);
  assert.equal(mode(join(fam, 'data')), 0o600);
  assert.equal(mode(join(fam, 'meta')), 0o600);
  pool.close();
});
