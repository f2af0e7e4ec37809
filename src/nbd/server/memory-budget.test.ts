import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MemoryBudget } from './memory-budget.js';

test('the budget is shared: a holder past the limit waits for another to give back, one wake per give', () => {
  const b = new MemoryBudget(100);
  const a = {};
  const c = {};
  assert.ok(b.tryTake(60, a));
  assert.ok(b.tryTake(30, a));
  assert.equal(b.tryTake(20, a), false, 'a holder that holds something stays within the limit');
  let woken = 0;
  b.wait(() => woken++);
  b.give(30, a);
  assert.equal(woken, 1);
  b.give(10, a);
  assert.equal(woken, 1, 'a wake is called once');
  assert.ok(b.tryTake(20, a));
  assert.equal(b.used, 70);
  b.give(70, a);
  assert.equal(b.used, 0);
  assert.equal(b.peak, 90);
  // A forgotten waiter is not called.
  const w = () => assert.fail('forgotten');
  b.wait(w);
  b.forget(w);
  assert.ok(b.tryTake(1, c));
  b.give(1, c);
});

test('a holder that holds nothing may always take one request: a stuck client holds up only itself', () => {
  const b = new MemoryBudget(64);
  const stuck = {};
  const vm = {};
  assert.ok(b.tryTake(64, stuck)); // a client that no longer reads its replies
  assert.equal(b.tryTake(1, stuck), false);
  assert.ok(b.tryTake(32, vm), 'the other client still gets one request through');
  assert.equal(b.tryTake(32, vm), false, 'but only one beyond the limit');
  assert.equal(b.used, 96);
  assert.ok(b.tryTake(0, vm), 'nothing always fits');
  b.give(32, vm);
  b.give(64, stuck);
  assert.equal(b.used, 0);
});
