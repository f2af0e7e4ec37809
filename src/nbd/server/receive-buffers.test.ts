// SocketReceiver: plain socket reads land in reused pool buffers, never in one still referred to.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { createConnection, createServer, type Socket } from 'node:net';
import { randomBytes } from 'node:crypto';
import { ChunkQueue } from './chunk-queue.js';
import { ReceiveBufferPool, SocketReceiver } from './receive-buffers.js';

async function pair(t: { after(fn: () => unknown): void }): Promise<{ server: Socket; client: Socket }> {
  const srv = createServer();
  srv.listen(0, '127.0.0.1');
  await once(srv, 'listening');
  const client = createConnection((srv.address() as { port: number }).port, '127.0.0.1');
  const [server] = (await once(srv, 'connection')) as [Socket];
  t.after(() => {
    client.destroy();
    server.destroy();
    srv.close();
  });
  return { server, client };
}

test('reads go into one reused buffer while each read is consumed at once', async (t) => {
  const { server, client } = await pair(t);
  const pool = new ReceiveBufferPool(4096, 8);
  const got: Buffer[] = [];
  const seen = new Set<ArrayBufferLike>();
  let total = 0;
  const data = randomBytes(256 * 1024);
  const done = new Promise<void>((resolve) => {
    const r = SocketReceiver.attach(server, pool, {
      received: (chunk) => {
        seen.add(chunk.buffer);
        got.push(Buffer.from(chunk)); // consumed (copied) at once
        total += chunk.length;
        if (total === data.length) resolve();
      },
      queued: () => false,
    });
    assert.ok(r, 'this Node has the user-buffer fields');
  });
  client.write(data);
  await done;
  assert.ok(Buffer.concat(got).equals(data), 'every byte arrived in order');
  assert.equal(seen.size, 1, 'one buffer for all reads');
  assert.equal(pool.allocated, 1);
});

test('a buffer whose bytes are still queued or held by a pending write is not read into', async (t) => {
  const { server, client } = await pair(t);
  const pool = new ReceiveBufferPool(1024, 64);
  const q = new ChunkQueue();
  const pending: { views: Buffer[]; copy: Buffer; finish: () => void }[] = [];
  let receiver: SocketReceiver | undefined;
  const data = randomBytes(64 * 1024);
  let total = 0;
  const done = new Promise<void>((resolve) => {
    receiver = SocketReceiver.attach(server, pool, {
      received: (chunk) => {
        q.push(chunk);
        total += chunk.length;
        // Consume in 1500-byte "payloads" held by a write that finishes later.
        while (q.length >= 1500) {
          const views = q.take(1500);
          let finish!: () => void;
          const p = new Promise<void>((r) => (finish = r));
          receiver!.hold(views, p);
          pending.push({ views, copy: Buffer.concat(views), finish });
        }
        if (total === data.length) resolve();
      },
      queued: (buf) => q.references(buf),
    });
  });
  client.write(data);
  await done;
  // Nothing read later overwrote a held payload.
  for (const p of pending) assert.ok(Buffer.concat(p.views).equals(p.copy), 'a held payload was overwritten');
  const before = pool.allocated;
  assert.ok(before > 2, 'held buffers made the reader take others');
  for (const p of pending) p.finish();
  await new Promise((r) => setImmediate(r));
  // Released buffers are reused: more data needs no new allocation beyond what is still queued.
  const more = randomBytes(16 * 1024);
  const all = new Promise<void>((resolve) => {
    const check = setInterval(() => {
      if (total === data.length + more.length) {
        clearInterval(check);
        resolve();
      }
    }, 5);
  });
  client.write(more);
  await all;
  for (const p of pending.slice(-10)) p.finish();
  assert.ok(pool.allocated <= before + 2, `released buffers were reused (${before} then ${pool.allocated})`);
});
