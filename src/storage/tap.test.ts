import { test } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { join } from 'node:path';
import { tempDir } from '../../test/support/tmp.js';
import type { BlockDevice } from '../block/index.js';
import { Pool } from './pool.js';
import { TapDevice, type TapEvent } from './tap.js';

const KiB = 1024;

/** Wraps a device so that every write completes after a random delay: completions reorder. */
function slow(inner: BlockDevice, rnd: () => number): BlockDevice {
  return new Proxy(inner, {
    get(target, prop, recv) {
      if (prop === 'write')
        return async (d: Uint8Array, off: number) => {
          await sleep(rnd());
          await target.write(d, off);
        };
      return Reflect.get(target, prop, recv);
    },
  });
}

test('numbers every change, marks trackers and tells subscribers in order', (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  const pool = Pool.create(join(dir.path, 'p'), { name: 'p' });
  pool.createVolume('v', 1024 * KiB);
  const tap = new TapDevice(pool.openDevice('v'));
  const marked: [number, number][] = [];
  tap.addTracker({ markDirty: (o, l) => marked.push([o, l]) });
  const events: TapEvent[] = [];
  tap.subscribe((e) => void events.push({ ...e, data: e.data?.map((d) => Buffer.from(d)) }));
  // Over a pool volume every change completes synchronously: no promise per request.
  assert.equal(tap.write(Buffer.alloc(4 * KiB, 1), 0), undefined);
  assert.equal(tap.writeZeroes(64 * KiB, 64 * KiB), undefined);
  assert.equal(tap.trim(0, 512), undefined);
  assert.equal(tap.read(Buffer.alloc(512), 0), undefined);
  assert.equal(tap.backingFd, undefined, 'never: the volume behind a tap may move');
  assert.throws(() => tap.write(Buffer.alloc(1), 1024 * KiB), /outside/);
  assert.deepEqual(
    events.map((e) => [e.seq, e.op, e.offset, e.length]),
    [
      [1, 'write', 0, 4 * KiB],
      [2, 'zero', 64 * KiB, 64 * KiB],
      [3, 'zero', 0, 512],
    ],
  );
  assert.deepEqual(events[0]!.data, [Buffer.alloc(4 * KiB, 1)]);
  assert.deepEqual(marked, [
    [0, 4 * KiB],
    [64 * KiB, 64 * KiB],
    [0, 512],
  ]);
  pool.close();
});

test('overlapping writes in flight land in sequence order whatever order they complete in', async (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  const pool = Pool.create(join(dir.path, 'p'), { name: 'p' });
  pool.createVolume('v', 256 * KiB);
  let seed = 7;
  const rnd = () => ((seed = (seed * 48271) % 2147483647), seed % 15);
  const tap = new TapDevice(slow(pool.openDevice('v'), rnd));
  const seen: number[] = [];
  tap.subscribe((e) => void seen.push(e.seq));
  // 200 writes of 8 KiB at 16 overlapping places, all issued at once.
  const writes = Array.from({ length: 200 }, (_, i) => ({ fill: (i % 250) + 1, off: (i % 16) * 4 * KiB }));
  await Promise.all(writes.map((w) => tap.write(Buffer.alloc(8 * KiB, w.fill), w.off)));
  const expect = Buffer.alloc(256 * KiB);
  for (const w of writes) expect.fill(w.fill, w.off, w.off + 8 * KiB);
  const got = Buffer.alloc(256 * KiB);
  await tap.read(got, 0);
  assert.ok(got.equals(expect), 'the volume holds the last write at every byte');
  assert.deepEqual(
    [...seen].sort((a, b) => a - b),
    Array.from({ length: 200 }, (_, i) => i + 1),
  );
  pool.close();
});

test('a change that fails part-way is published as resync, keeping the sequence gapless', (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  const pool = Pool.create(join(dir.path, 'p'), { name: 'p', capacityBytes: 128 * KiB });
  pool.createVolume('v', 1024 * KiB);
  const tap = new TapDevice(pool.openDevice('v'));
  const events: TapEvent[] = [];
  tap.subscribe((e) => void events.push(e));
  assert.throws(() => tap.write(Buffer.alloc(256 * KiB, 1), 0), /full/);
  tap.write(Buffer.alloc(512, 2), 0);
  assert.deepEqual(
    events.map((e) => [e.seq, e.op]),
    [
      [1, 'resync'],
      [2, 'write'],
    ],
  );
  pool.close();
});
