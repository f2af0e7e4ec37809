// The order of bytes on a socket with several writers (the connection's own writes and the
// native jobs that send read replies from the file): a reply the client stalled in the middle of
// is finished before anything else goes out, whatever else is waiting. A client that stops
// reading for longer than a sendfile job waits (SEND_WAIT_MS, 200 ms) leaves a reply half sent;
// its rest goes through the socket's queue (sendRest). When that rest was ready at once (its
// bytes in the page cache), it waited among the held replies while the job's completions ran the
// request loop, which started the next sendfile job straight after the half-sent reply: the
// client read the next reply's header as data ("invalid reply magic" in fio under load).
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { createConnection, type Socket } from 'node:net';
import { once } from 'node:events';
import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { nativeIo, openRawFile, type NativeIo } from '../../block/index.js';
import { tempDir } from '../../../test/support/tmp.js';
import * as P from '../protocol.js';
import { NbdServer } from './server.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const EAGAIN = 11;

/** Received bytes taken in exact amounts. */
class Rx {
  private chunks: Buffer[] = [];
  private length = 0;
  private wake: (() => void) | undefined;
  ended = false;
  push(b: Buffer): void {
    this.chunks.push(b);
    this.length += b.length;
    this.wake?.();
  }
  end(): void {
    this.ended = true;
    this.wake?.();
  }
  async take(n: number): Promise<Buffer> {
    while (this.length < n) {
      if (this.ended) throw new Error(`connection closed with ${this.length} of ${n} bytes`);
      await new Promise<void>((r) => (this.wake = r));
    }
    const all = this.chunks.length === 1 ? this.chunks[0]! : Buffer.concat(this.chunks);
    this.chunks = all.length > n ? [all.subarray(n)] : [];
    this.length -= n;
    return all.subarray(0, n);
  }
}

test(
  'a read reply the client stalled in is finished before any other reply or sendfile job goes out',
  { timeout: 60_000 },
  async (t) => {
    const native = nativeIo();
    if (!native) return t.skip('the native addon is not built: no sendfile path');
    const tmp = tempDir();
    t.after(tmp.cleanup);
    const SIZE = 32 * MiB;
    const image = join(tmp.path, 'disk.img');
    const content = randomBytes(SIZE);
    writeFileSync(image, content); // in the page cache: the rest of a stalled reply is read at once
    const server = new NbdServer();
    server.addExport({ name: 'disk', device: openRawFile(image) });
    const sock = join(tmp.path, 's.sock');
    await server.listen({ path: sock });
    t.after(() => server.close());

    // Told when a sendfile job gave up on a socket the client did not read (EAGAIN).
    const io = native as NativeIo & Record<string, unknown>;
    const sendFile = native.sendFile;
    let stalled!: () => void;
    const gaveUp = new Promise<void>((r) => (stalled = r));
    io.sendFile = (sockFd, fileFd, headers, headerLength, offsets, lengths, count, done) =>
      sendFile.call(native, sockFd, fileFd, headers, headerLength, offsets, lengths, count, (sent, errno) => {
        done(sent, errno);
        if (errno === EAGAIN) stalled();
      });
    t.after(() => (io.sendFile = sendFile));

    const { s, rx } = await connectToDisk(sock, t);

    // Reads of 96 KiB: sent from the file (≥ 64 KiB), and whatever rest of one is left after a
    // stall is under the size that goes to the thread pool, so it is ready at once. More than one
    // job's worth (64), so that another job is waiting when the first one gives up.
    s.pause();
    const LEN = 96 * KiB;
    const N = 160;
    const reqs = Buffer.alloc(28 * N);
    for (let i = 0; i < N; i++) {
      const h = reqs.subarray(28 * i);
      h.writeUInt32BE(P.REQUEST_MAGIC, 0);
      h.writeUInt16BE(P.CMD_READ, 6);
      h.writeBigUInt64BE(BigInt(i + 1), 8);
      h.writeBigUInt64BE(BigInt(i * LEN), 16);
      h.writeUInt32BE(LEN, 24);
    }
    s.write(reqs);
    await gaveUp; // the first job filled the socket and gave up half-way through a reply
    s.resume();
    const seen = new Set<number>();
    for (let n = 0; n < N; n++) {
      const h = await rx.take(16);
      const magic = h.readUInt32BE(0);
      assert.equal(
        magic,
        P.SIMPLE_REPLY_MAGIC,
        `reply ${n}: magic 0x${magic.toString(16)}, not a reply header (a reply was cut into)`,
      );
      assert.equal(h.readUInt32BE(4), 0, 'no error');
      const cookie = Number(h.readBigUInt64BE(8));
      assert.ok(cookie >= 1 && cookie <= N && !seen.has(cookie), `cookie ${cookie} once`);
      seen.add(cookie);
      const data = await rx.take(LEN);
      const at = (cookie - 1) * LEN;
      assert.ok(data.equals(content.subarray(at, at + LEN)), `the data of read ${cookie} is the file's`);
    }
    assert.equal(seen.size, N);
    s.destroy();
  },
);

