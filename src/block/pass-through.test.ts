import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { writeFileSync } from 'node:fs';
import { tempDir } from '../../test/support/tmp.js';
import { isPromise, type MaybePromise } from '../common/index.js';
import { DEFAULT_BLOCK_SIZES, type BlockDevice, type Extent } from './device.js';
import { PassThroughDevice } from './pass-through.js';
import { openRawFile } from './raw-file.js';
import { ThrottledDevice } from './throttle.js';

/** A device that records each call and answers with what it was built to answer. */
class Recorder implements BlockDevice {
  readonly calls: unknown[][] = [];
  readonly size = 1 << 20;
  readonly readOnly = true;
  readonly blockSizes = { ...DEFAULT_BLOCK_SIZES, preferred: 512 };
  readonly flushCoversAll = false;
  readonly backingFd = 42;
  readonly extents: Extent[] = [{ offset: 0, length: 1, flags: 3 }];
  constructor(private readonly answer: () => MaybePromise<void>) {}
  protected rec(...call: unknown[]): MaybePromise<void> {
    this.calls.push(call);
    return this.answer();
  }
  read(buf: Uint8Array, offset: number) {
    return this.rec('read', buf, offset);
  }
  write(data: Uint8Array | readonly Uint8Array[], offset: number, flags?: object) {
    return this.rec('write', data, offset, flags);
  }
  flush() {
    return this.rec('flush');
  }
  trim(offset: number, length: number, flags?: object) {
    return this.rec('trim', offset, length, flags);
  }
  writeZeroes(offset: number, length: number, flags?: object) {
    return this.rec('writeZeroes', offset, length, flags);
  }
  blockStatus(offset: number, length: number) {
    this.calls.push(['blockStatus', offset, length]);
    return this.extents;
  }
  close() {
    return this.rec('close');
  }
}

class CachingRecorder extends Recorder {
  cache(offset: number, length: number) {
    return this.rec('cache', offset, length);
  }
}

test('forwards every property and method, with its arguments and its very result', async () => {
  for (const answer of [() => undefined, () => Promise.resolve()]) {
    const inner = new CachingRecorder(answer);
    const dev = new PassThroughDevice(inner);
    assert.equal(dev.size, inner.size);
    assert.equal(dev.readOnly, true);
    assert.equal(dev.blockSizes, inner.blockSizes);
    assert.equal(dev.flushCoversAll, false);
    assert.equal(dev.backingFd, 42);
    const buf = new Uint8Array(8);
    const parts = [buf, buf];
    const flags = { fua: true };
    const zflags = { noHole: true, fastZero: true };
    const results = [
      dev.read(buf, 1),
      dev.write(parts, 2, flags),
      dev.flush(),
      dev.trim(3, 4, flags),
      dev.writeZeroes(5, 6, zflags),
      dev.cache!(7, 8),
      dev.close(),
    ];
    assert.equal(dev.blockStatus(9, 10), inner.extents, 'the extents of the inner device, not a copy');
    assert.deepEqual(inner.calls, [
      ['read', buf, 1],
      ['write', parts, 2, flags],
      ['flush'],
      ['trim', 3, 4, flags],
      ['writeZeroes', 5, 6, zflags],
      ['cache', 7, 8],
      ['close'],
      ['blockStatus', 9, 10],
    ]);
    assert.equal(inner.calls[1]![1], parts, 'the same array of buffers');
    const sync = answer() === undefined;
    for (const [i, r] of results.entries())
      assert.equal(isPromise(r), !sync, `result ${i} as the inner gave it`);
    await Promise.all(results);
  }
});

test('a synchronous device stays synchronous through it', (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  const path = join(dir.path, 'd.img');
  writeFileSync(path, Buffer.alloc(1 << 20, 7));
  const dev = new PassThroughDevice(openRawFile(path, { threadPool: false }));
  const buf = Buffer.alloc(4096);
  for (const r of [
    dev.write(Buffer.alloc(4096, 1), 0, { fua: true }),
    dev.read(buf, 0),
    dev.writeZeroes(4096, 4096),
    dev.trim(8192, 4096),
    dev.flush(),
  ])
    assert.equal(r, undefined);
  assert.deepEqual(buf, Buffer.alloc(4096, 1));
  assert.ok(Array.isArray(dev.blockStatus(0, 1 << 20)));
  assert.equal(dev.close(), undefined);
});

test('optional members: cache only when the inner has it, following a new inner', () => {
  class Swappable extends PassThroughDevice {
    swap(next: BlockDevice) {
      return this.setInner(next);
    }
  }
  const plain = new Recorder(() => undefined);
  const dev = new Swappable(plain);
  assert.equal('cache' in dev, false, 'no cache over a device without one');
  const caching = new CachingRecorder(() => undefined);
  assert.equal(dev.swap(caching), plain);
  assert.equal(typeof dev.cache, 'function');
  dev.cache!(1, 2);
  assert.deepEqual(caching.calls, [['cache', 1, 2]]);
  dev.swap(plain);
  assert.equal(dev.cache, undefined);
});

test('a wrapper that changes reads states backingFd undefined (the throttle)', (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  const path = join(dir.path, 'd.img');
  writeFileSync(path, Buffer.alloc(1 << 20));
  const file = openRawFile(path);
  t.after(() => file.close());
  assert.equal(typeof file.backingFd, 'number');
  const through = new PassThroughDevice(file);
  assert.equal(through.backingFd, file.backingFd);
  assert.equal(new ThrottledDevice(file, { iops: 10 }).backingFd, undefined);
});
