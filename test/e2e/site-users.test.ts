// Users, console sessions and API tokens over real HTTP on a real daemon (real SQLite): the
// cookie's flags, signing in and out, CSRF, wrong passwords and their throttle, per-user tokens,
// password changes, deleting a user, and the audit log naming the user.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { startSiteDaemon, type SiteDaemon } from '../../src/api/index.js';
import type { SiteEvent } from '../../src/orchestration/index.js';
import { tempDir } from '../support/tmp.js';
import { bearer, caller, errorOf, signIn, type Caller } from '../support/console-client.js';

interface Fixture {
  d: SiteDaemon;
  dir: string;
  admin: Caller;
  anonymous: Caller;
  addUser(name: string, role: string, password?: string): Promise<void>;
}

async function daemon(t: { after: (fn: () => unknown) => void }, name: string): Promise<Fixture> {
  const dir = tempDir();
  const d = await startSiteDaemon(
    // A quicker throttle than the default, so that the test sees it work without waiting long.
    { dataDir: dir.path, name, nbdListen: 'none', access: { throttle: { baseMs: 200, capMs: 1200 } } },
    { host: '127.0.0.1', port: 0 },
  );
  t.after(async () => {
    await d.stop();
    dir.cleanup();
  });
  const admin = bearer(d.url, readFileSync(join(dir.path, 'api-token'), 'utf8').trim());
  return {
    d,
    dir: dir.path,
    admin,
    anonymous: caller(d.url),
    addUser: async (user, role, password = `${user}-password`) => {
      const a = await admin('POST', '/users', { name: user, role, password });
      assert.equal(a.status, 201, JSON.stringify(a.body));
    },
  };
}

test('sign in: an HttpOnly, SameSite=Strict session cookie and a CSRF token; who am I; sign out ends it', async (t) => {
  const f = await daemon(t, 'sessions');
  await f.addUser('alice', 'operator', 'correct horse battery');
  const s = await signIn(f.d.url, 'alice', 'correct horse battery');
  assert.match(s.setCookie, /^haven_session=[A-Za-z0-9_-]{43}; /);
  const flags = s.setCookie.split('; ').slice(1);
  assert.deepEqual(flags.sort(), ['HttpOnly', 'Path=/', 'SameSite=Strict'], 'no Secure without TLS');
  assert.equal(s.role, 'operator');
  assert.match(s.csrfToken, /^[A-Za-z0-9_-]{43}$/);

  const me = await s.call('GET', '/session');
  assert.equal(me.status, 200);
  assert.deepEqual(me.body, { user: 'alice', role: 'operator', csrfToken: s.csrfToken });
  assert.equal((await s.call('GET', '/volumes')).status, 200, 'the cookie authenticates the API');
  // The site token is a caller too (no CSRF token: it is no session).
  assert.deepEqual((await f.admin('GET', '/session')).body, { user: 'admin', role: 'admin' });
  assert.equal((await f.anonymous('GET', '/session')).status, 401);

  const out = await s.call('DELETE', '/session');
  assert.equal(out.status, 204);
  assert.match(out.headers.get('set-cookie') ?? '', /^haven_session=; .*Max-Age=0/);
  const after = await s.call('GET', '/volumes');
  assert.equal(after.status, 401);
  assert.equal(errorOf(after).code, 'UNAUTHENTICATED');
  assert.match(errorOf(after).message, /session has ended/);
  assert.equal((await s.call('GET', '/session')).status, 401);
  // Signing out again is no error.
  assert.equal((await s.call('DELETE', '/session')).status, 204);
  // A made-up cookie opens nothing.
  const forged = await caller(f.d.url, { cookie: 'haven_session=AAAA' })('GET', '/site');
  assert.equal(forged.status, 401);
});