test(
  'pooled reply buffers queued in a socket the client does not read are not reused until the socket has sent them',
  { timeout: 60_000 },
  async (t) => {
    const tmp = tempDir();
    t.after(tmp.cleanup);
    const SIZE = 8 * MiB;
    const image = join(tmp.path, 'disk.img');
    const content = randomBytes(SIZE);
    writeFileSync(image, content);
    const server = new NbdServer();
    server.addExport({ name: 'disk', device: openRawFile(image) });
    const sock = join(tmp.path, 's.sock');
    await server.listen({ path: sock });
    t.after(() => server.close());

    const { s, rx } = await connectToDisk(sock, t);

    // Reads of 16 KiB: answered from pooled reply buffers (4 KiB and up), not from the file.
    const LEN = 16 * KiB;
    const ROUND = 64;
    let cookie = 0;
    const round = () => {
      const reqs = Buffer.alloc(28 * ROUND);
      for (let i = 0; i < ROUND; i++) {
        const h = reqs.subarray(28 * i);
        cookie++;
        h.writeUInt32BE(P.REQUEST_MAGIC, 0);
        h.writeUInt16BE(P.CMD_READ, 6);
        h.writeBigUInt64BE(BigInt(cookie), 8);
        h.writeBigUInt64BE(BigInt((cookie - 1) * LEN), 16);
        h.writeUInt32BE(LEN, 24);
      }
      s.write(reqs);
    };
    // The replies' budget bytes stay charged until the socket has sent them: more than the
    // kernel's buffers take means replies wait in the socket's own queue.
    const queued = async (bytes: number) => {
      while (server.memoryStats().bytesInFlight < bytes) await new Promise<void>((r) => setImmediate(r));
    };
    s.pause();
    const ROUNDS = 4;
    for (let n = 1; n <= ROUNDS; n++) {
      round(); // each round's replies take pooled buffers of the same size as the queued ones
      await queued(n * (ROUND / 2) * LEN);
    }
    s.resume();
    const seen = new Set<number>();
    for (let n = 0; n < ROUNDS * ROUND; n++) {
      const h = await rx.take(16);
      assert.equal(h.readUInt32BE(0), P.SIMPLE_REPLY_MAGIC, `reply ${n} is framed`);
      assert.equal(h.readUInt32BE(4), 0);
      const c = Number(h.readBigUInt64BE(8));
      assert.ok(!seen.has(c), `cookie ${c} once`);
      seen.add(c);
      const data = await rx.take(LEN);
      const at = (c - 1) * LEN;
      assert.ok(data.equals(content.subarray(at, at + LEN)), `read ${c} carries its own data`);
    }
    assert.equal(server.memoryStats().bytesInFlight, 0, 'every reply buffer was given back once sent');
    s.destroy();
  },
);

/** Connects to export `disk` at `sock` (fixed newstyle, NBD_OPT_GO); closed when the test ends. */
async function connectToDisk(sock: string, t: TestContext): Promise<{ s: Socket; rx: Rx }> {
  const s = createConnection(sock);
  t.after(() => s.destroy());
  const rx = new Rx();
  s.on('data', (d: Buffer) => rx.push(d));
  s.on('close', () => rx.end());
  s.on('error', () => rx.end());
  await once(s, 'connect');
  await rx.take(18);
  const f = Buffer.alloc(4);
  f.writeUInt32BE(P.FLAG_C_FIXED_NEWSTYLE | P.FLAG_C_NO_ZEROES);
  const go = Buffer.alloc(16 + 10);
  go.writeBigUInt64BE(P.IHAVEOPT, 0);
  go.writeUInt32BE(P.OPT_GO, 8);
  go.writeUInt32BE(10, 12);
  go.writeUInt32BE(4, 16);
  go.write('disk', 20);
  s.write(Buffer.concat([f, go]));
  for (;;) {
    const r = await rx.take(20);
    await rx.take(r.readUInt32BE(16));
    if (r.readUInt32BE(12) === P.REP_ACK) return { s, rx };
    assert.equal(r.readUInt32BE(12), P.REP_INFO, 'GO answered');
  }
}
