import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { tempDir } from '../../test/support/tmp.js';
import { HavenError } from '../common/index.js';
import { EXTENT_ZERO, type Extent } from './device.js';
import { DirtyBitmap } from './dirty-bitmap.js';
import {
  allocatedRanges,
  collectRanges,
  collectRangesSync,
  deviceExtents,
  walkExtents,
  walkExtentsSync,
} from './extents.js';
import { openRawFile } from './raw-file.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const code = (c: string) => (e: unknown) => e instanceof HavenError && e.code === c;

async function all(it: AsyncIterable<Extent>): Promise<Extent[]> {
  const out: Extent[] = [];
  for await (const e of it) out.push(e);
  return out;
}

/** A sparse file with `n` 64 KiB data runs, one every 128 KiB: 2n extents, more than one answer holds. */
async function striped(dir: string, n: number) {
  const dev = openRawFile(join(dir, 'striped.img'), { create: true, size: n * 128 * KiB });
  for (let i = 0; i < n; i++) await dev.write(Buffer.alloc(64 * KiB, i + 1), i * 128 * KiB);
  dev.flush();
  return dev;
}

test('the walk covers a device with more extents than one block status answer, contiguously, as qemu-img map does', async (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  const dev = await striped(dir.path, 1500); // the raw file answers at most 1024 extents a call
  t.after(() => dev.close());
  const extents = await all(deviceExtents(dev));
  let at = 0;
  for (const e of extents) {
    assert.equal(e.offset, at);
    at += e.length;
  }
  assert.equal(at, dev.size);
  const ranges = await allocatedRanges(dev);
  assert.equal(ranges.length, 1500);
  const map = JSON.parse(
    execFileSync('qemu-img', ['map', '--output=json', '-f', 'raw', join(dir.path, 'striped.img')], {
      encoding: 'utf8',
    }),
  ) as { start: number; length: number; data: boolean }[];
  assert.deepEqual(
    ranges,
    map.filter((m) => m.data).map((m) => ({ offset: m.start, length: m.length })),
  );
});

test('windows, from and end clip the extents to the range asked for', async (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  const dev = await striped(dir.path, 64);
  t.after(() => dev.close());
  const from = 100 * KiB;
  const end = 5 * MiB + 3 * KiB;
  const extents = await all(deviceExtents(dev, { from, end, window: 300 * KiB }));
  assert.equal(extents[0]!.offset, from);
  const last = extents.at(-1)!;
  assert.equal(last.offset + last.length, end);
  // No extent crosses a window boundary of the walk, and they tile [from, end).
  assert.equal(
    extents.reduce((n, e) => n + e.length, 0),
    end - from,
  );
  // Merging gives back the data runs inside the range: 64 KiB at every 128 KiB, clipped at the ends.
  const data = await collectRanges(
    deviceExtents(dev, { from, end, window: 300 * KiB }),
    (f) => !(f & EXTENT_ZERO),
  );
  assert.deepEqual(data[0], { offset: 128 * KiB, length: 64 * KiB });
  assert.deepEqual(data.at(-1), { offset: 40 * 128 * KiB, length: 3 * KiB });
});

test('an empty or non-contiguous answer is a protocol error, never an endless walk', async () => {
  await assert.rejects(all(walkExtents(() => [], MiB)), code('PROTOCOL'));
  await assert.rejects(
    all(walkExtents((o, l) => [{ offset: o + 1, length: l - 1, flags: 0 }], MiB)),
    code('PROTOCOL'),
  );
  await assert.rejects(
    all(walkExtents((o) => Promise.resolve([{ offset: o, length: 0, flags: 0 }]), MiB)),
    code('PROTOCOL'),
  );
});

test('an aborted walk stops before its next block status call', async () => {
  const ac = new AbortController();
  let calls = 0;
  const status = (o: number) => {
    calls++;
    if (calls === 2) ac.abort(new HavenError('CANCELLED', 'stopped'));
    return [{ offset: o, length: KiB, flags: 0 }];
  };
  await assert.rejects(all(walkExtents(status, MiB, { window: KiB, signal: ac.signal })), code('CANCELLED'));
  assert.equal(calls, 2);
});

test('the synchronous walk over a dirty bitmap gives the ranges it marks, merged across answers', () => {
  const bitmap = new DirtyBitmap('b', 512 * MiB, 64 * KiB);
  for (let i = 0; i < 2000; i++) bitmap.markDirty(i * 128 * KiB, 64 * KiB); // 2000 runs: past one answer
  bitmap.markDirty(300 * MiB, 3 * MiB);
  const runs = collectRangesSync(
    walkExtentsSync((o, l) => bitmap.status(o, l), 512 * MiB),
    (f) => f === 1,
  );
  let marked = 0;
  for (const r of runs) marked += r.length;
  assert.equal(marked, bitmap.dirtyBytes());
  assert.equal(runs.length, 2001);
  assert.throws(() => [...walkExtentsSync(() => [], MiB)], code('PROTOCOL'));
});
