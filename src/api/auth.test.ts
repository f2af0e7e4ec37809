// The API's authentication face in-process (inject): the session cookie is Secure when the API
// runs with TLS, and paths outside /api and /metrics (the console's files) are left to others.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { Site } from '../orchestration/index.js';
import { tempDir } from '../../test/support/tmp.js';
import { makeTestPki } from '../../test/support/tls.js';
import { API_PREFIX } from './client.js';
import { buildApi } from './server.js';

async function api(t: { after: (fn: () => unknown) => void }, tls: boolean) {
  const tmp = tempDir();
  const site = await Site.open({ dataDir: join(tmp.path, 'data'), name: 'unit', nbdListen: 'none' });
  const pki = tls ? makeTestPki(tmp.path) : undefined;
  const app = await buildApi(site, pki ? { tls: { cert: pki.serverCert, key: pki.serverKey } } : {});
  t.after(async () => {
    await app.close();
    await site.close();
    tmp.cleanup();
  });
  const auth = { authorization: `Bearer ${site.apiToken()}` };
  const add = await app.inject({
    method: 'POST',
    url: `${API_PREFIX}/users`,
    headers: auth,
    payload: { name: 'tess', role: 'viewer', password: 'tess-password' },
  });
  assert.equal(add.statusCode, 201, add.body);
  return app;
}

const signIn = {
  method: 'POST' as const,
  url: `${API_PREFIX}/session`,
  payload: { user: 'tess', password: 'tess-password' },
};

test('with TLS the session cookie is Secure; without, not', async (t) => {
  const over = await (await api(t, true)).inject(signIn);
  assert.equal(over.statusCode, 200, over.body);
  assert.match(String(over.headers['set-cookie']), /; HttpOnly; SameSite=Strict; Path=\/; Secure$/);
  const plain = await (await api(t, false)).inject(signIn);
  assert.doesNotMatch(String(plain.headers['set-cookie']), /Secure/);
});

test('only /api and /metrics ask for credentials: other paths are the console’s', async (t) => {
  const app = await api(t, false);
  // The console's page (dist/console/, built with the daemon) for any of its paths, to anyone.
  for (const url of ['/', '/vms/demo', '/jobs']) {
    const a = await app.inject({ method: 'GET', url });
    assert.equal(a.statusCode, 200, url);
    assert.match(String(a.headers['content-type']), /^text\/html/, url);
    assert.match(String(a.headers['content-security-policy']), /default-src 'self'/, url);
  }
  assert.equal((await app.inject({ method: 'GET', url: '/assets/no-such.js' })).statusCode, 404);
  for (const url of ['/api', '/api/v2/x', `${API_PREFIX}/nope`, '/metrics'])
    assert.equal((await app.inject({ method: 'GET', url })).statusCode, 401, url);
});
