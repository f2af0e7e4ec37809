import type { Socket } from 'node:net';
import { HavenError, type HavenErrorCode } from '../../common/index.js';
import type { Extent } from '../../block/index.js';
import * as P from '../protocol.js';
import type { Negotiated } from './handshake.js';

/**
 * One NBD connection in transmission phase ("Transmission" in doc/proto.md).
 *
 * Requests are pipelined: each gets a cookie, goes out at once while the window allows (at most
 * `maxRequests` requests and `maxBytes` payload bytes in flight; more wait in a queue), and its
 * reply is matched by cookie in whatever order the server answers.
 *
 * Receiving is a byte-exact state machine over the socket's chunks with no concatenation:
 * headers are gathered into one small reused buffer, read payloads (simple replies and
 * NBD_REPLY_TYPE_OFFSET_DATA) are copied once from the socket chunk straight into the caller's
 * buffer, OFFSET_HOLE zero-fills it, and only block-status and error payloads are collected.
 *
 * When the connection drops, every request in flight or queued rejects with one clear IO error,
 * and so does every later call.
 */

export interface ConnectionOptions {
  /** For messages: the URI or server name. */
  label: string;
  maxRequests?: number;
  maxBytes?: number;
}

type Kind = 'read' | 'write' | 'flush' | 'trim' | 'write zeroes' | 'block status' | 'cache';

interface Request {
  cookie: number;
  kind: Kind;
  offset: number;
  length: number;
  /** Payload bytes this request holds in the window. */
  bytes: number;
  /** Header (and payload) to send. */
  out: Uint8Array[];
  /** Read destination. */
  dest?: Uint8Array;
  /** Block status: context id → extents. */
  status?: Map<number, Extent[]>;
  error?: HavenError;
  resolve: (v: unknown) => void;
  reject: (e: HavenError) => void;
}

// Receive states.
const S_MAGIC = 0; // gathering 4 bytes of magic
const S_SIMPLE = 1; // rest of a simple reply header (12 bytes)
const S_CHUNK = 2; // rest of a structured chunk header (16 bytes)
const S_READ_DATA = 3; // payload straight into dest
const S_DATA_OFFSET = 4; // 8-byte offset of an OFFSET_DATA chunk
const S_COLLECT = 5; // whole chunk payload into `collect`

const ERRNO_NAMES: Record<number, string> = {
  [P.EPERM]: 'EPERM',
  [P.EIO]: 'EIO',
  [P.ENOMEM]: 'ENOMEM',
  [P.EINVAL]: 'EINVAL',
  [P.ENOSPC]: 'ENOSPC',
  [P.EOVERFLOW]: 'EOVERFLOW',
  [P.ENOTSUP]: 'ENOTSUP',
  [P.ESHUTDOWN]: 'ESHUTDOWN',
};

/** Largest collected (non-read) chunk payload we accept: block status of 2^20 extents, plus slack. */
const MAX_COLLECT = 16 * 1024 * 1024;

export class NbdConnection {
  readonly size: number;
  readonly flags: number;
  readonly structured: boolean;
  private readonly label: string;
  private readonly maxRequests: number;
  private readonly maxBytes: number;
  private readonly socket: Socket;

  private nextCookie = 1;
  private readonly inflight = new Map<number, Request>();
  private readonly queue: Request[] = [];
  private inflightBytes = 0;
  private closedError?: HavenError;
  private closing = false;

  // Receive state.
  private state = S_MAGIC;
  private readonly hdr = Buffer.alloc(32);
  private target: Uint8Array = this.hdr;
  private tpos = 0;
  private tend = 4;
  private cur?: Request;
  private chunkFlags = 0;
  private chunkType = 0;
  private chunkLen = 0;
  private collect?: Buffer;

  constructor(n: Negotiated, opts: ConnectionOptions) {
    this.socket = n.socket;
    this.size = n.size;
    this.flags = n.flags;
    this.structured = n.structured;
    this.label = opts.label;
    this.maxRequests = opts.maxRequests ?? 64;
    this.maxBytes = opts.maxBytes ?? 64 * 1024 * 1024;
    this.socket.on('data', (b: Buffer) => this.onData(b));
    this.socket.on('error', (e) => this.fail(`connection error: ${e.message}`));
    this.socket.on('close', () => this.fail('the server closed the connection'));
  }

  get inFlight(): number {
    return this.inflight.size + this.queue.length;
  }
  get alive(): boolean {
    return !this.closedError;
  }

  read(dest: Uint8Array, offset: number): Promise<void> {
    return this.submit(P.CMD_READ, 'read', 0, offset, dest.length, { dest }) as Promise<void>;
  }

