// The peer health state machine (pure) and its watcher over a fake heartbeat: one answer makes a
// peer reachable, N misses in a row unreachable, fewer change nothing; settle() waits for the
// state to be decided; taken-over overrides the link; every change (and only a change) is an event.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { EventLog, SiteEvent } from './events.js';
import { HeartbeatState, PeerHealthWatch } from './peer-health.js';

const ok = (rttMs = 1) => ({ ok: true as const, rttMs });
const miss = (error = 'refused') => ({ ok: false as const, error });

test('heartbeat state: reachable on an answer, unreachable only after N misses in a row', () => {
  const t0 = new Date(0);
  const s = new HeartbeatState(3, t0);
  assert.equal(s.link, 'unknown');
  assert.equal(s.beat(miss(), new Date(1)), false);
  assert.equal(s.link, 'unknown', 'one miss decides nothing');
  assert.equal(s.beat(ok(4), new Date(2)), true);
  assert.equal(s.link, 'reachable');
  assert.equal(s.missed, 0);
  assert.equal(s.rttMs, 4);
  assert.equal(s.beat(miss(), new Date(3)), false);
  assert.equal(s.beat(miss(), new Date(4)), false);
  assert.equal(s.link, 'reachable', 'two misses of three: still reachable');
  assert.equal(s.beat(ok(), new Date(5)), false, 'an answer resets the count');
  assert.equal(s.missed, 0);
  for (let i = 0; i < 2; i++) s.beat(miss(), new Date(6 + i));
  assert.equal(s.beat(miss('ECONNREFUSED'), new Date(9)), true);
  assert.equal(s.link, 'unreachable');
  assert.equal(s.missed, 3);
  assert.equal(s.error, 'ECONNREFUSED');
  assert.equal(s.since.getTime(), 9);
  assert.equal(s.beat(miss(), new Date(10)), false, 'more misses: no change');
  assert.equal(s.beat(ok(), new Date(11)), true);
  assert.equal(s.link, 'reachable');
  assert.equal(s.error, undefined);
});

test('watcher: settle waits for the state, taken-over overrides, changes are events', async () => {
  const events: Omit<SiteEvent, 'id' | 'time'>[] = [];
  const log = { append: (e: Omit<SiteEvent, 'id' | 'time'>) => void events.push(e) } as unknown as EventLog;
  let answering = true;
  let pings = 0;
  let taken: string[] = [];
  const w = new PeerHealthWatch(
    {
      peers: () => ['b'],
      ping: async () => {
        pings++;
        if (!answering) throw new Error('cannot reach site b: ECONNREFUSED');
        return 'b';
      },
      takenOver: () => taken,
    },
    log,
    { intervalMs: 100, missed: 3 },
  );
  assert.equal(w.health('b').state, 'unknown');
  assert.equal(await w.settle('b'), 'reachable');
  assert.equal(w.health('b').state, 'reachable');
  answering = false;
  const before = pings;
  const t = performance.now();
  assert.equal(await w.settle('b'), 'unreachable');
  assert.equal(pings - before, 3, 'three heartbeats missed');
  assert.ok(performance.now() - t >= 190, 'spaced by the interval');
  const h = w.health('b');
  assert.equal(h.state, 'unreachable');
  assert.match(h.error ?? '', /ECONNREFUSED/);
  taken = ['g1'];
  w.recheck('b');
  assert.equal(w.health('b').state, 'taken-over');
  assert.equal(w.health('b').link, 'unreachable');
  w.recheck('b'); // no change: no event
  assert.deepEqual(
    events.map((e) => [e.action, e.target, e.outcome, e.details?.state]),
    [
      ['peer.health', 'b', 'ok', 'reachable'],
      ['peer.health', 'b', 'warning', 'unreachable'],
      ['peer.health', 'b', 'info', 'taken-over'],
    ],
  );
  assert.throws(
    () => new PeerHealthWatch({ peers: () => [], ping: async () => 0 }, log, { missed: 0 }),
    /missed/,
  );
});
