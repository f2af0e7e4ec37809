/**
 * A strict NBD load client for data-path tests: many requests in flight on one connection
 * (random reads, writes, zeroes and flushes of mixed sizes over its own region of the export),
 * every reply checked as it arrives — its magic, its cookie, its length, the chunks of a
 * structured read covering exactly what was asked — and every byte read compared with a model
 * of what the region must hold. A request never overlaps one in flight, so the model is exact.
 *
 * `slowReader` makes the client a reader that takes its replies in bursts (it pauses its socket
 * every few hundred KiB for a moment): the server's writes then queue in its socket, its reads
 * stop for backpressure and its zero-copy sends stop half-way, which is where reused buffers
 * and the order of writers on a socket are put to the test.
 */
import { randomFillSync } from 'node:crypto';
import type { Socket } from 'node:net';
import * as P from '../../src/nbd/protocol.js';

export interface StressOptions {
  socket: Socket;
  exportName: string;
  /** What the connection may touch: [offset, offset + model.length) of the export. */
  offset: number;
  /** The region's contents now; updated as the client writes. */
  model: Buffer;
  /** Requests to send in all. */
  requests: number;
  depth: number;
  /** Request sizes, multiples of 4 KiB from `minSize` to `maxSize`. */
  minSize?: number;
  maxSize?: number;
  structured?: boolean;
  slowReader?: boolean;
  /**
   * Every `every` replies, when at least `minPendingRead` bytes of large reads are in flight,
   * the client stops reading until `until()` resolves (a test resolves it on an event of the
   * server: e.g. when a send that filled the socket gave up), or skips the stall when `until()`
   * returns undefined (nothing to wait for).
   */
  stall?: { every: number; until: () => Promise<void> | undefined; minPendingRead?: number };
  /** A deterministic sequence of requests (a small xorshift generator). */
  seed: number;
}

export interface StressResult {
  reads: number;
  writes: number;
  zeroes: number;
  flushes: number;
  bytesRead: number;
  bytesWritten: number;
  /** Stalls that waited (see `stall`). */
  stalls: number;
}

const KiB = 1024;

class Rng {
  constructor(private s: number) {
    if (this.s === 0) this.s = 0x9e3779b9;
  }
  next(): number {
    let x = this.s;
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    this.s = x >>> 0;
    return this.s / 0x100000000;
  }
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
}

/** Received bytes, taken in exact amounts (concatenated only where a take spans chunks). */
class Bytes {
  private chunks: Buffer[] = [];
  private head = 0;
  length = 0;
  push(b: Buffer): void {
    this.chunks.push(b);
    this.length += b.length;
  }
  take(n: number): Buffer {
    if (n === 0) return Buffer.alloc(0);
    const first = this.chunks[0]!;
    if (first.length - this.head >= n) {
      const out = first.subarray(this.head, this.head + n);
      this.advance(n);
      return out;
    }
    const out = Buffer.allocUnsafe(n);
    let at = 0;
    while (at < n) {
      const c = this.chunks[0]!;
      const k = Math.min(n - at, c.length - this.head);
      c.copy(out, at, this.head, this.head + k);
      at += k;
      this.advance(k);
    }
    return out;
  }
  peek32(at: number): number {
    const b = Buffer.allocUnsafe(4);
    let got = 0;
    let i = 0;
    let pos = this.head + at;
    while (got < 4) {
      const c = this.chunks[i]!;
      if (pos >= c.length) {
        pos -= c.length;
        i++;
        continue;
      }
      b[got++] = c[pos++]!;
    }
    return b.readUInt32BE(0);
  }
  private advance(n: number): void {
    this.head += n;
    this.length -= n;
    if (this.head === this.chunks[0]!.length) {
      this.chunks.shift();
      this.head = 0;
    }
  }
}

interface Pending {
  type: number;
  offset: number; // within the region
  length: number;
  /** Reads: the bytes expected (a copy of the model when sent). */
  expect?: Buffer;
  /** Structured reads: bytes of the read covered by chunks so far. */
  covered: number;
}