  write(data: readonly Uint8Array[], offset: number, length: number, fua: boolean): Promise<void> {
    return this.submit(P.CMD_WRITE, 'write', fua ? P.CMD_FLAG_FUA : 0, offset, length, {
      payload: data,
    }) as Promise<void>;
  }

  flush(): Promise<void> {
    return this.submit(P.CMD_FLUSH, 'flush', 0, 0, 0) as Promise<void>;
  }

  trim(offset: number, length: number, fua: boolean): Promise<void> {
    return this.submit(P.CMD_TRIM, 'trim', fua ? P.CMD_FLAG_FUA : 0, offset, length) as Promise<void>;
  }

  writeZeroes(offset: number, length: number, cmdFlags: number): Promise<void> {
    return this.submit(P.CMD_WRITE_ZEROES, 'write zeroes', cmdFlags, offset, length) as Promise<void>;
  }

  cache(offset: number, length: number): Promise<void> {
    return this.submit(P.CMD_CACHE, 'cache', 0, offset, length) as Promise<void>;
  }

  /** Raw block status: extents per meta-context id, as the server sent them. */
  blockStatus(offset: number, length: number): Promise<Map<number, Extent[]>> {
    return this.submit(P.CMD_BLOCK_STATUS, 'block status', 0, offset, length, {
      status: new Map(),
    }) as Promise<Map<number, Extent[]>>;
  }

  /** Sends NBD_CMD_DISC once everything in flight has been answered, and closes the socket. */
  async disconnect(): Promise<void> {
    if (this.closedError || this.closing) return;
    await Promise.allSettled([...this.inflight.values(), ...this.queue].map((r) => this.settled(r)));
    if (this.closedError) return;
    this.closing = true;
    const h = Buffer.alloc(28);
    h.writeUInt32BE(P.REQUEST_MAGIC, 0);
    h.writeUInt16BE(P.CMD_DISC, 6);
    await new Promise<void>((resolve) => {
      this.socket.once('close', () => resolve());
      this.socket.end(h);
      setTimeout(() => (this.socket.destroy(), resolve()), 2000).unref();
    });
  }

  /** Drops the connection at once (pending requests reject). */
  destroy(): void {
    this.socket.destroy();
    this.fail('the connection was closed by the client');
  }

  private settled(r: Request): Promise<void> {
    return new Promise((resolve) => {
      const { resolve: res, reject: rej } = r;
      r.resolve = (v) => (res(v), resolve());
      r.reject = (e) => (rej(e), resolve());
    });
  }

  private submit(
    type: number,
    kind: Kind,
    cmdFlags: number,
    offset: number,
    length: number,
    extra: { dest?: Uint8Array; payload?: readonly Uint8Array[]; status?: Map<number, Extent[]> } = {},
  ): Promise<unknown> {
    if (this.closedError) return Promise.reject(this.closedError);
    if (this.closing) return Promise.reject(this.err('IO', `${kind}: the connection is closing`));
    return new Promise((resolve, reject) => {
      const cookie = this.nextCookie;
      this.nextCookie = this.nextCookie >= 0xffffffff ? 1 : this.nextCookie + 1;
      const h = Buffer.allocUnsafe(28);
      h.writeUInt32BE(P.REQUEST_MAGIC, 0);
      h.writeUInt16BE(cmdFlags, 4);
      h.writeUInt16BE(type, 6);
      h.writeUInt32BE(0, 8);
      h.writeUInt32BE(cookie, 12);
      h.writeUInt32BE(Math.floor(offset / 0x100000000), 16);
      h.writeUInt32BE(offset >>> 0, 20);
      h.writeUInt32BE(length, 24);
      const out: Uint8Array[] = extra.payload ? [h, ...extra.payload] : [h];
      const bytes = type === P.CMD_READ || type === P.CMD_WRITE ? length : 0;
      const r: Request = {
        cookie,
        kind,
        offset,
        length,
        bytes,
        out,
        dest: extra.dest,
        status: extra.status,
        resolve,
        reject: reject as (e: HavenError) => void,
      };
      if (this.queue.length === 0 && this.fits(r)) this.send(r);
      else this.queue.push(r);
    });
  }

  private fits(r: Request): boolean {
    if (this.inflight.size === 0) return true;
    return this.inflight.size < this.maxRequests && this.inflightBytes + r.bytes <= this.maxBytes;
  }

  private send(r: Request) {
    this.inflight.set(r.cookie, r);
    this.inflightBytes += r.bytes;
    if (r.out.length === 1) this.socket.write(r.out[0]!);
    else {
      this.socket.cork();
      for (const b of r.out) this.socket.write(b);
      this.socket.uncork();
    }
    r.out = [];
  }

