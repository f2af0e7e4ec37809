// The parts of users and sessions that need no daemon: the password hash, the sign-in throttle,
// and a session's idle and absolute ends (on a clock the test moves).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { tempDir } from '../../../test/support/tmp.js';
import { openDatabase } from '../site/database.js';
import { hashPassword, verifyPassword } from './password.js';
import { SessionStore } from './sessions.js';
import { LoginThrottle } from './throttle.js';
import { UserStore } from './users.js';

test('password hashes: scrypt with its parameters and a salt of its own; only the password verifies', async () => {
  const a = await hashPassword('correct horse');
  const b = await hashPassword('correct horse');
  assert.match(a, /^scrypt\$15\$8\$1\$[A-Za-z0-9+/]{22}==\$[A-Za-z0-9+/]{43}=$/);
  assert.notEqual(a, b, 'a salt per hash');
  assert.ok(await verifyPassword('correct horse', a));
  assert.ok(await verifyPassword('correct horse', b));
  assert.ok(!(await verifyPassword('correct horsE', a)));
  assert.ok(!(await verifyPassword('', a)));
  // The parameters stored with it are the ones used: a cheaper hash still verifies.
  const cheap = await hashPassword('pw', { logN: 10, r: 8, p: 1 });
  assert.match(cheap, /^scrypt\$10\$/);
  assert.ok(await verifyPassword('pw', cheap));
  for (const bad of ['', 'plain', 'scrypt$15$8$1$salt', 'scrypt$99$8$1$AAAA$AAAA', 'bcrypt$1$2$3$4$5'])
    assert.ok(!(await verifyPassword('pw', bad)), bad);
});

test('hashing does not hold the event loop', async () => {
  let ticks = 0;
  const timer = setInterval(() => ticks++, 5);
  await Promise.all([hashPassword('a'), hashPassword('b')]);
  clearInterval(timer);
  assert.ok(ticks > 0, 'timers ran while it hashed');
});

test('the throttle: attempts for a name take turns, failures make the next wait longer, a success clears it', async () => {
  const th = new LoginThrottle({ baseMs: 100, capMs: 300, maxPending: 2 });
  const check =
    (ok: boolean, ms = 20) =>
    () =>
      new Promise<boolean>((r) => setTimeout(() => r(ok), ms));
  let t0 = performance.now();
  assert.equal(await th.attempt('x', check(false)), false);
  assert.equal(await th.attempt('x', check(false)), false); // waited 100 ms
  assert.ok(performance.now() - t0 >= 100);
  t0 = performance.now();
  assert.equal(await th.attempt('x', check(true)), true); // waited 200 ms
  assert.ok(performance.now() - t0 >= 190);
  t0 = performance.now();
  await th.attempt('x', check(false));
  assert.ok(performance.now() - t0 < 100, 'the success cleared the failures');
  // Two at once run one after the other; a third waiting is refused at once.
  const running = [th.attempt('y', check(false, 50)), th.attempt('y', check(false, 50))];
  await assert.rejects(th.attempt('y', check(true)), /too many sign-ins as y at once/);
  await Promise.all(running);
  // Other names are not slowed.
  t0 = performance.now();
  await th.attempt('z', check(true));
  assert.ok(performance.now() - t0 < 100);
});

test('sessions end when idle or too old, and with their user', () => {
  const tmp = tempDir();
  const db = openDatabase(join(tmp.path, 'site.db'));
  try {
    let now = 1_000_000;
    const users = new UserStore(db);
    users.add('ann', 'viewer', 'scrypt$hash');
    const store = new SessionStore(db, { idleMs: 1000, maxMs: 5000, now: () => now });
    const { cookie, session } = store.open('ann', 'viewer');
    assert.notEqual(session.id, cookie, 'the database keys it by a hash');
    assert.equal(db.prepare('SELECT hash FROM sessions WHERE hash = ?').get(cookie), undefined);
    assert.equal(store.find(cookie)?.user, 'ann');
    // Used often enough, it lives on to its absolute end.
    for (let i = 0; i < 4; i++) {
      now += 900;
      assert.ok(store.find(cookie), `alive at +${i}`);
    }
    now += 900;
    assert.ok(store.find(cookie), 'alive at +4.5 s');
    now += 1000;
    assert.equal(store.find(cookie), undefined, 'past its absolute end');
    // Idle too long.
    const second = store.open('ann', 'viewer');
    now += 1001;
    assert.equal(store.find(second.cookie), undefined, 'idle too long');
    // A role change shows at once; deleting the user ends it.
    const third = store.open('ann', 'viewer');
    users.setRole('ann', 'operator');
    assert.equal(store.find(third.cookie)?.role, 'operator');
    users.delete('ann');
    assert.equal(store.find(third.cookie), undefined);
  } finally {
    db.close();
    tmp.cleanup();
  }
});
