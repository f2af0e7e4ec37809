// A bounded protocol fuzzer against the NBD server: random and mutated handshakes and requests,
// truncated messages, oversize lengths, garbage magic — while a well-behaved client goes on
// getting correct answers. The server must never crash, hang other connections or grow without bound.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createConnection } from 'node:net';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { NbdServer, connectNbd } from '../../src/nbd/index.js';
import { openRawFile } from '../../src/block/index.js';
import * as P from '../../src/nbd/protocol.js';
import { tempDir } from '../support/tmp.js';
import { logger } from '../../src/common/index.js';

const MiB = 1024 * 1024;
const DURATION_MS = Number(process.env.HAVEN_FUZZ_MS ?? 12_000);

class Rng {
  constructor(private s: number) {}
  next(): number {
    this.s = (this.s * 1103515245 + 12345) & 0x7fffffff;
    return this.s >>> 4;
  }
  int(n: number): number {
    return this.next() % n;
  }
  bytes(n: number): Buffer {
    const b = Buffer.alloc(n);
    for (let i = 0; i < n; i++) b[i] = this.int(256);
    return b;
  }
}

function option(opt: number, data: Buffer = Buffer.alloc(0), lengthOverride?: number): Buffer {
  const b = Buffer.alloc(16);
  b.writeBigUInt64BE(P.IHAVEOPT, 0);
  b.writeUInt32BE(opt, 8);
  b.writeUInt32BE(lengthOverride ?? data.length, 12);
  return Buffer.concat([b, data]);
}

function goData(name: string): Buffer {
  const n = Buffer.from(name);
  const b = Buffer.alloc(6 + n.length);
  b.writeUInt32BE(n.length, 0);
  n.copy(b, 4);
  return b;
}

function metaData(name: string, context: string): Buffer {
  const n = Buffer.from(name);
  const c = Buffer.from(context);
  const b = Buffer.alloc(12 + n.length + c.length);
  b.writeUInt32BE(n.length, 0);
  n.copy(b, 4);
  b.writeUInt32BE(1, 4 + n.length);
  b.writeUInt32BE(c.length, 8 + n.length);
  c.copy(b, 12 + n.length);
  return b;
}

function request(rng: Rng, size: number): Buffer {
  const h = Buffer.alloc(28);
  const type = rng.int(10);
  h.writeUInt32BE(rng.int(20) === 0 ? rng.next() : P.REQUEST_MAGIC, 0);
  h.writeUInt16BE(rng.int(4) === 0 ? rng.int(65536) : rng.int(32), 4);
  h.writeUInt16BE(type, 6);
  h.writeBigUInt64BE(BigInt(rng.next()), 8);
  const offChoice = rng.int(5);
  const offset =
    offChoice === 0 ? BigInt(rng.next()) * 0x100000000n + BigInt(rng.next()) : BigInt(rng.int(size + 4096));
  h.writeBigUInt64BE(offset & 0xffffffffffffffffn, 16);
  const len = rng.int(8) === 0 ? rng.next() * 2 : rng.int(256 * 1024);
  h.writeUInt32BE(len >>> 0, 24);
  // A write carries (up to) its payload; sometimes less: a truncated message.
  if (type === P.CMD_WRITE && len <= 256 * 1024)
    return Buffer.concat([h, Buffer.alloc(rng.int(4) === 0 ? rng.int(len + 1) : len)]);
  return h;
}

/** One hostile client: sends `data` in random fragments, reads and discards what comes back. */
function hostile(path: string, data: Buffer, rng: Rng): Promise<void> {
  return new Promise((resolve) => {
    const s = createConnection(path);
    const done = () => {
      s.destroy();
      resolve();
    };
    s.on('error', done);
    s.on('close', done);
    s.on('data', () => undefined);
    s.on('connect', async () => {
      let at = 0;
      while (at < data.length && !s.destroyed) {
        const n = 1 + rng.int(Math.min(4096, data.length - at));
        s.write(data.subarray(at, at + n));
        at += n;
        if (rng.int(8) === 0) await sleep(rng.int(3));
      }
      await sleep(rng.int(50));
      done();
    });
    setTimeout(done, 2000).unref();
  });
}