/** Runs the handshake, then the load; rejects with the first thing that is wrong. */
export async function stressNbd(o: StressOptions): Promise<StressResult> {
  const sock = o.socket;
  const rng = new Rng(o.seed);
  const min = (o.minSize ?? 4 * KiB) / (4 * KiB);
  const max = (o.maxSize ?? 1024 * KiB) / (4 * KiB);
  const size = o.model.length;
  const rx = new Bytes();
  const res: StressResult = {
    reads: 0,
    writes: 0,
    zeroes: 0,
    flushes: 0,
    bytesRead: 0,
    bytesWritten: 0,
    stalls: 0,
  };
  let wake: (() => void) | undefined;
  let failure: Error | undefined;
  let ended = false;
  sock.on('data', (d: Buffer) => {
    rx.push(d);
    wake?.();
  });
  sock.on('close', () => {
    ended = true;
    wake?.();
  });
  sock.on('error', (e) => {
    failure ??= e;
    wake?.();
  });
  const need = async (n: number) => {
    while (rx.length < n) {
      if (failure) throw failure;
      if (ended) throw new Error(`connection closed (wanted ${n} bytes, have ${rx.length})`);
      await new Promise<void>((r) => (wake = r));
      wake = undefined;
    }
  };

  // ---- handshake: fixed newstyle, no zeroes, [structured replies], GO ----
  await need(18);
  const g = rx.take(18);
  if (g.readBigUInt64BE(0) !== P.NBDMAGIC || g.readBigUInt64BE(8) !== P.IHAVEOPT)
    throw new Error('bad greeting');
  const flags = Buffer.alloc(4);
  flags.writeUInt32BE(P.FLAG_C_FIXED_NEWSTYLE | P.FLAG_C_NO_ZEROES);
  sock.write(flags);
  const option = async (opt: number, data: Buffer): Promise<number> => {
    const h = Buffer.alloc(16);
    h.writeBigUInt64BE(P.IHAVEOPT, 0);
    h.writeUInt32BE(opt, 8);
    h.writeUInt32BE(data.length, 12);
    sock.write(Buffer.concat([h, data]));
    for (;;) {
      await need(20);
      const r = rx.take(20);
      if (r.readBigUInt64BE(0) !== P.OPTION_REPLY_MAGIC) throw new Error('bad option reply magic');
      const type = r.readUInt32BE(12);
      const len = r.readUInt32BE(16);
      await need(len);
      rx.take(len);
      if (type !== P.REP_INFO) return type;
    }
  };
  if (o.structured && (await option(P.OPT_STRUCTURED_REPLY, Buffer.alloc(0))) !== P.REP_ACK)
    throw new Error('structured replies refused');
  const name = Buffer.from(o.exportName);
  const go = Buffer.alloc(6 + name.length);
  go.writeUInt32BE(name.length, 0);
  name.copy(go, 4);
  if ((await option(P.OPT_GO, go)) !== P.REP_ACK) throw new Error('GO refused');

  // ---- transmission ----
  const pending = new Map<bigint, Pending>();
  let nextCookie = 1n;
  let sent = 0;
  const overlaps = (off: number, len: number) => {
    for (const p of pending.values())
      if (p.length > 0 && off < p.offset + p.length && p.offset < off + len) return true;
    return false;
  };
  const send = () => {
    while (sent < o.requests && pending.size < o.depth) {
      const len = (min + rng.int(max - min + 1)) * 4 * KiB;
      const off = rng.int((size - len) / (4 * KiB) + 1) * 4 * KiB;
      const pick = rng.next();
      const type =
        pick < 0.47 ? P.CMD_READ : pick < 0.94 ? P.CMD_WRITE : pick < 0.98 ? P.CMD_WRITE_ZEROES : P.CMD_FLUSH;
      if (type !== P.CMD_FLUSH && overlaps(off, len)) return; // after a reply, try again
      const cookie = nextCookie++;
      const h = Buffer.alloc(28);
      h.writeUInt32BE(P.REQUEST_MAGIC, 0);
      const fua = type === P.CMD_WRITE && rng.int(16) === 0;
      h.writeUInt16BE(fua ? P.CMD_FLAG_FUA : 0, 4);
      h.writeUInt16BE(type, 6);
      h.writeBigUInt64BE(cookie, 8);
      const p: Pending = { type, offset: off, length: type === P.CMD_FLUSH ? 0 : len, covered: 0 };
      if (type !== P.CMD_FLUSH) {
        h.writeBigUInt64BE(BigInt(o.offset + off), 16);
        h.writeUInt32BE(len, 24);
      }
      pending.set(cookie, p);
      sent++;
      if (type === P.CMD_READ) {
        p.expect = Buffer.from(o.model.subarray(off, off + len));
        sock.write(h);
      } else if (type === P.CMD_WRITE) {
        const data = Buffer.allocUnsafe(len);
        randomFillSync(data);
        // Each 4 KiB block names its request: a block from the wrong write is told apart.
        for (let b = 0; b < len; b += 4 * KiB) data.writeBigUInt64BE(cookie, b);
        data.copy(o.model, off);
        sock.write(h);
        sock.write(data);
        res.bytesWritten += len;
      } else {
        if (type === P.CMD_WRITE_ZEROES) o.model.fill(0, off, off + len);
        sock.write(h);
      }
    }
  };

  let burst = 0;
  let replies = 0;
  /** Bytes of reads of 64 KiB or more in flight (what the server may be sending from the file). */
  const pendingRead = () => {
    let n = 0;
    for (const p of pending.values()) if (p.type === P.CMD_READ && p.length >= 64 * KiB) n += p.length;
    return n;
  };
  const slow = async () => {
    replies++;
    if (o.stall && replies % o.stall.every === 0 && pendingRead() >= (o.stall.minPendingRead ?? 0)) {
      const until = o.stall.until();
      if (until) {
        sock.pause();
        await until;
        sock.resume();
        res.stalls++;
      }
    }
    if (!o.slowReader) return;
    burst += 1;
    if (burst % 8 !== 0) return;
    sock.pause();
    setTimeout(() => sock.resume(), 1 + rng.int(4));
  };

  const fail = (msg: string) => {
    throw new Error(`${msg} (after ${res.reads + res.writes + res.zeroes + res.flushes} replies)`);
  };
  const compare = (p: Pending, at: number, got: Buffer, what: string) => {
    const want = p.expect!.subarray(at, at + got.length);
    if (!want.equals(got)) {
      let i = 0;
      while (want[i] === got[i]) i++;
      fail(
        `${what}: read of ${p.length} at ${o.offset + p.offset} differs at byte ${at + i} ` +
          `(block names write ${got.readBigUInt64BE(Math.floor(i / 4096) * 4096)}, ` +
          `expected ${want.readBigUInt64BE(Math.floor(i / 4096) * 4096)})`,
      );
    }
  };
  const done = (cookie: bigint, p: Pending) => {
    pending.delete(cookie);
    if (p.type === P.CMD_READ) {
      res.reads++;
      res.bytesRead += p.length;
    } else if (p.type === P.CMD_WRITE) res.writes++;
    else if (p.type === P.CMD_WRITE_ZEROES) res.zeroes++;
    else res.flushes++;
  };

  send();
  while (pending.size > 0) {
    await need(4);
    const magic = rx.peek32(0);
    if (magic === P.SIMPLE_REPLY_MAGIC) {
      await need(16);
      const r = rx.take(16);
      const errno = r.readUInt32BE(4);
      const cookie = r.readBigUInt64BE(8);
      const p = pending.get(cookie);
      if (!p) fail(`simple reply for unknown cookie ${cookie}`);
      if (errno) fail(`request ${cookie} (type ${p!.type}) failed: errno ${errno}`);
      if (p!.type === P.CMD_READ) {
        if (o.structured) fail(`simple reply to a structured read ${cookie}`);
        await need(p!.length);
        compare(p!, 0, rx.take(p!.length), 'simple reply');
      }
      done(cookie, p!);
    } else if (magic === P.STRUCTURED_REPLY_MAGIC) {
      await need(20);
      const r = rx.take(20);
      const flags = r.readUInt16BE(4);
      const type = r.readUInt16BE(6);
      const cookie = r.readBigUInt64BE(8);
      const len = r.readUInt32BE(16);
      const p = pending.get(cookie);
      if (!p || p.type !== P.CMD_READ) fail(`structured reply for cookie ${cookie}, not a read in flight`);
      if (len > p!.length + 8 + 1024) fail(`chunk of ${len} bytes for a read of ${p!.length}`);
      await need(len);
      const body = rx.take(len);
      if (type === P.REPLY_TYPE_OFFSET_DATA) {
        const at = Number(body.readBigUInt64BE(0)) - o.offset - p!.offset;
        if (at < 0 || at + len - 8 > p!.length) fail(`data chunk outside read ${cookie}`);
        compare(p!, at, body.subarray(8), 'data chunk');
        p!.covered += len - 8;
      } else if (type === P.REPLY_TYPE_OFFSET_HOLE) {
        const at = Number(body.readBigUInt64BE(0)) - o.offset - p!.offset;
        const n = body.readUInt32BE(8);
        if (at < 0 || at + n > p!.length) fail(`hole chunk outside read ${cookie}`);
        compare(p!, at, Buffer.alloc(n), 'hole chunk');
        p!.covered += n;
      } else if (type !== P.REPLY_TYPE_NONE) fail(`chunk type ${type} for read ${cookie}`);
      if (flags & P.REPLY_FLAG_DONE) {
        if (p!.covered !== p!.length) fail(`read ${cookie} done with ${p!.covered} of ${p!.length} bytes`);
        done(cookie, p!);
      }
    } else fail(`invalid reply magic 0x${magic.toString(16)}`);
    await slow();
    send();
  }
  return res;
}

/** Ends a connection cleanly (NBD_CMD_DISC). */
export function disconnect(sock: Socket): void {
  const h = Buffer.alloc(28);
  h.writeUInt32BE(P.REQUEST_MAGIC, 0);
  h.writeUInt16BE(P.CMD_DISC, 6);
  sock.end(h);
}
