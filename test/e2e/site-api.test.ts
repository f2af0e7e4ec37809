// The site daemon's REST API over real HTTP: token authentication, validation errors that name
// the field, 404s, 409s for conflicting operations (with a real QEMU VM), the OpenAPI document
// validated by an independent parser, and two sites side by side on one machine.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import SwaggerParser from '@apidevtools/swagger-parser';
import { startSiteDaemon, type SiteDaemon } from '../../src/api/index.js';
import { tempDir } from '../support/tmp.js';
import { ensureGuest } from '../support/guest.js';

interface Answer {
  status: number;
  body: unknown;
  headers: Headers;
}

function caller(d: SiteDaemon, token: string | undefined) {
  return async (method: string, path: string, body?: unknown, raw?: string): Promise<Answer> => {
    const res = await fetch(`${d.url}/api/v1${path}`, {
      method,
      headers: {
        ...(token !== undefined ? { authorization: `Bearer ${token}` } : {}),
        ...(body !== undefined || raw !== undefined ? { 'content-type': 'application/json' } : {}),
      },
      ...(raw !== undefined ? { body: raw } : body !== undefined ? { body: JSON.stringify(body) } : {}),
    });
    const text = await res.text();
    let parsed: unknown = text;
    try {
      parsed = JSON.parse(text);
    } catch {
      // text answers (console log) stay text
    }
    return { status: res.status, body: parsed, headers: res.headers };
  };
}

const err = (a: Answer) => (a.body as { error: { code: string; message: string; field?: string } }).error;

async function daemon(t: { after: (fn: () => unknown) => void }, name: string) {
  const dir = tempDir();
  const d = await startSiteDaemon(
    { dataDir: dir.path, name, nbdListen: '127.0.0.1:0' },
    { host: '127.0.0.1', port: 0 },
  );
  t.after(async () => {
    await d.stop();
    dir.cleanup();
  });
  const token = readFileSync(join(dir.path, 'api-token'), 'utf8').trim();
  return { d, dir: dir.path, token, api: caller(d, token) };
}

test('authentication: no token or a wrong one is 401 on every path; the token file is private', async (t) => {
  const { d, dir, api } = await daemon(t, 'auth-site');
  assert.equal(statSync(join(dir, 'api-token')).mode & 0o777, 0o600);
  for (const path of ['/site', '/vms', '/openapi.json', '/no-such-thing']) {
    const none = await caller(d, undefined)('GET', path);
    assert.equal(none.status, 401, path);
    assert.equal(err(none).code, 'UNAUTHENTICATED');
    assert.match(none.headers.get('www-authenticate') ?? '', /^Bearer/);
    const wrong = await caller(d, 'not-the-token')('GET', path);
    assert.equal(wrong.status, 401, path);
  }
  const bad = await caller(d, undefined)('POST', '/volumes', { name: 'v', sizeBytes: 4096 });
  assert.equal(bad.status, 401);
  const ok = await api('GET', '/site');
  assert.equal(ok.status, 200);
  assert.equal((ok.body as { name: string }).name, 'auth-site');
  // Nothing was created by the refused request.
  assert.deepEqual((await api('GET', '/volumes')).body, []);
});

