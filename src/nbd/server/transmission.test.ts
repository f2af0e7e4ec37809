// The transmission phase at the protocol level, with a raw client over a unix socket and a real
// temp-file device: a read over holes comes back as data and hole chunks covering it exactly,
// requests out of range or against a read-only export get the errno the protocol names, replies
// of pipelined requests carry their own cookies, and a client hanging up with requests in flight
// leaves the server serving others.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createConnection } from 'node:net';
import { openSync, closeSync, writeSync, ftruncateSync } from 'node:fs';
import { join } from 'node:path';
import { openRawFile } from '../../block/index.js';
import { tempDir } from '../../../test/support/tmp.js';
import { RawNbd } from '../../../test/support/nbd-raw.js';
import * as P from '../protocol.js';
import { NbdServer } from './server.js';

const MiB = 1024 * 1024;
const SIZE = 4 * MiB;

class Raw extends RawNbd {
  request(type: number, cookie: number, offset: number, length: number, payload?: Buffer, flags = 0) {
    const h = Buffer.alloc(28);
    h.writeUInt32BE(P.REQUEST_MAGIC, 0);
    h.writeUInt16BE(flags, 4);
    h.writeUInt16BE(type, 6);
    h.writeBigUInt64BE(BigInt(cookie), 8);
    h.writeBigUInt64BE(BigInt(offset), 16);
    h.writeUInt32BE(length, 24);
    this.socket.write(payload ? Buffer.concat([h, payload]) : h);
  }
  /** A simple reply: its cookie and error (payload not read). */
  async simple(): Promise<{ cookie: number; error: number }> {
    const r = await this.read(16);
    assert.equal(r.readUInt32BE(0), P.SIMPLE_REPLY_MAGIC);
    return { error: r.readUInt32BE(4), cookie: Number(r.readBigUInt64BE(8)) };
  }
  /** The error of a reply without data, simple or structured. */
  async errorOf(): Promise<{ cookie: number; error: number }> {
    const magic = (await this.read(4)).readUInt32BE(0);
    if (magic === P.SIMPLE_REPLY_MAGIC) {
      const r = await this.read(12);
      return { error: r.readUInt32BE(0), cookie: Number(r.readBigUInt64BE(4)) };
    }
    assert.equal(magic, P.STRUCTURED_REPLY_MAGIC);
    const r = await this.read(16);
    const data = await this.read(r.readUInt32BE(12));
    assert.equal(r.readUInt16BE(2), P.REPLY_TYPE_ERROR);
    return { error: data.readUInt32BE(0), cookie: Number(r.readBigUInt64BE(4)) };
  }
  /** One structured chunk. */
  async chunk(): Promise<{ flags: number; type: number; cookie: number; data: Buffer }> {
    const r = await this.read(20);
    assert.equal(r.readUInt32BE(0), P.STRUCTURED_REPLY_MAGIC);
    return {
      flags: r.readUInt16BE(4),
      type: r.readUInt16BE(6),
      cookie: Number(r.readBigUInt64BE(8)),
      data: await this.read(r.readUInt32BE(16)),
    };
  }
}

const go = (name: string) => {
  const l = Buffer.alloc(4);
  l.writeUInt32BE(name.length, 0);
  return Buffer.concat([l, Buffer.from(name), Buffer.alloc(2)]);
};

/** A 4 MiB sparse file: data (0xab) at [1 MiB, 2 MiB), the rest holes. */
async function serving(t: { after: (fn: () => unknown) => void }) {
  const tmp = tempDir();
  t.after(tmp.cleanup);
  const file = join(tmp.path, 'd.img');
  const fd = openSync(file, 'w');
  ftruncateSync(fd, SIZE);
  writeSync(fd, Buffer.alloc(MiB, 0xab), 0, MiB, MiB);
  closeSync(fd);
  const server = new NbdServer();
  server.addExport({ name: 'rw', device: openRawFile(file) });
  server.addExport({ name: 'ro', device: openRawFile(file, { readOnly: true }) });
  const sock = join(tmp.path, 's.sock');
  await server.listen({ path: sock });
  t.after(() => server.close());
  return sock;
}

