// Thinning of the target's checkpoint history, run as the applier runs it (after every new
// checkpoint): a checkpoint every 5 s for 3 days, kept 7 days, stays a few hundred snapshots;
// every checkpoint of the last 10 minutes is there, then no gap wider than the tier's bucket
// (twice, at a bucket edge); a named checkpoint is kept however old; past the window, nothing.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { thinCheckpoints, type DatedCheckpoint } from './checkpoint-thinning.js';

const MIN = 60_000;
const HOUR = 60 * MIN;
const DAY = 24 * HOUR;

function run(everyMs: number, forMs: number, keepMs: number, named: Set<number>): DatedCheckpoint[] {
  let list: DatedCheckpoint[] = [];
  const t0 = Date.UTC(2026, 11, 1);
  for (let seq = 1, t = t0; t <= t0 + forMs; seq++, t += everyMs) {
    list.push({ seq, time: t, ...(named.has(seq) ? { name: `n${seq}` } : {}) });
    const drop = new Set(thinCheckpoints(list, { keepMs }));
    list = list.filter((c) => !drop.has(c));
  }
  return list;
}

test('a checkpoint every 5 s for 3 days kept 7 days: a few hundred left, dense at the end, no wide gaps, the named one kept', () => {
  const list = run(5000, 3 * DAY, 7 * DAY, new Set([100]));
  const now = list.at(-1)!.time;
  assertBounded(list.length);
  assert.ok(
    list.some((c) => c.name === 'n100'),
    'the named checkpoint of day 1 is kept',
  );
  // The last 10 minutes: every checkpoint.
  assert.equal(list.filter((c) => now - c.time <= 10 * MIN).length, 10 * 12 + 1);
  for (let i = 1; i < list.length; i++) {
    const age = now - list[i]!.time;
    const gap = list[i]!.time - list[i - 1]!.time;
    const bucket = age <= 10 * MIN ? 5000 : age <= HOUR ? MIN : age <= DAY ? 10 * MIN : HOUR;
    assert.ok(
      gap <= 2 * bucket + 5000,
      `a gap of ${gap / 1000} s at age ${age / 1000} s (bucket ${bucket / 1000} s)`,
    );
  }
});

test('nothing past the window but the newest; an empty list', () => {
  const list = run(MIN, 3 * HOUR, HOUR, new Set([1]));
  const now = list.at(-1)!.time;
  assert.ok(
    list.every((c) => now - c.time <= HOUR),
    'nothing older than the window, named or not',
  );
  assert.deepEqual(thinCheckpoints([], { keepMs: 1 }), []);
  const one = [{ seq: 1, time: 0 }];
  assert.deepEqual(thinCheckpoints(one, { keepMs: 1 }), []);
});

function assertBounded(n: number): void {
  // 121 dense + 50 minutes + 138 ten-minute buckets of the first day + 48 hours + the named one.
  assert.ok(n <= 121 + 51 + 139 + 49 + 1, `${n} checkpoints kept`);
  assert.ok(n >= 121 + 40 + 120 + 40, `${n} checkpoints kept: thinned too far`);
}