test('validation: malformed bodies, unknown fields and wrong types are 400 naming the field', async (t) => {
  const { api } = await daemon(t, 'valid-site');
  const cases: [string, string, unknown, RegExp, string?][] = [
    [
      'POST',
      '/volumes',
      { name: 'v1', sizeBytes: 4096, colour: 'red' },
      /unknown field body\.colour/,
      'body.colour',
    ],
    ['POST', '/volumes', { name: 'v1' }, /missing field body\.sizeBytes/, 'body.sizeBytes'],
    [
      'POST',
      '/volumes',
      { name: 'v1', sizeBytes: 'big' },
      /body\.sizeBytes must be integer/,
      'body.sizeBytes',
    ],
    ['POST', '/volumes', { name: '../etc', sizeBytes: 4096 }, /body\.name must match/, 'body.name'],
    [
      'POST',
      '/vms',
      { name: 'vm1', disks: [{ volume: 'v1', bogus: true }] },
      /unknown field body\.disks\[0\]\.bogus/,
      'body.disks[0].bogus',
    ],
    ['POST', '/vms', { name: 'vm1', disks: [], cpus: 0 }, /body\.cpus must be >= 1/, 'body.cpus'],
    ['POST', '/networks', { name: 'n1', kind: 'bridge' }, /body\.kind must be equal to one of/, 'body.kind'],
    ['GET', '/jobs?state=sleeping', undefined, /querystring\.state/, 'querystring.state'],
  ];
  for (const [method, path, body, message, field] of cases) {
    const a = await api(method, path, body);
    assert.equal(a.status, 400, `${method} ${path} ${JSON.stringify(body)}: ${JSON.stringify(a.body)}`);
    assert.equal(err(a).code, 'INVALID_ARGUMENT');
    assert.match(err(a).message, message);
    if (field) assert.equal(err(a).field, field);
  }
  const notJson = await api('POST', '/volumes', undefined, '{"name": "v1", sizeBytes');
  assert.equal(notJson.status, 400);
  assert.match(err(notJson).message, /JSON/i);
  // A VM on a volume that does not exist is refused, naming it.
  const ghost = await api('POST', '/vms', { name: 'vm1', disks: [{ volume: 'ghost' }] });
  assert.equal(ghost.status, 404);
  assert.match(err(ghost).message, /no volume ghost/);
  assert.deepEqual((await api('GET', '/vms')).body, []);
});