  private pump() {
    let sent = 0;
    while (this.queue.length && this.fits(this.queue[0]!)) {
      if (sent++ === 0) this.socket.cork();
      this.send(this.queue.shift()!);
    }
    if (sent) this.socket.uncork();
  }

  private complete(r: Request) {
    this.inflight.delete(r.cookie);
    this.inflightBytes -= r.bytes;
    if (r.error) r.reject(r.error);
    else r.resolve(r.status);
    this.pump();
  }

  private err(code: HavenErrorCode, msg: string) {
    return new HavenError(code, `NBD ${this.label}: ${msg}`);
  }

  private fail(reason: string) {
    if (this.closedError) return;
    const n = this.inflight.size + this.queue.length;
    this.closedError = this.err(
      'IO',
      this.closing && n === 0
        ? 'the connection is closed'
        : `${reason}${n ? ` (${n} request${n === 1 ? '' : 's'} in flight failed)` : ''}`,
    );
    const all = [...this.inflight.values(), ...this.queue];
    this.inflight.clear();
    this.queue.length = 0;
    this.inflightBytes = 0;
    for (const r of all) r.reject(this.closedError);
    if (!this.socket.destroyed) this.socket.destroy();
  }

  private protocol(msg: string): never {
    const e = this.err('PROTOCOL', `the server broke the protocol: ${msg}`);
    this.fail(e.message);
    throw e;
  }

  /** Maps an NBD error number to a HavenError for request `r`. */
  private replyError(r: Request, errno: number, message: string): HavenError {
    const beyond = r.offset + r.length > this.size;
    const code: HavenErrorCode =
      errno === P.EPERM
        ? 'READ_ONLY'
        : errno === P.EINVAL
          ? beyond
            ? 'OUT_OF_RANGE'
            : 'INVALID_ARGUMENT'
          : errno === P.EOVERFLOW
            ? 'OUT_OF_RANGE'
            : errno === P.ENOSPC
              ? 'NO_SPACE'
              : errno === P.ENOTSUP
                ? 'UNSUPPORTED'
                : 'IO';
    const name = ERRNO_NAMES[errno] ?? `errno ${errno}`;
    return this.err(
      code,
      `${r.kind} of ${r.length} bytes at offset ${r.offset} failed: ${name}${message ? ` (${message})` : ''}` +
        (beyond ? ` — beyond the export's size of ${this.size} bytes` : ''),
    );
  }

  private onData(chunk: Buffer) {
    try {
      let p = 0;
      const n = chunk.length;
      while (p < n) {
        const take = Math.min(this.tend - this.tpos, n - p);
        if (take > 0) {
          chunk.copy(this.target, this.tpos, p, p + take);
          this.tpos += take;
          p += take;
        }
        if (this.tpos === this.tend) this.step();
      }
    } catch (e) {
      if (!(e instanceof HavenError)) this.fail(`internal error decoding replies: ${String(e)}`);
    }
  }

  private expect(target: Uint8Array, pos: number, end: number, state: number) {
    this.target = target;
    this.tpos = pos;
    this.tend = end;
    this.state = state;
  }

  /** The current target is full: decide what comes next. */
  private step() {
    const h = this.hdr;
    switch (this.state) {
      case S_MAGIC: {
        const magic = h.readUInt32BE(0);
        if (magic === P.SIMPLE_REPLY_MAGIC) this.expect(h, 4, 16, S_SIMPLE);
        else if (magic === P.STRUCTURED_REPLY_MAGIC) {
          if (!this.structured) this.protocol('structured reply without negotiation');
          this.expect(h, 4, 20, S_CHUNK);
        } else this.protocol(`bad reply magic 0x${magic.toString(16)}`);
        return;
      }
      case S_SIMPLE: {
        const errno = h.readUInt32BE(4);
        const r = this.lookup(h.readUInt32BE(8), h.readUInt32BE(12));
        if (errno !== 0) {
          r.error = this.replyError(r, errno, '');
          return this.finish(r);
        }
        if (r.dest) {
          if (this.structured) this.protocol('simple reply with data to a read');
          if (r.dest.length === 0) return this.finish(r);
          this.cur = r;
          this.chunkFlags = P.REPLY_FLAG_DONE;
          return this.expect(r.dest, 0, r.dest.length, S_READ_DATA);
        }
        return this.finish(r);
      }
      case S_CHUNK: {
        this.chunkFlags = h.readUInt16BE(4);
        this.chunkType = h.readUInt16BE(6);
        const r = this.lookup(h.readUInt32BE(8), h.readUInt32BE(12));
        this.chunkLen = h.readUInt32BE(16);
        this.cur = r;
        if (this.chunkType === P.REPLY_TYPE_OFFSET_DATA) {
          if (!r.dest) this.protocol(`data chunk in the reply to a ${r.kind}`);
          if (this.chunkLen < 8) this.protocol('data chunk shorter than 8 bytes');
          return this.expect(h, 0, 8, S_DATA_OFFSET);
        }
        if (this.chunkLen === 0) return this.chunkDone(Buffer.alloc(0));
        if (this.chunkLen > MAX_COLLECT) this.protocol(`reply chunk of ${this.chunkLen} bytes is too large`);
        this.collect = Buffer.allocUnsafe(this.chunkLen);
        return this.expect(this.collect, 0, this.chunkLen, S_COLLECT);
      }
      case S_DATA_OFFSET: {
        const r = this.cur!;
        const off = h.readUInt32BE(0) * 0x100000000 + h.readUInt32BE(4);
        const len = this.chunkLen - 8;
        const at = off - r.offset;
        if (at < 0 || at + len > r.length)
          this.protocol(`data chunk [${off}, +${len}) outside the read [${r.offset}, +${r.length})`);
        if (len === 0) return this.chunkEnd(r);
        return this.expect(r.dest!, at, at + len, S_READ_DATA);
      }
      case S_READ_DATA:
        return this.chunkEnd(this.cur!);
      case S_COLLECT: {
        const b = this.collect!;
        this.collect = undefined;
        return this.chunkDone(b);
      }
    }
  }

