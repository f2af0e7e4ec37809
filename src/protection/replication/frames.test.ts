// The gateways' frame reader on a real TCP socket: frames of many sizes arriving in pieces of any
// size (a header split across pieces, a body of MiBs in many), read slowly enough that several
// wait at once; every body is checked by hash while it is the current frame.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { createServer, connect, type Socket } from 'node:net';
import { setImmediate as turn } from 'node:timers/promises';
import { Frame, FrameReader, frameHeader } from './frames.js';

const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

async function socketPair(): Promise<{ a: Socket; b: Socket; close: () => void }> {
  const server = createServer();
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as { port: number }).port;
  const accepted = new Promise<Socket>((r) => server.once('connection', r));
  const a = connect(port, '127.0.0.1');
  const b = await accepted;
  return {
    a,
    b,
    close: () => {
      a.destroy();
      b.destroy();
      server.close();
    },
  };
}

test('frames of 0 B to 6 MiB in pieces of 1 B to 1 MiB come whole and intact, also while several wait', async (t) => {
  const { a, b, close } = await socketPair();
  t.after(close);
  const sizes = [
    0,
    1,
    7,
    8,
    9,
    4096,
    65_536,
    65_537,
    1 << 20,
    4 << 20,
    3,
    (4 << 20) + 40,
    6 << 20,
    100,
    2 << 20,
  ];
  const bodies = sizes.map((n) => randomBytes(n));
  const wire = Buffer.concat(
    bodies.flatMap((body, i) => [frameHeader(Frame.batch, i % 2, body.length), body]),
  );
  const reader = new FrameReader(b, 'the test peer');
  // Pieces of varied sizes (1 B pieces split headers), written without waiting.
  (async () => {
    const pieces = [1, 3, 5, 8, 13, 1000, 16_384, 65_536, 1 << 20];
    for (let at = 0, i = 0; at < wire.length; i++) {
      const n = Math.min(pieces[i % pieces.length]!, wire.length - at);
      if (!a.write(wire.subarray(at, at + n))) await new Promise((r) => a.once('drain', r));
      at += n;
    }
    a.end();
  })().catch(() => undefined);
  for (const [i, body] of bodies.entries()) {
    const f = await reader.next();
    assert.ok(f, `frame ${i} came`);
    assert.equal(f.type, Frame.batch);
    assert.equal(f.flags, i % 2);
    assert.equal(f.body.length, body.length, `frame ${i}: its length`);
    // Slow now and then, so that later frames arrive and wait (each in its own buffer).
    if (i % 3 === 0) for (let k = 0; k < 50; k++) await turn();
    assert.equal(sha(f.body), sha(body), `frame ${i} (${body.length} B) is intact`);
  }
  assert.equal(await reader.next(), undefined, 'then the end');
});
