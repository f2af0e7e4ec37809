import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ChunkQueue } from './chunk-queue.js';

test('peek, take and skip across chunk boundaries; payloads are views of the chunks received', () => {
  const q = new ChunkQueue();
  const a = Buffer.from('hello ');
  const b = Buffer.from('nbd ');
  const c = Buffer.from('world');
  q.push(a);
  q.push(Buffer.alloc(0)); // empty chunks are dropped
  q.push(b);
  q.push(c);
  assert.equal(q.length, 15);
  const head = Buffer.alloc(8);
  q.peek(head, 8);
  assert.equal(head.toString(), 'hello nb');
  assert.equal(q.length, 15, 'peek consumes nothing');
  q.skip(2);
  const parts = q.take(8);
  assert.deepEqual(
    parts.map((p) => p.toString()),
    ['llo ', 'nbd '],
  );
  assert.equal(parts[0]!.buffer, a.buffer, 'a view, not a copy');
  assert.equal(parts[1], b, 'a whole chunk is handed on as it came');
  assert.equal(q.takeCopy(3).toString(), 'wor');
  assert.deepEqual(
    q.drain().map((p) => p.toString()),
    ['ld'],
  );
  assert.equal(q.length, 0);
});
