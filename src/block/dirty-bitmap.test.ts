import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { writeFileSync, readFileSync } from 'node:fs';
import { tempDir } from '../../test/support/tmp.js';
import { HavenError } from '../common/index.js';
import { DirtyBitmap } from './dirty-bitmap.js';

const KiB = 1024;

test('dirty extents and status agree with a naive model on random marks', () => {
  let seed = 99;
  const rnd = (n: number) => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff), (seed >>> 8) % n);
  const gran = 4 * KiB;
  const size = 3000 * gran + 1234; // not a whole number of granules
  const bm = new DirtyBitmap('b', size, gran);
  const model = new Array<boolean>(Math.ceil(size / gran)).fill(false);
  for (let i = 0; i < 300; i++) {
    const off = rnd(size);
    const len = 1 + rnd(Math.min(200 * gran, size - off));
    bm.markDirty(off, len);
    for (let g = Math.floor(off / gran); g <= Math.floor((off + len - 1) / gran); g++) model[g] = true;
  }
  const expect: { offset: number; length: number }[] = [];
  model.forEach((d, g) => {
    if (!d) return;
    const last = expect[expect.length - 1];
    const start = g * gran;
    const end = Math.min(start + gran, size);
    if (last && last.offset + last.length === start) last.length += end - start;
    else expect.push({ offset: start, length: end - start });
  });
  assert.deepEqual([...bm.dirtyExtents()], expect);
  assert.equal(
    bm.dirtyBytes(),
    expect.reduce((a, e) => a + e.length, 0),
  );
  // status() from an unaligned offset, walked to the end, reproduces the same picture.
  const seen: { offset: number; length: number }[] = [];
  for (let pos = 0; pos < size;) {
    const ext = bm.status(pos, size - pos);
    for (const e of ext) {
      if (e.flags === 1) {
        const last = seen[seen.length - 1];
        if (last && last.offset + last.length === e.offset) last.length += e.length;
        else seen.push({ offset: e.offset, length: e.length });
      }
      pos = e.offset + e.length;
    }
  }
  assert.deepEqual(seen, expect);
  assert.equal(bm.status(5, 10)[0]!.offset, 5);
});

test('disabled bitmaps ignore writes; clear, merge and copy', () => {
  const a = new DirtyBitmap('a', 1024 * KiB, 64 * KiB);
  const b = new DirtyBitmap('b', 1024 * KiB, 64 * KiB, { enabled: false });
  b.markDirty(0, 1);
  assert.equal(b.dirtyBytes(), 0);
  a.markDirty(100 * KiB, 1);
  b.enabled = true;
  b.markDirty(500 * KiB, 200 * KiB);
  a.merge(b);
  assert.deepEqual(
    [...a.dirtyExtents()],
    [
      { offset: 64 * KiB, length: 64 * KiB },
      { offset: 448 * KiB, length: 256 * KiB },
    ],
  );
  const c = a.copy('c');
  a.clear();
  assert.equal(a.dirtyBytes(), 0);
  assert.equal(c.dirtyBytes(), 320 * KiB);
  assert.throws(() => a.merge(new DirtyBitmap('x', 1024 * KiB, 4 * KiB)), /cannot merge/);
  assert.throws(() => new DirtyBitmap('x', 1, 1000), /power of two/);
});

test('persists across save and load; damage is detected and named', (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  const bm = new DirtyBitmap('backup', 10 * 1024 * KiB, 64 * KiB);
  bm.markDirty(3 * 1024 * KiB, 5);
  bm.inconsistent = true;
  const path = join(dir.path, 'b.bitmap');
  bm.save(path);
  const back = DirtyBitmap.load(path);
  assert.equal(back.name, 'backup');
  assert.equal(back.inconsistent, true);
  assert.deepEqual([...back.dirtyExtents()], [...bm.dirtyExtents()]);
  const raw = readFileSync(path);
  raw[40] = raw[40]! ^ 0xff;
  writeFileSync(path, raw);
  assert.throws(
    () => DirtyBitmap.load(path),
    (e: HavenError) => e.code === 'CORRUPT' && /checksum/.test(e.message),
  );
});

test('growing marks the new part dirty', () => {
  const bm = new DirtyBitmap('g', 128 * KiB, 64 * KiB);
  bm.resize(320 * KiB);
  assert.deepEqual([...bm.dirtyExtents()], [{ offset: 128 * KiB, length: 192 * KiB }]);
});
