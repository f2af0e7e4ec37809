// A volume over a read-only base (instant recovery): reads fall through to the base, partial
// writes copy on write, zeroes stay zeroes, snapshots see the base too, and after absorbBase the
// volume needs the base no more. The base is never written.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { closeSync, openSync, rmSync, truncateSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { openRawFile } from '../block/index.js';
import { tempDir } from '../../test/support/tmp.js';
import { StorageService } from './service.js';

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
