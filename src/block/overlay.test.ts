import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { cpSync, existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { tempDir } from '../../test/support/tmp.js';
import type { BlockDevice } from './device.js';
import { OverlayDevice } from './overlay.js';
import { openRawFile } from './raw-file.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

async function readAll(dev: BlockDevice): Promise<Buffer> {
  const b = Buffer.alloc(dev.size);
  await dev.read(b, 0);
  return b;
}

/** A base whose reads complete later, like an NBD client or a repository reader. */
function asyncBase(inner: BlockDevice): BlockDevice {
  return new Proxy(inner, {
    get(t, prop, recv) {
      if (prop === 'read')
        return async (b: Uint8Array, o: number) => (await new Promise((r) => setImmediate(r)), t.read(b, o));
      if (prop === 'blockStatus') return async (o: number, l: number) => t.blockStatus(o, l);
      return Reflect.get(t, prop, recv);
    },
  });
}

for (const mode of ['sync base', 'async base'] as const) {
  test(`random writes, zeroes and trims agree with a model; the base never changes (${mode})`, async (t) => {
    const dir = tempDir();
    t.after(dir.cleanup);
    const basePath = join(dir.path, 'base.img');
    const size = 4 * MiB + 12 * KiB; // not a whole number of clusters
    writeFileSync(basePath, randomBytes(size));
    const baseHash = sha(readFileSync(basePath));
    const raw = openRawFile(basePath, { readOnly: true });
    const base = mode === 'sync base' ? raw : asyncBase(raw);
    const ov = OverlayDevice.create(join(dir.path, 'ov'), base, { clusterSize: 64 * KiB });
    const model = readFileSync(basePath);
    let seed = 3;
    const rnd = (n: number) => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff), (seed >>> 8) % n);
    const ops: Promise<void>[] = [];
    for (let i = 0; i < 300; i++) {
      const off = rnd(size);
      const len = 1 + rnd(Math.min(200 * KiB, size - off));
      const op = rnd(10);
      if (op < 7) {
        const d = randomBytes(len);
        d.copy(model, off);
        ops.push(Promise.resolve(ov.write(d, off)));
      } else {
        model.fill(0, off, off + len);
        ops.push(Promise.resolve(op < 9 ? ov.writeZeroes(off, len) : ov.trim(off, len)));
      }
      if (rnd(5) === 0) await Promise.all(ops.splice(0));
    }
    await Promise.all(ops);
    assert.equal(sha(await readAll(ov)), sha(model));
    // Block status: zeroed clusters are holes, written clusters data, the rest the base's.
    let pos = 0;
    while (pos < size) for (const e of await ov.blockStatus(pos, size - pos)) pos = e.offset + e.length;
    ov.close();
    assert.equal(sha(readFileSync(basePath)), baseHash, 'the base changed');
    const again = OverlayDevice.open(join(dir.path, 'ov'), base);
    assert.equal(sha(await readAll(again)), sha(model), 'reopened overlay differs');
    // Commit into a copy of the base: it becomes exactly what the overlay shows.
    const targetPath = join(dir.path, 'target.img');
    cpSync(basePath, targetPath);
    const target = openRawFile(targetPath);
    await again.commit(target);
    target.close();
    assert.equal(sha(readFileSync(targetPath)), sha(model));
    again.discard();
    assert.equal(existsSync(join(dir.path, 'ov')), false);
    raw.close();
  });
}

test('after a crash, flushed writes are there and unflushed ones are either there or the base', async (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  const basePath = join(dir.path, 'base.img');
  writeFileSync(basePath, Buffer.alloc(2 * MiB, 0xbb));
  const base = openRawFile(basePath, { readOnly: true });
  const ov = OverlayDevice.create(join(dir.path, 'ov'), base);
  await ov.write(Buffer.alloc(64 * KiB, 1), 0);
  await ov.write(Buffer.alloc(1000, 2), 200 * KiB); // partial: copy on write
  ov.flush();
  await ov.write(Buffer.alloc(64 * KiB, 3), 512 * KiB); // never flushed
  await ov.writeZeroes(0, 64 * KiB); // never flushed
  // What a crash leaves: the files as they are now, without the overlay's in-memory state.
  cpSync(join(dir.path, 'ov'), join(dir.path, 'crashed'), { recursive: true });
  const after = OverlayDevice.open(join(dir.path, 'crashed'), base);
  const got = await readAll(after);
  const expect = Buffer.alloc(2 * MiB, 0xbb);
  expect.fill(2, 200 * KiB, 200 * KiB + 1000);
  assert.ok(
    got.subarray(200 * KiB, 264 * KiB).equals(expect.subarray(200 * KiB, 264 * KiB)),
    'flushed copy-on-write lost',
  );
  const first = got.subarray(0, 64 * KiB);
  assert.ok(
    first.equals(Buffer.alloc(64 * KiB, 1)) || first.equals(Buffer.alloc(64 * KiB)),
    'flushed write turned to garbage',
  );
  const unflushed = got.subarray(512 * KiB, 576 * KiB);
  assert.ok(
    unflushed.equals(Buffer.alloc(64 * KiB, 3)) || unflushed.equals(Buffer.alloc(64 * KiB, 0xbb)),
    'unflushed write turned to garbage',
  );
  after.close();
  ov.close();
  base.close();
});

test('a torn journal batch is ignored; a damaged map is named', (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  const basePath = join(dir.path, 'base.img');
  writeFileSync(basePath, Buffer.alloc(MiB));
  const base = openRawFile(basePath, { readOnly: true });
  const ov = OverlayDevice.create(join(dir.path, 'ov'), base);
  ov.write(Buffer.alloc(64 * KiB, 9), 0);
  ov.close();
  const j = join(dir.path, 'ov', 'journal');
  writeFileSync(j, Buffer.concat([readFileSync(j), Buffer.from([5, 0, 0, 0, 1, 2])])); // torn append
  const again = OverlayDevice.open(join(dir.path, 'ov'), base);
  assert.equal(again.allocatedClusters(), 1);
  again.close();
  const m = join(dir.path, 'ov', 'map');
  const map = readFileSync(m);
  map[40] = map[40]! ^ 1;
  writeFileSync(m, map);
  assert.throws(() => OverlayDevice.open(join(dir.path, 'ov'), base), /overlay map .* is damaged: checksum/);
  base.close();
});
