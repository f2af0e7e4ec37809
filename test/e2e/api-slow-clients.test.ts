// Slow clients of the REST API (issue 13, item 11): a request whose headers never end, and a POST
// whose body never completes (or trickles in), are closed once the request bound passes — over
// real sockets — while other clients are answered meanwhile. A job watch stream (a long
// response) is not cut by it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createConnection, type Socket } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { startSiteDaemon } from '../../src/api/index.js';
import { tempDir } from '../support/tmp.js';

interface Stalled {
  socket: Socket;
  /** Milliseconds from connecting to the server's close, and what it answered. */
  closed: Promise<{ ms: number; answer: string }>;
}

function open(port: number, first: string): Stalled {
  const socket = createConnection(port, '127.0.0.1');
  const at = Date.now();
  let answer = '';
  socket.on('data', (d: Buffer) => (answer += d.toString()));
  socket.on('error', () => undefined);
  const closed = new Promise<{ ms: number; answer: string }>((resolve) =>
    socket.on('close', () => resolve({ ms: Date.now() - at, answer })),
  );
  socket.write(first);
  return { socket, closed };
}

function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  return Promise.race([
    p,
    new Promise<never>((_, reject) =>
      setTimeout(() => reject(new Error(`${what} within ${ms} ms`)), ms).unref(),
    ),
  ]);
}

test('API: stalled headers, a body that never completes and a trickling body are closed at the bound; others are served', async (t) => {
  const dir = tempDir();
  const d = await startSiteDaemon(
    { dataDir: dir.path, nbdListen: 'none' },
    { host: '127.0.0.1', port: 0, requestTimeoutMs: 2000 },
  );
  t.after(async () => {
    await d.stop();
    dir.cleanup();
  });
  const port = Number(new URL(d.url).port);
  const token = d.site.apiToken();
  const auth = { authorization: `Bearer ${token}` };

  const headers = open(port, `GET /api/v1/site HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${token}\r\n`);
  const body = open(
    port,
    `POST /api/v1/volumes HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${token}\r\n` +
      'Content-Type: application/json\r\nContent-Length: 64\r\n\r\n{"name": ',
  );
  const trickle = open(
    port,
    `POST /api/v1/networks HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${token}\r\n` +
      'Content-Type: application/json\r\nContent-Length: 4096\r\n\r\n',
  );
  let trickling = true;
  void (async () => {
    while (trickling && !trickle.socket.destroyed) {
      trickle.socket.write(' ');
      await sleep(200);
    }
  })();

  // Meanwhile the API answers others, and a job watch stream stays open past the bound.
  for (let i = 0; i < 3; i++) {
    const r = await fetch(`${d.url}/api/v1/site`, { headers: auth });
    assert.equal(r.status, 200);
  }

  const [h, b, tr] = await within(
    Promise.all([headers.closed, body.closed, trickle.closed]),
    6000,
    'the stalled requests were not closed',
  );
  trickling = false;
  for (const [what, c] of [
    ['headers', h],
    ['body', b],
    ['trickle', tr],
  ] as const) {
    assert.ok(c.ms >= 1900, `${what}: closed at the bound, not before (${c.ms} ms)`);
    assert.doesNotMatch(c.answer, /^HTTP\/1\.1 20/, `${what} was not served: ${c.answer}`);
  }
  assert.match(b.answer, /^HTTP\/1\.1 408/);
  assert.equal(d.site.volumes.listVolumes().length, 0, 'the half-sent POST created nothing');
  assert.equal((await fetch(`${d.url}/api/v1/site`, { headers: auth })).status, 200);
});

test('API: a job watch stream outlives the request bound', async (t) => {
  const dir = tempDir();
  const d = await startSiteDaemon(
    { dataDir: dir.path, nbdListen: 'none' },
    { host: '127.0.0.1', port: 0, requestTimeoutMs: 1000 },
  );
  t.after(async () => {
    await d.stop();
    dir.cleanup();
  });
  // A job that runs until cancelled: its watch sends nothing while it runs.
  const job = d.site.jobs.start(
    { kind: 'test.wait', target: 'x', actor: 'test' },
    (ctx) =>
      new Promise((_, reject) => ctx.signal.addEventListener('abort', () => reject(ctx.signal.reason))),
  );
  const res = await fetch(`${d.url}/api/v1/jobs/${job.id}/watch`, {
    headers: { authorization: `Bearer ${d.site.apiToken()}` },
  });
  assert.equal(res.status, 200);
  const reader = res.body!.getReader();
  await reader.read(); // the first event
  const next = reader.read();
  await sleep(2500); // past the 1 s bound (and its 1 s check)
  d.site.jobs.cancel(job.id, 'test');
  const { value } = await within(next, 5000, 'the watch stream ended without the cancel');
  assert.match(Buffer.from(value!).toString(), /"state":"cancelled"|"cancel/);
  await reader.cancel();
});