test('404 for unknown resources and paths; 409 for conflicting operations; the audit log says who', async (t) => {
  const { api } = await daemon(t, 'conflict-site');
  for (const path of [
    '/vms/nope',
    '/volumes/nope',
    '/pools/nope',
    '/jobs/nope',
    '/networks/nope',
    '/hosts/nope',
    '/nothing',
  ]) {
    const a = await api('GET', path);
    assert.equal(a.status, 404, path);
    assert.equal(err(a).code, 'NOT_FOUND');
  }
  assert.equal((await api('POST', '/volumes', { name: 'disk1', sizeBytes: 64 << 20 })).status, 201);
  const twice = await api('POST', '/volumes', { name: 'disk1', sizeBytes: 64 << 20 });
  assert.equal(twice.status, 409);
  assert.match(err(twice).message, /already exists/);

  const g = ensureGuest();
  assert.equal((await api('POST', '/networks', { name: 'lab', kind: 'isolated' })).status, 201);
  const vm = await api('POST', '/vms', {
    name: 'vm1',
    memoryMiB: 192,
    disks: [{ volume: 'disk1' }],
    nics: [{ network: 'nat' }, { network: 'lab' }],
    boot: {
      kind: 'kernel',
      kernel: g.kernel,
      initrd: g.initrd,
      cmdline: 'console=ttyS0 quiet panic=-1 haven.cmd=ping',
    },
  });
  assert.equal(vm.status, 201, JSON.stringify(vm.body));
  const inUse = await api('DELETE', '/volumes/disk1');
  assert.equal(inUse.status, 409);
  assert.match(err(inUse).message, /volume disk1 is a disk of VM\(s\) vm1/);
  const poolBusy = await api('DELETE', '/pools/default');
  assert.equal(poolBusy.status, 409);

  const start = await api('POST', '/vms/vm1/start');
  assert.equal(start.status, 202);
  const job = start.body as { id: string };
  let state = '';
  for (let i = 0; i < 200 && state !== 'succeeded'; i++) {
    state = ((await api('GET', `/jobs/${job.id}`)).body as { state: string }).state;
    assert.notEqual(state, 'failed');
    await new Promise((r) => setTimeout(r, 50));
  }
  const running = (await api('GET', '/vms/vm1')).body as { state: string; pid: number };
  assert.equal(running.state, 'running');
  // The NICs QEMU really got: user-mode NAT, and the isolated network's own multicast segment.
  const argv = readFileSync(`/proc/${running.pid}/cmdline`, 'utf8').split('\0');
  assert.ok(argv.includes('user,id=net0'), argv.join(' '));
  assert.ok(
    argv.some((a) => /^socket,id=net1,mcast=239\.\d+\.\d+\.\d+:\d+,localaddr=127\.0\.0\.1$/.test(a)),
    argv.join(' '),
  );
  const netBusy = await api('DELETE', '/networks/lab');
  assert.equal(netBusy.status, 409);
  assert.match(err(netBusy).message, /network lab is used by VM\(s\) vm1/);
  const again = await api('POST', '/vms/vm1/start');
  assert.equal(again.status, 409);
  assert.match(err(again).message, /VM vm1 is already running/);
  const del = await api('DELETE', '/vms/vm1');
  assert.equal(del.status, 409);
  assert.match(err(del).message, /stop it before deleting it/);
  const stop = await api('POST', '/vms/vm1/stop', { force: true });
  assert.equal(stop.status, 202);
  for (let i = 0; i < 200; i++) {
    if (((await api('GET', '/vms/vm1')).body as { state: string }).state === 'stopped') break;
    await new Promise((r) => setTimeout(r, 50));
  }
  assert.equal(((await api('GET', '/vms/vm1')).body as { state: string }).state, 'stopped');
  const stopAgain = await api('POST', '/vms/vm1/stop', {});
  assert.equal(stopAgain.status, 409);
  const cancelDone = await api('POST', `/jobs/${job.id}/cancel`);
  assert.equal(cancelDone.status, 409);
  assert.equal((await api('DELETE', '/vms/vm1')).status, 204);
  assert.equal((await api('DELETE', '/volumes/disk1')).status, 204);

  const events = (await api('GET', '/events?action=volume.delete')).body as {
    outcome: string;
    actor: string;
    message: string;
  }[];
  assert.deepEqual(
    events.map((e) => e.outcome),
    ['ok', 'failed'],
  );
  assert.match(events[0]!.actor, /^admin@127\.0\.0\.1$/);
  assert.match(events[1]!.message, /is a disk of VM/);
});

test('the OpenAPI document is valid OpenAPI 3 and describes every resource', async (t) => {
  const { api } = await daemon(t, 'doc-site');
  const a = await api('GET', '/openapi.json');
  assert.equal(a.status, 200);
  const doc = a.body as { openapi: string; paths: Record<string, unknown> };
  assert.match(doc.openapi, /^3\./);
  await SwaggerParser.validate(structuredClone(doc) as never);
  for (const p of [
    '/pools',
    '/volumes',
    '/volumes/{name}/snapshots',
    '/hosts',
    '/vms',
    '/vms/{name}/start',
    '/networks',
    '/jobs',
    '/jobs/{id}/watch',
    '/events',
    '/site',
  ])
    assert.ok(doc.paths[`/api/v1${p}`], `${p} is documented`);
});

