// The local site's API (--data) compiles each route's schemas on first use and keeps the generated
// code in a per-user cache: its answers and refusals must be the daemon's, byte for byte, whether
// the code was just compiled or loaded from the cache; the cache runs only its user's own files;
// and with a filled cache a command loads neither Ajv nor fast-json-stringify. Real Site on a temp
// data directory, fastify's inject(); the last test runs a child process (a fresh module cache).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chmodSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Site } from '../orchestration/index.js';
import { tempDir } from '../../test/support/tmp.js';
import { API_PREFIX } from './client.js';
import { schemaCodeCache, type SchemaCodeCache } from './schema-code-cache.js';
import { buildApi } from './server.js';

const requests = [
  { method: 'GET', url: '/pools' },
  { method: 'GET', url: '/volumes' },
  { method: 'GET', url: '/volumes?pool=default' },
  { method: 'GET', url: '/volumes?colour=red' },
  { method: 'POST', url: '/volumes', payload: { name: 'v', sizeBytes: 1048576, colour: 'red' } },
  { method: 'POST', url: '/volumes', payload: { name: 'v' } },
  { method: 'POST', url: '/volumes', payload: { name: '-bad', sizeBytes: 1048576 } },
  { method: 'POST', url: '/volumes', payload: { name: 'v', sizeBytes: 'big' } },
  { method: 'POST', url: '/pools', payload: { name: 'p', capacityBytes: 0 } },
  { method: 'GET', url: '/jobs/nope' },
] as const;

test('a lazily compiled API answers and refuses as the daemon does, compiled now or loaded from the cache', async (t) => {
  const tmp = tempDir();
  const site = await Site.open({ dataDir: join(tmp.path, 'data'), name: 'unit', nbdListen: 'none' });
  t.after(async () => {
    await site.close();
    tmp.cleanup();
  });
  const auth = { authorization: `Bearer ${site.apiToken()}` };
  let hits = 0;
  const inner = schemaCodeCache(join(tmp.path, 'cache'));
  const counting: SchemaCodeCache = {
    get: (k) => {
      const code = inner.get(k);
      if (code !== undefined) hits++;
      return code;
    },
    put: (k, code) => inner.put(k, code),
  };
  const answers = async (opts: Parameters<typeof buildApi>[1]) => {
    const app = await buildApi(site, opts);
    try {
      const out: string[] = [];
      for (const r of requests) {
        const res = await app.inject({ ...r, url: `${API_PREFIX}${r.url}`, headers: auth });
        // Free space moves with whatever else writes to the file system meanwhile.
        const body = res.body.replace(/"(capacityBytes|freeBytes)":\d+/g, '"$1":N');
        out.push(`${r.method} ${r.url} → ${res.statusCode} ${body}`);
      }
      return out;
    } finally {
      await app.close();
    }
  };
  const daemon = await answers({});
  assert.ok(daemon.some((a) => a.includes('→ 400') && a.includes('unknown field body.colour')));
  assert.deepEqual(await answers({ lazySchemas: true }), daemon, 'compiled on first use, no cache');
  assert.deepEqual(await answers({ lazySchemas: counting, openapi: false }), daemon, 'compiled, then stored');
  assert.equal(hits, 0);
  assert.ok(readdirSync(join(tmp.path, 'cache')).length >= 5, 'validators and serializers were stored');
  assert.deepEqual(await answers({ lazySchemas: counting, openapi: false }), daemon, 'loaded from the cache');
  assert.ok(hits >= 5, `the second build used the stored code (${hits} hits)`);
});

test("the schema code cache runs only its user's files that nobody else may write", (t) => {
  const tmp = tempDir();
  t.after(tmp.cleanup);
  const dir = join(tmp.path, 'cache');
  const cache = schemaCodeCache(dir);
  assert.equal(cache.get('k'), undefined);
  cache.put('k', 'module.exports = 1');
  assert.equal(cache.get('k'), 'module.exports = 1');
  chmodSync(join(dir, 'k.cjs'), 0o666);
  assert.equal(cache.get('k'), undefined, 'a world-writable entry is not run');
  chmodSync(join(dir, 'k.cjs'), 0o620);
  assert.equal(cache.get('k'), undefined, 'a group-writable entry is not run');
  // A cache where nothing can be written costs a compile, never a failure.
  writeFileSync(join(tmp.path, 'file'), '');
  schemaCodeCache(join(tmp.path, 'file', 'sub')).put('k', 'x');
});

test('with its cache filled, a local site serves a command without loading Ajv or fast-json-stringify', (t) => {
  const tmp = tempDir();
  t.after(tmp.cleanup);
  const local = fileURLToPath(new URL('./local.js', import.meta.url));
  const script = `
    import { createRequire } from 'node:module';
    const { openLocalSite } = await import(${JSON.stringify(local)});
    const s = await openLocalSite(${JSON.stringify(join(tmp.path, 'data'))});
    try {
      await s.client.get('/pools');
      await s.client.post('/volumes', { name: 'v' + process.pid, sizeBytes: 1048576 }).catch(() => {});
    } finally {
      await s.close();
    }
    const loaded = Object.keys(createRequire(import.meta.url).cache);
    console.log(JSON.stringify(loaded.filter((f) => /[/](ajv[/]dist[/]ajv|fast-json-stringify[/]index)[.]js$/.test(f))));
  `;
  const env = { ...process.env, XDG_CACHE_HOME: join(tmp.path, 'cache'), HAVEN_LOG_LEVEL: 'warn' };
  const run = () => {
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { env, encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    return JSON.parse(r.stdout.trim()) as string[];
  };
  assert.ok(run().length > 0, 'the first command compiles (and fills the cache)');
  // (The generated serializers need fast-json-stringify's small runtime, lib/serializer.js.)
  assert.deepEqual(run(), [], 'the next one loads the stored code only');
});