test('the NBD server survives a protocol fuzzer while serving a well-behaved client', async (t) => {
  const tmp = tempDir();
  t.after(tmp.cleanup);
  const seed = Number(process.env.HAVEN_FUZZ_SEED ?? Date.now() % 1_000_000);
  t.diagnostic(`fuzz seed ${seed} (HAVEN_FUZZ_SEED=${seed} repeats this run)`);
  const rng = new Rng(seed);
  const size = 16 * MiB;
  for (const f of ['fuzz.img', 'good.img']) writeFileSync(join(tmp.path, f), Buffer.alloc(size));
  // Hostile clients are logged as warnings; keep the test's output to what it found.
  const server = new NbdServer({
    log: logger('nbd-fuzz').child({}, { level: 'error' }),
    defaultExport: 'fuzz',
  });
  server.addExport({ name: 'fuzz', device: openRawFile(join(tmp.path, 'fuzz.img')) });
  server.addExport({ name: 'good', device: openRawFile(join(tmp.path, 'good.img')) });
  const sock = join(tmp.path, 'nbd.sock');
  await server.listen({ path: sock });
  t.after(() => server.close());

  // Good handshakes to mutate and to send requests after: by name and as the default export,
  // both with base:allocation (so BLOCK_STATUS reaches the device, not just the refusal).
  const handshakes = ['fuzz', ''].map((name) =>
    Buffer.concat([
      Buffer.from([0, 0, 0, 3]),
      option(P.OPT_STRUCTURED_REPLY),
      option(P.OPT_SET_META_CONTEXT, metaData(name, 'base:allocation')),
      option(P.OPT_GO, goData(name)),
    ]),
  );
  const heap0 = process.memoryUsage().heapUsed;
  const deadline = Date.now() + DURATION_MS;
  let hostileConnections = 0;

  // The well-behaved client: writes and reads back its own data all along.
  const good = (async () => {
    const dev = await connectNbd(`nbd+unix:///good?socket=${sock}`);
    const shadow = Buffer.alloc(size);
    let ops = 0;
    while (Date.now() < deadline) {
      const off = rng.int(size / 4096) * 4096;
      const data = rng.bytes(4096);
      await dev.write(data, off);
      data.copy(shadow, off);
      const back = Buffer.alloc(4096);
      const roff = rng.int(size / 4096) * 4096;
      await dev.read(back, roff);
      assert.ok(
        back.equals(shadow.subarray(roff, roff + 4096)),
        `the good client read wrong data at ${roff}`,
      );
      ops++;
    }
    await dev.close();
    return ops;
  })();

  const fuzzers = Array.from({ length: 6 }, async () => {
    while (Date.now() < deadline) {
      const kind = rng.int(6);
      const valid = handshakes[rng.int(2)]!;
      let data: Buffer;
      if (kind === 0)
        data = rng.bytes(rng.int(2000)); // noise
      else if (kind === 1) {
        data = Buffer.from(valid); // a mutated good handshake
        for (let i = 0; i < 1 + rng.int(4); i++) data[rng.int(data.length)] = rng.int(256);
      } else if (kind === 2)
        data = Buffer.concat([
          valid.subarray(0, 4),
          option(rng.int(20), Buffer.alloc(0), rng.int(2) ? 0xffffffff : 70000),
        ]);
      else if (kind === 3)
        data = valid.subarray(0, rng.int(valid.length)); // truncated
      else {
        const reqs = Array.from({ length: 1 + rng.int(20) }, () => request(rng, size));
        data = Buffer.concat([valid, ...reqs]);
      }
      await hostile(sock, data, rng);
      hostileConnections++;
    }
  });
  const [ops] = await Promise.all([good, ...fuzzers]);
  t.diagnostic(`${hostileConnections} hostile connections, ${ops} good operations`);
  assert.ok(hostileConnections > 100, 'the fuzzer ran');
  assert.ok((ops as number) > 100, 'the good client kept being served');

  // Still serving, and memory did not run away.
  const after = await connectNbd(`nbd+unix:///good?socket=${sock}`);
  const b = Buffer.alloc(512);
  await after.read(b, 0);
  await after.close();
  global.gc?.();
  const grown = process.memoryUsage().heapUsed - heap0;
  assert.ok(grown < 200 * MiB, `heap grew by ${Math.round(grown / MiB)} MiB`);
});
