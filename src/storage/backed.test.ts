// A volume over a read-only base (instant recovery): reads fall through to the base, partial
// writes copy on write, zeroes stay zeroes, snapshots see the base too, and after absorbBase the
// volume needs the base no more. The base is never written.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { closeSync, openSync, readFileSync, rmSync, truncateSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { openRawFile } from '../block/index.js';
import { tempDir } from '../../test/support/tmp.js';
import { BASE_LABEL, StorageService } from './service.js';

const MiB = 1024 * 1024;
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

test('a volume over a base: copy on write, zeroes, snapshots, then absorbed', async (t) => {
  const dir = tempDir();
  const svc = StorageService.open(dir.path);
  t.after(() => {
    svc.close();
    dir.cleanup();
  });
  svc.createPool('p');
  const size = 8 * MiB;
  const baseData = Buffer.alloc(size);
  randomBytes(3 * MiB).copy(baseData, MiB); // data at 1-4 MiB, zeroes elsewhere
  const basePath = join(dir.path, 'base.raw');
  writeFileSync(basePath, ''); // sparse: only the data region is allocated
  truncateSync(basePath, size);
  const fd = openSync(basePath, 'r+');
  writeSync(fd, baseData, MiB, 3 * MiB, MiB);
  closeSync(fd);
  const baseHash = sha(baseData);
  const base = openRawFile(basePath, { readOnly: true });
  svc.createVolume('r', size, 'p');
  svc.attachBase('r', base);
  const dev = svc.openDevice('r');
  const expect = Buffer.from(baseData);
  const read = async () => {
    const b = Buffer.alloc(size);
    await dev.read(b, 0);
    return b;
  };
  assert.ok((await read()).equals(expect), 'reads fall through to the base');

  // A 4 KiB write inside a base cluster: the rest of the cluster keeps the base's bytes.
  const w = randomBytes(4096);
  await dev.write(w, MiB + 12345);
  w.copy(expect, MiB + 12345);
  await dev.writeZeroes(2 * MiB + 100, 5000);
  expect.fill(0, 2 * MiB + 100, 2 * MiB + 5100);
  assert.ok((await read()).equals(expect), 'copy on write keeps the base around the write');

  svc.snapshot('r', 'cp');
  const snapDev = svc.openDevice('r@cp');
  const atSnap = Buffer.from(expect);
  await dev.write(Buffer.alloc(65536, 9), 3 * MiB);
  Buffer.alloc(65536, 9).copy(expect, 3 * MiB);
  const s = Buffer.alloc(size);
  await snapDev.read(s, 0);
  assert.ok(s.equals(atSnap), 'the snapshot reads the base where it has nothing');

  const { copiedBytes } = await svc.absorbBase('r');
  assert.ok(copiedBytes > 0 && copiedBytes <= 3 * MiB + 65536, `absorbed ${copiedBytes} bytes`);
  assert.equal(svc.baseOf('r'), undefined);
  await base.close();
  rmSync(basePath);
  assert.ok((await read()).equals(expect), 'the volume stands alone');
  assert.equal(sha(baseData), baseHash);
  assert.ok(svc.volume('r').allocatedBytes < 5 * MiB, 'zero regions of the base were not copied');
});

test('a volume made to run over a base is refused while its base is not attached', async (t) => {
  const dir = tempDir();
  let svc = StorageService.open(dir.path);
  t.after(() => {
    svc.close();
    dir.cleanup();
  });
  svc.createPool('default');
  svc.createPool('q');
  const basePath = join(dir.path, 'base.raw');
  writeFileSync(basePath, randomBytes(MiB));
  svc.createVolume('r', MiB, 'default', { [BASE_LABEL]: 'backup x' });
  svc.attachBase('r', openRawFile(basePath, { readOnly: true }));
  assert.ok(svc.openDevice('r'));
  // After a restart without its base (the backup out of reach): no zeroes in place of its data.
  svc.close();
  svc = StorageService.open(dir.path);
  assert.match(svc.missingBase('r') ?? '', /runs over backup x, which is not attached/);
  assert.throws(() => svc.openDevice('r'), /runs over backup x, which is not attached/);
  assert.throws(() => svc.openDevice('r', { readOnly: true }), /not attached/);
  await assert.rejects(svc.moveVolume('r', 'q'), /runs from a backup/);
  // With the base back, and absorbed: the volume stands alone, across restarts too.
  const base = openRawFile(basePath, { readOnly: true });
  svc.attachBase('r', base);
  assert.equal(svc.missingBase('r'), undefined);
  await svc.absorbBase('r');
  await base.close();
  svc.close();
  svc = StorageService.open(dir.path);
  assert.equal(svc.missingBase('r'), undefined);
  assert.equal(BASE_LABEL in svc.volume('r').labels, false);
  const b = Buffer.alloc(MiB);
  await svc.openDevice('r').read(b, 0);
  assert.ok(b.equals(readFileSync(basePath)));
});
