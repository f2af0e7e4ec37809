// BufferPool and ChunkQueue, the two pieces of the request loop that hold bytes without copying.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { BufferPool } from './buffer-pool.js';
import { ChunkQueue } from './chunk-queue.js';

test('BufferPool gives released buffers back by exact size, never small ones, up to its cap', () => {
  const pool = new BufferPool(1024, 4096);
  const a = pool.acquire(2048);
  assert.equal(a.length, 2048);
  pool.release(a);
  assert.equal(pool.acquire(2048), a, 'the same buffer is reused');
  assert.notEqual(pool.acquire(2048), a, 'but only once');
  pool.release(a);
  assert.notEqual(pool.acquire(3072), a, 'a different size is a different buffer');
  const small = pool.acquire(512);
  pool.release(small);
  assert.notEqual(pool.acquire(512), small, 'buffers under minSize are not kept');
  // The cap: 4096 bytes retained at most.
  const [x, y, z] = [pool.acquire(2048), pool.acquire(2048), pool.acquire(2048)];
  pool.release(x);
  pool.release(y);
  pool.release(z); // over the cap: dropped
  const got = new Set([pool.acquire(2048), pool.acquire(2048), pool.acquire(2048)]);
  assert.ok(got.has(x) && got.has(y) && !got.has(z));
});

test('ChunkQueue peeks, takes and skips across chunk boundaries without losing a byte', () => {
  const q = new ChunkQueue();
  const all = Buffer.from(Array.from({ length: 100 }, (_, i) => i));
  q.push(all.subarray(0, 3));
  q.push(Buffer.alloc(0));
  q.push(all.subarray(3, 10));
  q.push(all.subarray(10, 100));
  assert.equal(q.length, 100);
  const out = Buffer.alloc(5);
  q.peek(out, 5);
  assert.deepEqual([...out], [0, 1, 2, 3, 4]);
  assert.equal(q.length, 100, 'peek consumes nothing');
  assert.deepEqual([...q.takeCopy(4)], [0, 1, 2, 3]);
  const views = q.take(8); // [4, 12): the rest of chunk 1, two bytes of chunk 2
  assert.deepEqual(
    views.map((v) => v.length),
    [6, 2],
  );
  assert.deepEqual([...Buffer.concat(views)], [4, 5, 6, 7, 8, 9, 10, 11]);
  assert.equal(views[1]!.buffer, all.buffer, 'views, not copies');
  q.skip(38);
  assert.equal(q.length, 50);
  const rest = Buffer.concat(q.drain());
  assert.deepEqual([...rest], [...all.subarray(50)]);
  assert.equal(q.length, 0);
  // A whole chunk is handed on as itself.
  const c = Buffer.alloc(16, 7);
  q.push(c);
  assert.equal(q.take(16)[0], c);
});