test('a wrong password or an unknown user is the same 401; repeated failures slow the next try, not hang it', async (t) => {
  const f = await daemon(t, 'wrong');
  await f.addUser('bob', 'viewer', 'bob-password');
  const wrong = await f.anonymous('POST', '/session', { user: 'bob', password: 'not-it' });
  const unknown = await f.anonymous('POST', '/session', { user: 'nobody', password: 'not-it' });
  assert.equal(wrong.status, 401);
  assert.equal(unknown.status, 401);
  assert.deepEqual(wrong.body, unknown.body, 'the answer says not which was wrong');
  assert.equal(errorOf(wrong).code, 'UNAUTHENTICATED');
  assert.doesNotMatch(errorOf(wrong).message, /not-it/);
  assert.equal(wrong.headers.get('set-cookie'), null);

  // Four more failures: each waits longer (200, 400, 800, 1200 ms with this daemon's throttle).
  for (let i = 0; i < 4; i++) await f.anonymous('POST', '/session', { user: 'bob', password: `x${i}` });
  let t0 = performance.now();
  const slowed = await f.anonymous('POST', '/session', { user: 'bob', password: 'bob-password' });
  const waited = performance.now() - t0;
  assert.equal(slowed.status, 200, 'the right password still signs in');
  assert.ok(waited >= 1200, `the sign-in after five failures waited ${Math.round(waited)} ms`);
  // A success clears it; other names were never slowed. Compared with the slowed sign-in rather
  // than with a fixed time: the password hash itself (scrypt) takes longer on a loaded machine.
  t0 = performance.now();
  await signIn(f.d.url, 'bob', 'bob-password');
  const cleared = performance.now() - t0;
  assert.ok(
    cleared < waited - 600,
    `the sign-in after a success took ${Math.round(cleared)} ms, the slowed one ${Math.round(waited)} ms`,
  );

  // Many at once: they take turns, and those beyond three waiting are refused at once.
  const burst = await Promise.all(
    Array.from({ length: 12 }, (_, i) => f.anonymous('POST', '/session', { user: 'bob', password: `y${i}` })),
  );
  assert.ok(burst.every((a) => a.status === 401));
  assert.ok(burst.some((a) => /too many sign-ins as bob at once/.test(errorOf(a).message)));
  // The audit log has the failures, never a password.
  const events = (await f.admin('GET', '/events?action=user.sign-in&limit=100')).body as SiteEvent[];
  assert.ok(events.some((e) => e.outcome === 'failed' && e.actor === 'bob@127.0.0.1'));
  assert.ok(events.some((e) => e.outcome === 'ok' && e.actor === 'bob@127.0.0.1'));
  assert.ok(!JSON.stringify(events).includes('bob-password'));
  assert.ok(!JSON.stringify(events).includes('not-it'));
});

test('CSRF: a cookie-authenticated change without X-CSRF-Token, or with a wrong one, is 403 and changes nothing', async (t) => {
  const f = await daemon(t, 'csrf');
  await f.addUser('carol', 'operator');
  const s = await signIn(f.d.url, 'carol', 'carol-password');
  const body = { name: 'v1', sizeBytes: 1 << 20 };
  for (const headers of [{}, { 'x-csrf-token': 'wrong' }, { 'x-csrf-token': '' }] as Record<
    string,
    string
  >[]) {
    const a = await s.cookieOnly('POST', '/volumes', body, headers);
    assert.equal(a.status, 403, JSON.stringify(headers));
    assert.equal(errorOf(a).code, 'PERMISSION_DENIED');
    assert.match(errorOf(a).message, /X-CSRF-Token/);
  }
  assert.deepEqual((await s.call('GET', '/volumes')).body, [], 'nothing was created');
  // Reads need none; with the header, the change runs and the audit log names the user.
  const made = await s.call('POST', '/volumes', body);
  assert.equal(made.status, 201, JSON.stringify(made.body));
  const ev = ((await f.admin('GET', '/events?action=volume.create')).body as SiteEvent[])[0]!;
  assert.equal(ev.actor, 'carol@127.0.0.1');
  // Another session's CSRF token is no good for this one.
  const other = await signIn(f.d.url, 'carol', 'carol-password');
  const crossed = await s.cookieOnly('DELETE', '/volumes/v1', undefined, { 'x-csrf-token': other.csrfToken });
  assert.equal(crossed.status, 403);
  // A bearer token needs no CSRF token: it is no cookie a browser sends by itself.
  assert.equal((await f.admin('DELETE', '/volumes/v1')).status, 204);
  const adminEv = ((await f.admin('GET', '/events?action=volume.delete')).body as SiteEvent[])[0]!;
  assert.equal(adminEv.actor, 'admin@127.0.0.1', 'the site token is admin in the audit log, as before');
});

test('user API tokens: made once, listed without the secret, act as their user, revoked', async (t) => {
  const f = await daemon(t, 'tokens');
  await f.addUser('dave', 'viewer');
  await f.addUser('erin', 'operator');
  const dave = await signIn(f.d.url, 'dave', 'dave-password');
  // A user makes their own (a viewer too), not another's.
  const made = await dave.call('POST', '/users/dave/tokens');
  assert.equal(made.status, 201, JSON.stringify(made.body));
  const { id, token } = made.body as { id: string; token: string };
  assert.match(token, /^hvu_[A-Za-z0-9_-]{43}$/);
  const notHis = await dave.call('POST', '/users/erin/tokens');
  assert.equal(notHis.status, 403);
  assert.match(errorOf(notHis).message, /only an admin or user erin may do this; user dave is viewer/);

  const listed = (await dave.call('GET', '/users/dave/tokens')).body as { id: string }[];
  assert.deepEqual(
    listed.map((x) => x.id),
    [id],
  );
  assert.ok(!JSON.stringify(listed).includes(token), 'the list never shows a token');
  assert.equal((await f.admin('GET', '/users/dave/tokens')).status, 200, 'an admin sees anyone’s');

  // The token acts as dave, with dave's role: reads yes, operations no.
  const script = bearer(f.d.url, token);
  assert.deepEqual((await script('GET', '/session')).body, { user: 'dave', role: 'viewer' });
  assert.equal((await script('GET', '/volumes')).status, 200);
  const refused = await script('POST', '/volumes', { name: 'v', sizeBytes: 4096 });
  assert.equal(refused.status, 403);
  assert.match(errorOf(refused).message, /needs the operator role; user dave is viewer/);
  // A role change applies to the token at once.
  assert.equal((await f.admin('PUT', '/users/dave/role', { role: 'operator' })).status, 200);
  assert.equal((await script('POST', '/volumes', { name: 'v', sizeBytes: 4096 })).status, 201);
  const ev = ((await f.admin('GET', '/events?action=volume.create')).body as SiteEvent[])[0]!;
  assert.equal(ev.actor, 'dave@127.0.0.1');
  const shown = ((await f.admin('GET', '/users/dave/tokens')).body as { lastUsedAt?: string }[])[0]!;
  assert.ok(shown.lastUsedAt, 'its last use is shown');

  // Revoked: it opens nothing any more.
  assert.equal((await dave.call('DELETE', `/users/dave/tokens/${id}`)).status, 204);
  const gone = await script('GET', '/volumes');
  assert.equal(gone.status, 401);
  assert.match(errorOf(gone).message, /the API token is not valid/);
  assert.equal((await dave.call('DELETE', `/users/dave/tokens/${id}`)).status, 404);
  assert.deepEqual((await dave.call('GET', '/users/dave/tokens')).body, []);
});