  private lookup(hi: number, lo: number): Request {
    const r = hi === 0 ? this.inflight.get(lo) : undefined;
    if (!r) this.protocol(`reply for unknown cookie ${hi * 0x100000000 + lo}`);
    return r;
  }

  private finish(r: Request) {
    this.expect(this.hdr, 0, 4, S_MAGIC);
    this.cur = undefined;
    this.complete(r);
  }

  private chunkEnd(r: Request) {
    if (this.chunkFlags & P.REPLY_FLAG_DONE) this.finish(r);
    else {
      this.expect(this.hdr, 0, 4, S_MAGIC);
      this.cur = undefined;
    }
  }

  /** A collected (non-data) structured chunk is complete. */
  private chunkDone(b: Buffer) {
    const r = this.cur!;
    const t = this.chunkType;
    if (t === P.REPLY_TYPE_NONE) {
      if (b.length !== 0) this.protocol('NONE chunk with a payload');
      if (!(this.chunkFlags & P.REPLY_FLAG_DONE)) this.protocol('NONE chunk without the DONE flag');
    } else if (t === P.REPLY_TYPE_OFFSET_HOLE) {
      if (!r.dest || b.length !== 12) this.protocol(`bad hole chunk in the reply to a ${r.kind}`);
      const off = b.readUInt32BE(0) * 0x100000000 + b.readUInt32BE(4);
      const len = b.readUInt32BE(8);
      const at = off - r.offset;
      if (at < 0 || at + len > r.length || len === 0)
        this.protocol(`hole chunk [${off}, +${len}) outside the read [${r.offset}, +${r.length})`);
      r.dest.fill(0, at, at + len);
    } else if (t === P.REPLY_TYPE_BLOCK_STATUS) {
      if (!r.status || b.length < 12 || (b.length - 4) % 8 !== 0)
        this.protocol(`bad block status chunk in the reply to a ${r.kind}`);
      const id = b.readUInt32BE(0);
      const extents: Extent[] = [];
      let off = r.offset;
      for (let i = 4; i < b.length; i += 8) {
        const length = b.readUInt32BE(i);
        if (length === 0) this.protocol('block status extent of length 0');
        extents.push({ offset: off, length, flags: b.readUInt32BE(i + 4) });
        off += length;
      }
      r.status.set(id, extents);
    } else if (P.isReplyError(t)) {
      if (b.length < 6) this.protocol('error chunk shorter than 6 bytes');
      const errno = b.readUInt32BE(0);
      const mlen = b.readUInt16BE(4);
      if (6 + mlen > b.length) this.protocol('error chunk message overruns the chunk');
      let msg = b.toString('utf8', 6, 6 + mlen);
      if (t === P.REPLY_TYPE_ERROR_OFFSET && b.length >= 14 + mlen) {
        const at = b.readUInt32BE(6 + mlen) * 0x100000000 + b.readUInt32BE(10 + mlen);
        msg += `${msg ? ', ' : ''}at offset ${at}`;
      }
      if (errno === 0) this.protocol('error chunk with error 0');
      r.error ??= this.replyError(r, errno, msg);
    } else {
      this.protocol(`unknown reply chunk type ${t}`);
    }
    this.chunkEnd(r);
  }
}
