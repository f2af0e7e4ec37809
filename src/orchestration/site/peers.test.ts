// The peer link and its RPC between two sites in this process (as the replication gateways use
// them): a channel gets the bytes that follow the open frame untouched, a remote failure comes
// back with its code, an unknown operation and a slow one fail clearly, and unpairing cuts the
// open links.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { join } from 'node:path';
import { tempDir } from '../../../test/support/tmp.js';
import { HavenError, conflict } from '../../common/index.js';
import { Frame, FrameReader, jsonFrame } from '../../protection/replication/frames.js';
import { Site } from './site.js';

const code = (c: string, re?: RegExp) => (e: unknown) =>
  e instanceof HavenError && e.code === c && (!re || re.test(e.message));

async function openSite(t: { after: (fn: () => unknown) => void }, name: string): Promise<Site> {
  const tmp = tempDir();
  const site = await Site.open({
    dataDir: join(tmp.path, 'data'),
    name,
    nbdListen: 'none',
    peerListen: '127.0.0.1:0',
  });
  t.after(async () => {
    await site.close();
    tmp.cleanup();
  });
  return site;
}

/** Pairs a and b without their APIs: each accepts the other's offer. */
async function pair(t: { after: (fn: () => unknown) => void }): Promise<[Site, Site]> {
  const [a, b] = await Promise.all([openSite(t, 'site-a'), openSite(t, 'site-b')]);
  a.peers.accept('test', b.peers.offer());
  b.peers.accept('test', a.peers.offer());
  return [a, b];
}

test('a channel gets the link after the open frame, with the bytes that came with it', async (t) => {
  const [a, b] = await pair(t);
  const got: { peer: string; open: Record<string, unknown>; frames: string[] } = {
    peer: '',
    open: {},
    frames: [],
  };
  const done = new Promise<void>((resolve) =>
    b.peers.onChannel('test', (socket, peer, open) => {
      got.peer = peer.name;
      got.open = open;
      const reader = new FrameReader(socket, peer.name);
      void (async () => {
        for (let f = await reader.next(); f; f = await reader.next()) {
          got.frames.push(f.body.toString());
          if (got.frames.length === 3) {
            await jsonFrame(socket, Frame.ack, { held: 3 });
            resolve();
          }
        }
      })();
    }),
  );
  const socket = await a.peers.dial('site-b', { channel: 'test', group: 'g1' });
  // Three frames in one write: whatever the listener read past the open frame must reach the channel.
  socket.write(
    Buffer.concat(
      ['one', 'two', 'three'].map((s) => {
        const body = Buffer.from(s);
        const h = Buffer.alloc(8);
        h[0] = Frame.batch;
        h.writeUInt32LE(body.length, 4);
        return Buffer.concat([h, body]);
      }),
    ),
  );
  await done;
  assert.equal(got.peer, 'site-a');
  assert.deepEqual(got.open, { channel: 'test', group: 'g1' });
  assert.deepEqual(got.frames, ['one', 'two', 'three']);
  const ack = await new FrameReader(socket, 'site-b').next();
  assert.deepEqual(JSON.parse(ack!.body.toString()), { held: 3 });
  socket.destroy();

  await assert.rejects(
    a.peers.dial('site-b', { channel: 'nothing' }),
    code('NOT_FOUND', /no peer link channel nothing/),
  );
  await assert.rejects(
    a.peers.dial('site-c', { channel: 'test' }),
    code('NOT_FOUND', /site site-c is not paired/),
  );
});

test('rpc: answers, remote errors with their code, unknown operations, timeouts', async (t) => {
  const [a, b] = await pair(t);
  assert.equal(await a.peers.call('site-b', 'ping', null), 'site-b');
  assert.equal(await b.peers.call('site-a', 'ping', null), 'site-a');
  b.peers.handle('volume.prepare', async (peer, args) => {
    const { name } = args as { name: string };
    if (name === 'taken') throw conflict(`volume ${name} exists already`);
    return { for: peer.name, name };
  });
  b.peers.handle('crash', async () => {
    throw new Error('something broke');
  });
  b.peers.handle('slow', () => new Promise(() => undefined));
  assert.deepEqual(await a.peers.call('site-b', 'volume.prepare', { name: 'r1' }), {
    for: 'site-a',
    name: 'r1',
  });
  await assert.rejects(
    a.peers.call('site-b', 'volume.prepare', { name: 'taken' }),
    code('CONFLICT', /^site site-b: volume\.prepare: volume taken exists already$/),
  );
  await assert.rejects(
    a.peers.call('site-b', 'crash', null),
    code('INTERNAL', /site site-b: crash: something broke/),
  );
  await assert.rejects(
    a.peers.call('site-b', 'nope', null),
    code('NOT_FOUND', /site site-b has no peer operation nope/),
  );
  await assert.rejects(
    a.peers.call('site-b', 'slow', null, { timeoutMs: 200 }),
    code('TIMEOUT', /site site-b did not answer slow within 200 ms/),
  );
  assert.throws(() => b.peers.handle('ping', async () => 1), code('CONFLICT'));
});

test('unpairing cuts the open links and refuses new ones; the other side learns it at its next dial', async (t) => {
  const [a, b] = await pair(t);
  let held: import('node:tls').TLSSocket | undefined;
  b.peers.onChannel('hold', (socket) => (held = socket));
  const socket = await a.peers.dial('site-b', { channel: 'hold' });
  const closed = once(socket, 'close');
  b.peers.unpair('test', 'site-a');
  await closed;
  assert.ok(held?.destroyed);
  await assert.rejects(a.peers.dial('site-b', { channel: 'hold' }), code('PROTOCOL', /refused the link/));
  assert.equal(b.events.query({ action: 'peer.link.refused' }).length, 1);
  assert.equal(b.events.query({ action: 'peer.unpair' })[0]?.outcome, 'ok');
  assert.deepEqual(
    b.peers.list().map((p) => p.name),
    [],
  );
  assert.ok(b.info().peer.link);
});