async function attach(
  t: { after: (fn: () => unknown) => void },
  sock: string,
  name: string,
  structured: boolean,
): Promise<Raw> {
  const r = new Raw(createConnection(sock));
  t.after(() => r.socket.destroy());
  await r.read(18);
  const f = Buffer.alloc(4);
  f.writeUInt32BE(P.FLAG_C_FIXED_NEWSTYLE | P.FLAG_C_NO_ZEROES, 0);
  r.socket.write(f);
  if (structured) assert.equal((await r.option(P.OPT_STRUCTURED_REPLY))[0]![0], P.REP_ACK);
  assert.equal((await r.option(P.OPT_GO, go(name))).at(-1)![0], P.REP_ACK);
  return r;
}

test(
  'a structured read over data and holes comes back as chunks that tile the range exactly',
  { timeout: 20_000 },
  async (t) => {
    const sock = await serving(t);
    const r = await attach(t, sock, 'rw', true);
    r.request(P.CMD_READ, 7, 512 * 1024, 2 * MiB); // [0.5, 2.5) MiB: hole, data, hole
    const got = Buffer.alloc(2 * MiB, 0x55);
    let pos = 512 * 1024;
    const kinds: string[] = [];
    for (;;) {
      const c = await r.chunk();
      assert.equal(c.cookie, 7);
      assert.ok(!P.isReplyError(c.type), `error chunk: ${c.data.subarray(6).toString()}`);
      const off = Number(c.data.readBigUInt64BE(0));
      assert.equal(off, pos, 'chunks come in order without gaps');
      if (c.type === P.REPLY_TYPE_OFFSET_HOLE) {
        const len = c.data.readUInt32BE(8);
        got.fill(0, off - 512 * 1024, off - 512 * 1024 + len);
        pos += len;
        kinds.push('hole');
      } else {
        assert.equal(c.type, P.REPLY_TYPE_OFFSET_DATA);
        c.data.copy(got, off - 512 * 1024, 8);
        pos += c.data.length - 8;
        kinds.push('data');
      }
      if (c.flags & P.REPLY_FLAG_DONE) break;
    }
    assert.equal(pos, 512 * 1024 + 2 * MiB);
    assert.deepEqual(kinds, ['hole', 'data', 'hole']);
    const want = Buffer.alloc(2 * MiB);
    want.fill(0xab, 512 * 1024, 512 * 1024 + MiB);
    assert.ok(got.equals(want), 'the chunks reassemble to the file content');
    r.socket.destroy();
  },
);

test(
  'errors: EINVAL past the end, EPERM writing a read-only export, ENOSPC writing past the end',
  { timeout: 20_000 },
  async (t) => {
    const sock = await serving(t);
    const s = await attach(t, sock, 'rw', false);
    s.request(P.CMD_READ, 1, SIZE - 512, 1024);
    assert.deepEqual(await s.simple(), { cookie: 1, error: P.EINVAL });
    s.request(P.CMD_WRITE, 2, SIZE, 512, Buffer.alloc(512, 1));
    assert.deepEqual(await s.simple(), { cookie: 2, error: P.ENOSPC });
    s.request(P.CMD_READ, 3, 0, 512, undefined, 0x4000); // an unknown flag
    assert.deepEqual(await s.simple(), { cookie: 3, error: P.EINVAL });
    // The connection survives its errors.
    s.request(P.CMD_READ, 4, MiB, 512);
    assert.deepEqual(await s.simple(), { cookie: 4, error: 0 });
    assert.ok((await s.read(512)).equals(Buffer.alloc(512, 0xab)));
    s.socket.destroy();

    // Structured replies negotiated: a command without reply data may still get a simple reply.
    const ro = await attach(t, sock, 'ro', true);
    ro.request(P.CMD_WRITE, 5, 0, 512, Buffer.alloc(512, 1));
    assert.deepEqual(await ro.errorOf(), { cookie: 5, error: P.EPERM });
    ro.request(P.CMD_TRIM, 6, 0, 512);
    assert.deepEqual(await ro.errorOf(), { cookie: 6, error: P.EPERM });
    ro.request(P.CMD_WRITE_ZEROES, 7, 0, 512);
    assert.deepEqual(await ro.errorOf(), { cookie: 7, error: P.EPERM });
    // And the read-only export still reads.
    ro.request(P.CMD_READ, 8, MiB, 512);
    const c = await ro.chunk();
    assert.equal(c.type, P.REPLY_TYPE_OFFSET_DATA);
    assert.ok(c.data.subarray(8).equals(Buffer.alloc(512, 0xab)));
    ro.socket.destroy();
  },
);

