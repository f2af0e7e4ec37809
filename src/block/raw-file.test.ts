import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { statSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { tempDir } from '../../test/support/tmp.js';
import { HavenError, isPromise } from '../common/index.js';
import { openRawFile } from './raw-file.js';
import { nativeIo } from './native.js';
import type { BlockDevice } from './device.js';

const MiB = 1024 * 1024;
const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');
const code = (c: string) => (e: unknown) => e instanceof HavenError && e.code === c;
async function readAt(dev: BlockDevice, off: number, len: number) {
  const b = Buffer.alloc(len);
  const r = dev.read(b, off);
  if (isPromise(r)) await r;
  return b;
}

test('the native addon is built (setup builds it)', () => {
  assert.ok(nativeIo(), 'build/Release/haven_io.node should load');
});

for (const native of [true, false]) {
  const opts = native ? {} : { native: null };
  const label = native ? 'native' : 'portable fallback';

  test(`round trips, vectored writes and range errors (${label})`, async (t) => {
    const dir = tempDir();
    t.after(dir.cleanup);
    const path = join(dir.path, 'disk.img');
    const dev = openRawFile(path, { create: true, size: 16 * MiB, ...opts });
    assert.equal(dev.size, 16 * MiB);
    const a = randomBytes(MiB + 123);
    await dev.write([a.subarray(0, 1000), a.subarray(1000)], 777, { fua: true });
    assert.equal(sha(await readAt(dev, 777, a.length)), sha(a));
    assert.throws(() => dev.write(Buffer.alloc(2), 16 * MiB - 1), code('OUT_OF_RANGE'));
    assert.throws(() => dev.read(Buffer.alloc(1), 16 * MiB), code('OUT_OF_RANGE'));
    dev.close();
    const ro = openRawFile(path, { readOnly: true, ...opts });
    assert.throws(() => ro.write(Buffer.alloc(1), 0), code('READ_ONLY'));
    assert.equal(sha(await readAt(ro, 777, a.length)), sha(a));
    ro.close();
  });

  test(`zeroes and trim read back as zeroes; fast zero honoured (${label})`, async (t) => {
    const dir = tempDir();
    t.after(dir.cleanup);
    const dev = openRawFile(join(dir.path, 'd'), { create: true, size: 8 * MiB, ...opts });
    await dev.write(Buffer.alloc(8 * MiB, 0xaa), 0);
    dev.writeZeroes(MiB, MiB);
    dev.trim(3 * MiB + 5, 1000);
    dev.writeZeroes(5 * MiB, 4096, { noHole: true });
    const expect = Buffer.alloc(8 * MiB, 0xaa);
    expect.fill(0, MiB, 2 * MiB);
    expect.fill(0, 3 * MiB + 5, 3 * MiB + 1005);
    expect.fill(0, 5 * MiB, 5 * MiB + 4096);
    assert.equal(sha(await readAt(dev, 0, 8 * MiB)), sha(expect));
    if (native) dev.writeZeroes(0, 4096, { fastZero: true });
    else assert.throws(() => dev.writeZeroes(0, 4096, { fastZero: true }), code('UNSUPPORTED'));
    dev.close();
  });
}

test('block status reports the same allocation as qemu-img map', async (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  const path = join(dir.path, 'sparse.img');
  const dev = openRawFile(path, { create: true, size: 64 * MiB });
  await dev.write(Buffer.alloc(MiB, 1), 4 * MiB);
  await dev.write(Buffer.alloc(2 * MiB, 2), 20 * MiB);
  await dev.write(Buffer.alloc(MiB, 3), 63 * MiB);
  dev.writeZeroes(20 * MiB, MiB); // punches the first half of the second run
  dev.flush();
  const ours = dev
    .blockStatus(0, 64 * MiB)
    .map((e) => ({ start: e.offset, length: e.length, data: e.flags === 0 }));
  const map = JSON.parse(
    execFileSync('qemu-img', ['map', '--output=json', '-f', 'raw', path], { encoding: 'utf8' }),
  ) as {
    start: number;
    length: number;
    data: boolean;
  }[];
  assert.deepEqual(
    ours,
    map.map((m) => ({ start: m.start, length: m.length, data: m.data })),
  );
  assert.ok(statSync(path).blocks * 512 <= 4 * MiB + 64 * 1024, 'the punched range gave its space back');
  dev.close();
});

test('a 4 TiB sparse file serves its last megabyte', async (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  const path = join(dir.path, 'huge.img');
  writeFileSync(path, '');
  truncateSync(path, 4 * 1024 * 1024 * MiB);
  const dev = openRawFile(path);
  const last = dev.size - MiB;
  const data = randomBytes(MiB);
  await dev.write(data, last);
  assert.equal(sha(await readAt(dev, last, MiB)), sha(data));
  assert.deepEqual(dev.blockStatus(last - MiB, 2 * MiB), [
    { offset: last - MiB, length: MiB, flags: 3 },
    { offset: last, length: MiB, flags: 0 },
  ]);
  dev.close();
});
