import { test } from 'node:test';
import assert from 'node:assert/strict';
import { HavenError } from '../../common/index.js';
import { lockVolumes } from './volume-lock.js';

test('backups of a volume take turns; a waiting one can be cancelled; other volumes do not wait', async () => {
  const storage = {};
  const order: string[] = [];
  const first = await lockVolumes(storage, ['b', 'a']);
  const waited: string[] = [];
  const second = lockVolumes(storage, ['a'], { onWait: (v) => waited.push(v) }).then((release) => {
    order.push('second');
    return release;
  });
  const other = await lockVolumes(storage, ['c']); // not held: at once
  other();
  const abort = new AbortController();
  const third = lockVolumes(storage, ['b'], { signal: abort.signal });
  abort.abort();
  await assert.rejects(third, (e: HavenError) => e.code === 'CANCELLED' && /volume b/.test(e.message));
  await new Promise((r) => setImmediate(r));
  assert.equal(order.length, 0, 'the second waits while the first holds a');
  assert.deepEqual(waited, ['a']);
  order.push('first done');
  first();
  (await second)();
  assert.deepEqual(order, ['first done', 'second']);
  // Everything released: a new holder gets both at once.
  (await lockVolumes(storage, ['a', 'b']))();
});