test(
  'pipelined writes then reads of the same range: every reply names its cookie, reads see the writes',
  { timeout: 20_000 },
  async (t) => {
    const sock = await serving(t);
    const r = await attach(t, sock, 'rw', false);
    const n = 32;
    for (let i = 0; i < n; i++)
      r.request(P.CMD_WRITE, 100 + i, 3 * MiB + i * 4096, 4096, Buffer.alloc(4096, i + 1));
    r.request(P.CMD_FLUSH, 99, 0, 0);
    for (let i = 0; i < n; i++) r.request(P.CMD_READ, 200 + i, 3 * MiB + i * 4096, 4096);
    const cookies = new Set<number>();
    const reads = new Map<number, Buffer>();
    for (let i = 0; i < 2 * n + 1; i++) {
      const { cookie, error } = await r.simple();
      assert.equal(error, 0, `cookie ${cookie}`);
      cookies.add(cookie);
      if (cookie >= 200) reads.set(cookie, Buffer.from(await r.read(4096)));
    }
    assert.equal(cookies.size, 2 * n + 1, 'each request answered once');
    for (let i = 0; i < n; i++) assert.ok(reads.get(200 + i)!.equals(Buffer.alloc(4096, i + 1)), `read ${i}`);
    r.socket.destroy();
  },
);

test(
  'a client hanging up with requests in flight leaves the server serving the next one',
  { timeout: 20_000 },
  async (t) => {
    const sock = await serving(t);
    const a = await attach(t, sock, 'rw', true);
    for (let i = 0; i < 64; i++) a.request(P.CMD_READ, i, (i % 4) * MiB, MiB);
    a.socket.destroy();
    const b = await attach(t, sock, 'rw', true);
    b.request(P.CMD_READ, 1, MiB, 4096);
    const c = await b.chunk();
    assert.equal(c.type, P.REPLY_TYPE_OFFSET_DATA);
    assert.ok(c.data.subarray(8).equals(Buffer.alloc(4096, 0xab)));
    // DISC: the server finishes and hangs up.
    b.request(P.CMD_DISC, 2, 0, 0);
    while (!b.ended) await new Promise((res) => b.socket.once('close', res));
    assert.equal(b.ended, true);
  },
);

test(
  'a stream of large writes (received by the native side): one FUA, one past the end, one paused mid-payload; each answered once, a flush and reads see every byte',
  { timeout: 20_000 },
  async (t) => {
    const sock = await serving(t);
    const r = await attach(t, sock, 'rw', false);
    const len = 256 * 1024;
    const fill = (i: number) => Buffer.alloc(len, 0x10 + i);
    for (let i = 0; i < 8; i++)
      r.request(P.CMD_WRITE, 10 + i, i * len, len, fill(i), i === 3 ? P.CMD_FLAG_FUA : 0);
    // Between large writes, one the native side must leave to the usual path: past the end.
    r.request(P.CMD_WRITE, 30, SIZE - len / 2, len, fill(0));
    r.request(P.CMD_WRITE, 18, 8 * len, len, fill(8));
    // A client that stops mid-payload for longer than the native side waits (200 ms): the
    // pause is the stimulus here, not a wait for a state.
    const h = Buffer.alloc(28);
    h.writeUInt32BE(P.REQUEST_MAGIC, 0);
    h.writeUInt16BE(P.CMD_WRITE, 6);
    h.writeBigUInt64BE(19n, 8);
    h.writeBigUInt64BE(BigInt(9 * len), 16);
    h.writeUInt32BE(len, 24);
    r.socket.write(Buffer.concat([h, fill(9).subarray(0, len / 2)]));
    await new Promise((res) => setTimeout(res, 400));
    r.socket.write(fill(9).subarray(len / 2));
    r.request(P.CMD_FLUSH, 40, 0, 0);
    const errors = new Map<number, number>();
    for (let i = 0; i < 12; i++) {
      const { cookie, error } = await r.simple();
      assert.ok(!errors.has(cookie), `cookie ${cookie} answered once`);
      errors.set(cookie, error);
    }
    for (let i = 0; i < 10; i++) assert.equal(errors.get(10 + i), 0, `write ${i}`);
    assert.equal(errors.get(30), P.ENOSPC);
    assert.equal(errors.get(40), 0);
    r.request(P.CMD_READ, 50, 0, 10 * len);
    assert.deepEqual(await r.simple(), { cookie: 50, error: 0 });
    const back = await r.read(10 * len);
    for (let i = 0; i < 10; i++)
      assert.ok(back.subarray(i * len, (i + 1) * len).equals(fill(i)), `block ${i}`);
    r.socket.destroy();
  },
);