test('users: names checked, duplicates refused, no hash in any answer; passwords and deleting end sessions', async (t) => {
  const f = await daemon(t, 'users');
  for (const [name, re] of [
    ['a/b', /user name "a\/b" is not valid/],
    ['', /user name "" is not valid/],
    ['x'.repeat(65), /is not valid: use 1-64/],
    ['admin', /is the site token's/],
  ] as const) {
    const a = await f.admin('POST', '/users', { name, role: 'viewer', password: 'long enough' });
    assert.equal(a.status, 400, name);
    assert.match(errorOf(a).message, re);
  }
  const short = await f.admin('POST', '/users', { name: 'frank', role: 'viewer', password: 'short' });
  assert.match(errorOf(short).message, /password is too short/);
  const badRole = await f.admin('POST', '/users', { name: 'frank', role: 'root', password: 'long enough' });
  assert.equal(badRole.status, 400);
  await f.addUser('frank', 'viewer');
  assert.equal(
    (await f.admin('POST', '/users', { name: 'frank', role: 'viewer', password: 'long enough' })).status,
    409,
  );
  const list = await f.admin('GET', '/users');
  assert.deepEqual(Object.keys((list.body as object[])[0]!).sort(), [
    'createdAt',
    'name',
    'role',
    'updatedAt',
  ]);
  assert.ok(!JSON.stringify(list.body).includes('scrypt'));

  // A user changes their own password with the current one; their other sessions end.
  const one = await signIn(f.d.url, 'frank', 'frank-password');
  const two = await signIn(f.d.url, 'frank', 'frank-password');
  const without = await one.call('PUT', '/users/frank/password', { password: 'a new password' });
  assert.equal(without.status, 400);
  assert.match(errorOf(without).message, /current password/);
  const wrong = await one.call('PUT', '/users/frank/password', {
    password: 'a new password',
    currentPassword: 'nope',
  });
  assert.equal(wrong.status, 403);
  const changed = await one.call('PUT', '/users/frank/password', {
    password: 'a new password',
    currentPassword: 'frank-password',
  });
  assert.equal(changed.status, 200, JSON.stringify(changed.body));
  assert.equal((await one.call('GET', '/site')).status, 200, 'the session that changed it goes on');
  assert.equal((await two.call('GET', '/site')).status, 401, 'the other one ended');
  assert.equal(
    (await f.anonymous('POST', '/session', { user: 'frank', password: 'frank-password' })).status,
    401,
  );
  await signIn(f.d.url, 'frank', 'a new password');
  // Not another's, unless admin (who needs no current password).
  await f.addUser('gina', 'operator');
  assert.equal(
    (
      await one.call('PUT', '/users/gina/password', {
        password: 'x'.repeat(9),
        currentPassword: 'a new password',
      })
    ).status,
    403,
  );
  assert.equal((await f.admin('PUT', '/users/frank/password', { password: 'admin set this' })).status, 200);
  assert.equal((await one.call('GET', '/site')).status, 401, "an admin's change ends every session");

  // Deleting a user ends their sessions and tokens.
  const g = await signIn(f.d.url, 'gina', 'gina-password');
  const tok = ((await g.call('POST', '/users/gina/tokens')).body as { token: string }).token;
  assert.equal((await f.admin('DELETE', '/users/gina')).status, 204);
  assert.equal((await g.call('GET', '/site')).status, 401);
  assert.equal((await bearer(f.d.url, tok)('GET', '/site')).status, 401);
  assert.equal((await f.admin('DELETE', '/users/gina')).status, 404);
  const audit = (await f.admin('GET', '/events?target=gina')).body as SiteEvent[];
  assert.deepEqual(
    audit.filter((e) => e.outcome === 'ok').map((e) => `${e.action} ${e.actor}`),
    [
      'user.delete admin@127.0.0.1',
      'user.token.create gina@127.0.0.1',
      'user.sign-in gina@127.0.0.1',
      'user.create admin@127.0.0.1',
    ],
  );
});