test('two sites run side by side without touching each other', async (t) => {
  const a = await daemon(t, 'site-a');
  const b = await daemon(t, 'site-b');
  assert.notEqual(a.d.url, b.d.url);
  assert.equal((await a.api('POST', '/volumes', { name: 'same-name', sizeBytes: 1 << 20 })).status, 201);
  assert.equal((await b.api('POST', '/volumes', { name: 'same-name', sizeBytes: 2 << 20 })).status, 201);
  assert.equal((await a.api('POST', '/volumes', { name: 'only-a', sizeBytes: 1 << 20 })).status, 201);
  const names = async (x: typeof a) =>
    ((await x.api('GET', '/volumes')).body as { name: string; size: number }[]).map(
      (v) => `${v.name}:${v.size}`,
    );
  assert.deepEqual(await names(a), ['only-a:1048576', 'same-name:1048576']);
  assert.deepEqual(await names(b), ['same-name:2097152']);
  // Each token opens only its own site.
  assert.equal((await caller(a.d, b.token)('GET', '/site')).status, 401);
  const sa = (await a.api('GET', '/site')).body as { name: string; nbd: { socket: string; tcp: string } };
  const sb = (await b.api('GET', '/site')).body as { name: string; nbd: { socket: string; tcp: string } };
  assert.equal(sa.name, 'site-a');
  assert.equal(sb.name, 'site-b');
  assert.notEqual(sa.nbd.tcp, sb.nbd.tcp);
  assert.notEqual(sa.nbd.socket, sb.nbd.socket);
  // A second daemon on the same data directory is refused.
  await assert.rejects(
    startSiteDaemon({ dataDir: a.dir, nbdListen: 'none' }, { host: '127.0.0.1', port: 0 }),
    /in use by process/,
  );
  await b.d.stop();
  assert.equal((await a.api('GET', '/site')).status, 200);
});

test('backup over the API: a transport by name, verify and gc as jobs, quick rollback', async (t) => {
  const { d, dir, api } = await daemon(t, 'backup-site');
  const { Repository } = await import('../../src/repository/index.js');
  const { randomBytes } = await import('node:crypto');
  const repo = join(dir, 'repo');
  await Repository.init(repo);
  assert.equal((await api('POST', '/volumes', { name: 'r', sizeBytes: 8 * 1024 * 1024 })).status, 201);
  const dev = d.site.storage.openDevice('r');
  await dev.write(randomBytes(1024 * 1024), 2 * 1024 * 1024);
  await dev.flush();
  const finished = async (a: Answer) => {
    assert.equal(a.status, 202, JSON.stringify(a.body));
    const id = (a.body as { id: string }).id;
    for (;;) {
      const j = (await api('GET', `/jobs/${id}`)).body as { state: string; result?: unknown; error?: string };
      if (j.state !== 'running' && j.state !== 'queued') return j;
      await new Promise((r) => setTimeout(r, 50));
    }
  };
  const badTransport = await api('POST', '/volumes/r/backup', { repo, transport: 'fibre' });
  assert.equal(badTransport.status, 400);
  assert.equal(err(badTransport).field, 'body.transport');
  const b = await finished(await api('POST', '/volumes/r/backup', { repo, transport: 'hotadd' }));
  assert.equal(b.state, 'succeeded', b.error);
  const r = b.result as { snapshot: string; transport: string; stats: { readBytes: number } };
  assert.equal(r.transport, 'hotadd');
  assert.equal(r.stats.readBytes, 1024 * 1024, 'the allocated megabyte was read over the local socket');
  const v = await finished(await api('POST', '/repositories/verify', { repo, rolling: 2 }));
  assert.equal(v.state, 'succeeded', v.error);
  assert.deepEqual((v.result as { slice: unknown }).slice, { index: 0, of: 2 });
  const gc = await finished(await api('POST', '/repositories/gc', { repo, graceSeconds: 0 }));
  assert.equal(gc.state, 'succeeded', gc.error);
  assert.equal((gc.result as { removedChunks: number }).removedChunks, 0, 'nothing unused');
  const before = Buffer.alloc(8 * 1024 * 1024);
  await dev.read(before, 0);
  await dev.write(randomBytes(4096), 2 * 1024 * 1024 + 8192);
  const rb = await finished(await api('POST', '/volumes/r/rollback', { repo, snapshot: r.snapshot }));
  assert.equal(rb.state, 'succeeded', rb.error);
  const after = Buffer.alloc(8 * 1024 * 1024);
  await dev.read(after, 0);
  assert.ok(after.equals(before), 'the rollback undid the write');
});
