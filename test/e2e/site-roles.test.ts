// Roles, route by route, from the API's own OpenAPI document: every operation it lists is called
// over real HTTP by a viewer, an operator and an admin (console sessions, with their CSRF
// tokens) and by nobody. Each call must be refused exactly when the role may not do it. The
// routes come from the document, not from a list here: a route added later is tested too.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { startSiteDaemon } from '../../src/api/index.js';
import { ROUTE_RULES } from '../../src/orchestration/index.js';
import { tempDir } from '../support/tmp.js';
import { bearer, caller, errorOf, signIn, type Answer } from '../support/console-client.js';

interface Operation {
  'x-haven-role'?: string;
  requestBody?: unknown;
}
type Doc = { paths: Record<string, Record<string, Operation>> };

const denied = (a: Answer) => a.status === 401 || a.status === 403;

/**
 * What this test holds to whatever the role table says: these are admin-only (user management,
 * pairing, what points the daemon at a secret file), these are a user's own or an admin's, and
 * only the session's own routes are public.
 */
const MUST_BE_ADMIN = [
  'POST /users',
  'DELETE /users/{name}',
  'PUT /users/{name}/role',
  'POST /peers',
  'POST /peers/accept',
  'POST /peers/tokens',
  'DELETE /peers/{name}',
  'POST /pools/register',
  'POST /alerts/channels',
];
const SELF = [
  'PUT /users/{name}/password',
  'GET /users/{name}/tokens',
  'POST /users/{name}/tokens',
  'DELETE /users/{name}/tokens/{id}',
];
const PUBLIC = ['DELETE /session', 'GET /session', 'POST /session'];

test('every route of the OpenAPI document, for every role: viewers read, operators operate, admins administer', async (t) => {
  const dir = tempDir();
  const d = await startSiteDaemon(
    { dataDir: dir.path, name: 'roles', nbdListen: 'none' },
    { host: '127.0.0.1', port: 0 },
  );
  t.after(async () => {
    await d.stop();
    dir.cleanup();
  });
  const site = bearer(d.url, readFileSync(join(dir.path, 'api-token'), 'utf8').trim());
  for (const [name, role] of [
    ['vera', 'viewer'],
    ['otto', 'operator'],
    ['ada', 'admin'],
  ])
    assert.equal((await site('POST', '/users', { name, role, password: `${name}-password` })).status, 201);
  const as = {
    viewer: (await signIn(d.url, 'vera', 'vera-password')).call,
    operator: (await signIn(d.url, 'otto', 'otto-password')).call,
    admin: (await signIn(d.url, 'ada', 'ada-password')).call,
    nobody: caller(d.url),
  };

  const doc = (await as.viewer('GET', '/openapi.json')).body as Doc;
  const ops: { key: string; method: string; path: string; role: string; body: boolean }[] = [];
  for (const [path, methods] of Object.entries(doc.paths))
    for (const [method, op] of Object.entries(methods)) {
      const key = `${method.toUpperCase()} ${path.replace(/^\/api\/v1/, '')}`;
      assert.ok(op['x-haven-role'], `${key} says what it asks of its caller (x-haven-role)`);
      ops.push({
        key,
        method: method.toUpperCase(),
        // Every parameter names nothing there is: a foreign user, for a user's own routes.
        path: path.replace(/\{[^}]+\}/g, 'zz-none'),
        role: op['x-haven-role']!,
        body: op.requestBody !== undefined,
      });
    }
  assert.ok(ops.length > 100, `the document lists ${ops.length} operations`);
  const byRole = (r: string) =>
    ops
      .filter((o) => o.role === r)
      .map((o) => o.key)
      .sort();
  assert.deepEqual(byRole('public'), PUBLIC);
  assert.deepEqual(byRole('self'), [...SELF].sort());
  for (const k of MUST_BE_ADMIN) assert.ok(byRole('admin').includes(k), `${k} is admin-only`);
  assert.ok(
    ops.every((o) => o.method === 'GET' || ['operator', 'admin', 'self', 'public'].includes(o.role)),
    'no change is left to viewers',
  );
  // The table names no route that is gone.
  const keys = new Set(ops.map((o) => o.key));
  for (const rule of Object.keys(ROUTE_RULES))
    assert.ok(keys.has(rule.replace(/:(\w+)/g, '{$1}')), `the role table's ${rule} is a route`);

  let checked = 0;
  for (const op of ops.filter((o) => o.role !== 'public')) {
    const call = (who: keyof typeof as) =>
      as[who](op.method, op.path.replace(/^\/api\/v1/, ''), op.body ? {} : undefined);
    const what = (who: string, a: Answer) =>
      `${who} ${op.key} (${op.role}): ${a.status} ${JSON.stringify(a.body)}`;

    const nobody = await call('nobody');
    assert.equal(nobody.status, 401, what('nobody', nobody));

    const viewer = await call('viewer');
    if (op.method === 'GET' && op.role === 'viewer') assert.ok(!denied(viewer), what('viewer', viewer));
    else {
      assert.equal(viewer.status, 403, what('viewer', viewer));
      assert.equal(errorOf(viewer).code, 'PERMISSION_DENIED');
      assert.match(
        errorOf(viewer).message,
        op.role === 'self'
          ? /only an admin or user zz-none may do this; user vera is viewer/
          : new RegExp(`this needs the ${op.role} role; user vera is viewer`),
        what('viewer', viewer),
      );
    }

    const operator = await call('operator');
    if (op.role === 'admin' || op.role === 'self') {
      assert.equal(operator.status, 403, what('operator', operator));
      assert.equal(errorOf(operator).code, 'PERMISSION_DENIED');
    } else assert.ok(!denied(operator), what('operator', operator));

    const admin = await call('admin');
    assert.ok(!denied(admin), what('admin', admin));
    checked++;
  }
  assert.equal(checked, ops.length - PUBLIC.length);

  // Beside the document: HEAD follows GET, and /metrics is a read.
  assert.equal((await as.viewer('HEAD', '/site')).status, 200);
  const metrics = async (headers: Record<string, string>) =>
    (await fetch(`${d.url}/metrics`, { headers })).status;
  const viewerToken = ((await site('POST', '/users/vera/tokens')).body as { token: string }).token;
  assert.equal(await metrics({ authorization: `Bearer ${viewerToken}` }), 200);
  assert.equal(await metrics({}), 401);
});
