// The REST API in-process: buildApi on a real Site (temp data dir, no NBD TCP listener), driven
// with fastify's inject(). Authentication, validation errors naming the field, HavenError codes
// mapped to statuses, the OpenAPI document, and the request timeout reaching the HTTP server.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import SwaggerParser from '@apidevtools/swagger-parser';
import type { FastifyInstance } from 'fastify';
import { Site } from '../orchestration/index.js';
import { tempDir } from '../../test/support/tmp.js';
import { API_PREFIX } from './client.js';
import { buildApi } from './server.js';

async function api(
  t: { after: (fn: () => unknown) => void },
  opts: Parameters<typeof buildApi>[1] = {},
): Promise<{ app: FastifyInstance; auth: { authorization: string } }> {
  const tmp = tempDir();
  const site = await Site.open({ dataDir: join(tmp.path, 'data'), name: 'unit', nbdListen: 'none' });
  const app = await buildApi(site, opts);
  // In this order: node:test runs after-hooks first to last.
  t.after(async () => {
    await app.close();
    await site.close();
    tmp.cleanup();
  });
  return { app, auth: { authorization: `Bearer ${site.apiToken()}` } };
}

test('every API path wants the bearer token: none or a wrong one is 401 with a challenge', async (t) => {
  const { app, auth } = await api(t);
  const none = await app.inject({ method: 'GET', url: `${API_PREFIX}/pools` });
  assert.equal(none.statusCode, 401);
  assert.equal(none.headers['www-authenticate'], 'Bearer realm="haven"');
  assert.match(none.json().error.message, /an API token is required \(Authorization: Bearer <token>\)/);
  for (const authorization of ['Bearer wrong', `Basic ${auth.authorization.slice(7)}`, 'Bearer']) {
    const r = await app.inject({ method: 'GET', url: `${API_PREFIX}/pools`, headers: { authorization } });
    assert.equal(r.statusCode, 401, authorization);
    assert.equal(r.json().error.code, 'UNAUTHENTICATED');
  }
  // Unknown paths and the OpenAPI document are behind it too.
  assert.equal((await app.inject({ method: 'GET', url: `${API_PREFIX}/nope` })).statusCode, 401);
  assert.equal((await app.inject({ method: 'GET', url: `${API_PREFIX}/openapi.json` })).statusCode, 401);
  const ok = await app.inject({ method: 'GET', url: `${API_PREFIX}/pools`, headers: auth });
  assert.equal(ok.statusCode, 200);
  assert.deepEqual(
    (ok.json() as { name: string }[]).map((p) => p.name),
    ['default'],
  );
});

test('validation errors are 400 naming the field; not found is 404; a duplicate is 409', async (t) => {
  const { app, auth } = await api(t);
  const post = (url: string, payload: unknown) =>
    app.inject({ method: 'POST', url: `${API_PREFIX}${url}`, headers: auth, payload: payload as object });

  const missing = await post('/volumes', { name: 'v1' });
  assert.equal(missing.statusCode, 400);
  assert.deepEqual(missing.json().error, {
    code: 'INVALID_ARGUMENT',
    message: 'missing field body.sizeBytes',
    field: 'body.sizeBytes',
  });
  const unknown = await post('/volumes', { name: 'v1', sizeBytes: 1048576, colour: 'red' });
  assert.equal(unknown.statusCode, 400);
  assert.equal(unknown.json().error.field, 'body.colour');
  const wrongType = await post('/volumes', { name: 'v1', sizeBytes: '1M' });
  assert.equal(wrongType.statusCode, 400);
  assert.equal(wrongType.json().error.field, 'body.sizeBytes');
  const badJson = await app.inject({
    method: 'POST',
    url: `${API_PREFIX}/volumes`,
    headers: { ...auth, 'content-type': 'application/json' },
    payload: '{"name":',
  });
  assert.equal(badJson.statusCode, 400);
  assert.equal(badJson.json().error.code, 'INVALID_ARGUMENT');

  const made = await post('/volumes', { name: 'v1', sizeBytes: 1048576 });
  assert.equal(made.statusCode, 201, made.body);
  assert.equal(made.json().name, 'v1');
  const again = await post('/volumes', { name: 'v1', sizeBytes: 1048576 });
  assert.equal(again.statusCode, 409, again.body);
  assert.equal(again.json().error.code, 'CONFLICT');
  assert.match(again.json().error.message, /v1/);

  const absent = await app.inject({ method: 'GET', url: `${API_PREFIX}/volumes/nosuch`, headers: auth });
  assert.equal(absent.statusCode, 404);
  assert.equal(absent.json().error.code, 'NOT_FOUND');
  assert.match(absent.json().error.message, /nosuch/);
  const noPath = await app.inject({ method: 'GET', url: `${API_PREFIX}/nope`, headers: auth });
  assert.equal(noPath.statusCode, 404);
  assert.match(noPath.json().error.message, /no such API path: GET \/api\/v1\/nope/);

  const gone = await app.inject({ method: 'DELETE', url: `${API_PREFIX}/volumes/v1`, headers: auth });
  assert.equal(gone.statusCode, 204);
  assert.equal(
    (await app.inject({ method: 'GET', url: `${API_PREFIX}/volumes/v1`, headers: auth })).statusCode,
    404,
  );
});

test('the OpenAPI document is valid OpenAPI 3 and lists the routes', async (t) => {
  const { app, auth } = await api(t);
  const r = await app.inject({ method: 'GET', url: `${API_PREFIX}/openapi.json`, headers: auth });
  assert.equal(r.statusCode, 200);
  const doc = r.json() as { openapi: string; paths: Record<string, unknown> };
  assert.equal(doc.openapi, '3.0.3');
  await SwaggerParser.validate(structuredClone(doc) as never);
  for (const p of [`${API_PREFIX}/pools`, `${API_PREFIX}/volumes`, `${API_PREFIX}/volumes/{name}`])
    assert.ok(p in doc.paths, `${p} in the document`);
  assert.ok(!(`${API_PREFIX}/openapi.json` in doc.paths), 'the document hides itself');
});

test('the request timeout reaches the HTTP server, its header bound never longer', async (t) => {
  const short = await api(t, { requestTimeoutMs: 2_000 });
  await short.app.ready();
  assert.equal(short.app.server.requestTimeout, 2_000);
  assert.equal(short.app.server.headersTimeout, 2_000);
  const dflt = await api(t);
  await dflt.app.ready();
  assert.equal(dflt.app.server.requestTimeout, 30_000);
  assert.equal(dflt.app.server.headersTimeout, 10_000);
});
