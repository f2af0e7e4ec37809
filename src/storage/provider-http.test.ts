// The storage provider contract: its OpenAPI document is valid and covers exactly what the HTTP
// client calls; the client checks what a provider answers, keeps error codes, never shows the
// token; Haven's own pools implement the same contract in process.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { inspect } from 'node:util';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import SwaggerParser from '@apidevtools/swagger-parser';
import { tempDir } from '../../test/support/tmp.js';
import { HavenError } from '../common/index.js';
import { HttpProvider } from './provider-http.js';
import {
  STORAGE_PROVIDER_API_VERSION,
  speaksProviderApi,
  type ProviderDescription,
  type StorageProvider,
} from './provider.js';
import { ProviderPool } from './provider-pool.js';
import { StorageService } from './service.js';

const DOC = fileURLToPath(new URL('../../../docs/provider-api.yaml', import.meta.url));
const TOKEN = 'secret-token-7f3a';
const MiB = 1024 * 1024;

type Handler = (req: IncomingMessage, body: Record<string, unknown> | undefined) => [number, unknown?];

/** An HTTP server answering with `handler`, recording every request. */
async function provider(
  t: { after: (fn: () => unknown) => void },
  handler: Handler,
): Promise<{ url: string; calls: { method: string; path: string; auth?: string }[] }> {
  const calls: { method: string; path: string; auth?: string }[] = [];
  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    let raw = '';
    req.on('data', (c: Buffer) => (raw += c.toString()));
    req.on('end', () => {
      calls.push({
        method: req.method!,
        path: req.url!,
        ...(req.headers.authorization ? { auth: req.headers.authorization } : {}),
      });
      const [status, body] = handler(req, raw ? (JSON.parse(raw) as Record<string, unknown>) : undefined);
      res.writeHead(status, body === undefined ? {} : { 'content-type': 'application/json' });
      res.end(body === undefined ? undefined : JSON.stringify(body));
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.after(() => new Promise<void>((r) => server.close(() => r())));
  return { url: `http://127.0.0.1:${(server.address() as { port: number }).port}/`, calls };
}

const description = {
  apiVersion: '1.3',
  vendor: 'Acme',
  capabilities: { thin: true, snapshots: true, tier: 'gold', dedup: true, encryption: false },
  capacity: { capacityBytes: 100 * MiB, allocatedBytes: 8 * MiB, freeBytes: 92 * MiB },
  health: { state: 'ok' },
};
const volume = { name: 'v', sizeBytes: 8 * MiB };
const snapshot = { name: 's', volume: 'v', sizeBytes: 8 * MiB };

/** A conforming provider: a well-formed answer to every call of the contract. */
const conforming: Handler = (req) => {
  const path = req.url!;
  if (path === '/v1/provider') return [200, description];
  if (req.method === 'GET' && path === '/v1/volumes') return [200, [volume]];
  if (req.method === 'POST' && path === '/v1/volumes') return [201, volume];
  if (req.method === 'GET' && path.endsWith('/snapshots')) return [200, [snapshot]];
  if (req.method === 'POST' && path.endsWith('/snapshots')) return [201, snapshot];
  if (path.endsWith('/clone')) return [201, { name: 'c', sizeBytes: 8 * MiB, origin: 'v@s' }];
  if (path.endsWith('/resize')) return [200, { name: 'v', sizeBytes: 16 * MiB }];
  if (path.endsWith('/access')) return [200, { uri: 'nbd+unix:///v?socket=/run/x.sock' }];
  if (req.method === 'DELETE') return [204];
  return [404, { code: 'NOT_FOUND', message: 'no such route' }];
};

test('the OpenAPI document is valid OpenAPI 3 and holds exactly the calls the HTTP client makes', async (t) => {
  const doc = (await SwaggerParser.validate(DOC)) as unknown as {
    openapi: string;
    info: { version: string };
    paths: Record<string, Record<string, unknown>>;
  };
  assert.match(doc.openapi, /^3\./);
  assert.equal(doc.info.version, STORAGE_PROVIDER_API_VERSION, 'the document is of the version Haven speaks');

  const p = await provider(t, conforming);
  const client = new HttpProvider(p.url, TOKEN);
  const d = await client.describe();
  assert.deepEqual(
    d.capabilities,
    { thin: true, snapshots: true, tier: 'gold', dedup: true },
    'false is not offered',
  );
  assert.equal(d.apiVersion, '1.3', 'any 1.x is spoken');
  assert.deepEqual(await client.listVolumes(), [volume]);
  assert.deepEqual(await client.createVolume('v', 8 * MiB), volume);
  assert.equal((await client.resizeVolume('v', 16 * MiB)).sizeBytes, 16 * MiB);
  assert.deepEqual(await client.listSnapshots('v'), [snapshot]);
  assert.deepEqual(await client.createSnapshot('v', 's'), snapshot);
  assert.equal((await client.clone('v', 's', 'c')).origin, 'v@s');
  assert.equal((await client.access('v', { snapshot: 's' })).uri, 'nbd+unix:///v?socket=/run/x.sock');
  await client.deleteSnapshot('v', 's');
  await client.deleteVolume('v');

  // Every request is an operation of the document, and every operation was requested.
  const ops = Object.entries(doc.paths).flatMap(([path, item]) =>
    Object.keys(item)
      .filter((m) => ['get', 'post', 'put', 'delete', 'patch'].includes(m))
      .map((m) => ({
        method: m.toUpperCase(),
        re: new RegExp(`^${path.replace(/\{[^}]+\}/g, '[^/]+')}$`),
        path,
      })),
  );
  const used = new Set<string>();
  for (const c of p.calls) {
    const op = ops.find((o) => o.method === c.method && o.re.test(c.path));
    assert.ok(op, `${c.method} ${c.path} is in the document`);
    used.add(`${op.method} ${op.path}`);
    assert.equal(c.auth, `Bearer ${TOKEN}`, 'the token goes as a bearer token');
  }
  assert.deepEqual(
    [...used].sort(),
    ops.map((o) => `${o.method} ${o.path}`).sort(),
    'every operation is one Haven calls',
  );

  assert.ok(
    !JSON.stringify(client).includes(TOKEN) && !inspect(client).includes(TOKEN),
    'the token is not shown',
  );
});

test('the HTTP client: errors keep their code, bad answers are PROTOCOL, the token never in a message', async (t) => {
  let answer: [number, unknown?] = [200, description];
  const p = await provider(t, () => answer);
  const client = new HttpProvider(p.url, TOKEN);
  const fails = async (fn: () => Promise<unknown>, code: string, re: RegExp) => {
    const err = await fn().then(
      () => assert.fail('should have failed'),
      (e: unknown) => e as HavenError,
    );
    assert.equal(err.code, code, err.message);
    assert.match(err.message, re);
    assert.ok(!err.message.includes(TOKEN));
  };
  answer = [404, { code: 'NOT_FOUND', message: 'no volume x on the array' }];
  await fails(
    () => client.deleteVolume('x'),
    'NOT_FOUND',
    /DELETE \/v1\/volumes\/x: no volume x on the array/,
  );
  answer = [507, {}];
  await fails(() => client.createVolume('x', MiB), 'NO_SPACE', /HTTP 507/);
  answer = [401, { message: 'nope' }];
  await fails(() => client.describe(), 'UNAUTHENTICATED', /refused Haven's token \(HTTP 401\)/);
  answer = [200, { ...description, apiVersion: '2.0' }];
  await fails(() => client.describe(), 'UNSUPPORTED', /speaks API version "2\.0"; this Haven speaks 1\.0/);
  answer = [200, { ...description, capacity: { capacityBytes: -1, allocatedBytes: 0, freeBytes: 0 } }];
  await fails(() => client.describe(), 'PROTOCOL', /capacity\.capacityBytes is -1, not a number of bytes/);
  answer = [200, { uri: 'http://elsewhere/disk' }];
  await fails(() => client.access('v'), 'PROTOCOL', /is not an nbd:\/\//);
  answer = [200, { sizeBytes: 1 }];
  await fails(() => client.createVolume('v', 1), 'PROTOCOL', /a volume has no name/);
  const closed = createServer();
  await new Promise<void>((r) => closed.listen(0, '127.0.0.1', r));
  const port = (closed.address() as { port: number }).port;
  await new Promise<void>((r) => closed.close(() => r())); // nobody listens there now
  const gone = new HttpProvider(`http://127.0.0.1:${port}`, TOKEN);
  await fails(() => gone.describe(), 'IO', /cannot reach the provider \(ECONNREFUSED\)/);
  assert.throws(() => new HttpProvider('http://u:p@host', TOKEN), /must not hold credentials/);
  assert.throws(() => new HttpProvider('http://host', ' \n'), /token is empty/);
  assert.ok(
    speaksProviderApi('1.12') &&
      !speaksProviderApi('1') &&
      !speaksProviderApi('2.0') &&
      !speaksProviderApi(1),
  );
});

test("Haven's own pools implement the contract in process", async (t) => {
  const dir = tempDir();
  const svc = StorageService.open(join(dir.path, 'data'));
  t.after(() => {
    svc.close();
    dir.cleanup();
  });
  svc.createPool('fast', { tier: 'fast' });
  svc.createPool('other');
  svc.setLocalAccess((target) => `nbd+unix:///${target}?socket=/run/site.sock`);
  const p = svc.provider('fast');
  const d = await p.describe();
  assert.equal(d.apiVersion, STORAGE_PROVIDER_API_VERSION);
  assert.deepEqual(d.capabilities, { tier: 'fast', thin: true, snapshots: true, clones: true });
  assert.deepEqual(svc.capabilitiesOf('fast'), d.capabilities);
  assert.equal((await p.createVolume('v', 4 * MiB)).sizeBytes, 4 * MiB);
  assert.equal(svc.volume('v').pool, 'fast');
  assert.equal((await p.createSnapshot('v', 's')).volume, 'v');
  assert.deepEqual(
    (await p.listSnapshots('v')).map((s) => s.name),
    ['s'],
  );
  assert.equal((await p.clone('v', 's', 'c')).origin, 'v@s');
  assert.equal((await p.access('v', { snapshot: 's' })).uri, 'nbd+unix:///v@s?socket=/run/site.sock');
  svc.createVolume('elsewhere', MiB, 'other');
  await assert.rejects(() => p.deleteVolume('elsewhere'), /volume elsewhere is not in pool fast/);
  await p.deleteVolume('c');
  assert.deepEqual(
    (await p.listVolumes()).map((v) => v.name),
    ['v'],
  );
});

test("a provider pool in the storage service: Haven's own volume wins a name, a refresh during a change keeps it", async (t) => {
  const dir = tempDir();
  const svc = StorageService.open(join(dir.path, 'data'));
  t.after(() => {
    svc.close();
    dir.cleanup();
  });
  svc.createPool('local');
  svc.createVolume('disk', MiB, 'local');
  const held = new Map<string, number>([['disk', MiB]]); // the provider has a "disk" too
  let release: (() => void) | undefined;
  const fake: StorageProvider = {
    describe: async () => ({ ...description, apiVersion: '1.0' }) as ProviderDescription,
    listVolumes: async () => {
      const list = [...held].map(([name, sizeBytes]) => ({ name, sizeBytes }));
      if (release === undefined) return list;
      await new Promise<void>((r) => (release = r)); // held until the test lets it go
      return list;
    },
    createVolume: async (name, sizeBytes) => (held.set(name, sizeBytes), { name, sizeBytes }),
    deleteVolume: async (name) => void held.delete(name),
    resizeVolume: async (name, sizeBytes) => ({ name, sizeBytes }),
    listSnapshots: async () => [],
    createSnapshot: async (volume, name) => ({ name, volume, sizeBytes: held.get(volume)! }),
    deleteSnapshot: async () => undefined,
    clone: async (_v, _s, name) => ({ name, sizeBytes: MiB }),
    access: async () => ({ uri: 'nbd+unix:///x?socket=/nonexistent' }),
  };
  const pool = new ProviderPool('acme', fake, 'http://acme', new Date().toISOString());
  await pool.refresh();
  assert.throws(
    () => svc.addProviderPool(pool),
    /holds a volume disk, and this site has one of that name already/,
  );
  held.delete('disk');
  await pool.refresh();
  svc.addProviderPool(pool);
  held.set('disk', MiB); // made behind Haven's back, under a name the site uses
  await pool.refresh();
  assert.equal(svc.volume('disk').pool, 'local', "Haven's own volume keeps its name");
  assert.deepEqual(
    svc.listVolumes().map((v) => `${v.pool}/${v.name}`),
    ['local/disk'],
  );
  // A refresh that listed the volumes before a create answered does not forget the new volume.
  release = () => undefined;
  const slow = pool.refresh();
  await new Promise((r) => setImmediate(r));
  await svc.provisionVolume('v', 2 * MiB, 'acme');
  release();
  await slow;
  assert.equal(svc.volume('v').pool, 'acme');
  assert.match(svc.poolInfo('acme').provider!.url, /acme/);
  assert.throws(() => svc.pool('acme'), /pool acme is served by the storage provider at http:\/\/acme/);
  assert.throws(
    () => svc.addBitmap('v', 'b'),
    /volume v is on pool acme, served by the storage provider at http:\/\/acme/,
  );
  await svc.removeVolume('v');
  assert.ok(!held.has('v'));
  svc.removeProviderPool('acme');
});
