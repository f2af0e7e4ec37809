import type { Socket } from 'node:net';
import { TLSSocket, type TLSSocketOptions } from 'node:tls';
import { nativeIo, RECV, type Extent } from '../../block/index.js';
import { errorMessage, isPromise, type Logger, type MaybePromise } from '../../common/index.js';
import * as P from '../protocol.js';
import { BufferPool } from './buffer-pool.js';
import { ChunkQueue } from './chunk-queue.js';
import { FileSender, SEND_FILE_MIN } from './file-sender.js';
import { SocketReceiver, type ReceiveBufferPool } from './receive-buffers.js';
import type { MemoryBudget } from './memory-budget.js';
import {
  handleOption,
  type HandshakeHost,
  type HandshakeState,
  type MetaContext,
  type NbdExport,
} from './handshake.js';
import {
  CHUNK_HEADER,
  SIMPLE_HEADER,
  errnoFor,
  errorChunk,
  optionError,
  readOffset,
  simpleReply,
  writeChunkHeader,
  writeSimpleHeader,
} from './wire.js';
import type { TlsAuth } from './tls-auth.js';
import type { NbdRequestObserver, NbdRequestRecorder } from './observer.js';

export interface ConnectionHost extends HandshakeHost {
  tls: TlsAuth | undefined;
  /** From accept to the transmission phase; a client slower than this is dropped. */
  handshakeTimeoutMs: number;
  /** Called when the connection enters or leaves the transmission phase of an export. */
  attach(exp: NbdExport): void;
  detach(exp: NbdExport): void;
  log: Logger;
  buffers: BufferPool;
  /** Buffers plain sockets read into (receive-buffers.ts). */
  receiveBuffers: ReceiveBufferPool;
  memory: MemoryBudget;
  observer: NbdRequestObserver | undefined;
}

/** Node takes it on a server TLSSocket too, but its types only know it for tls.Server. */
interface PskServerOption {
  pskCallback(socket: TLSSocket, identity: string): Buffer | null;
}

const REQUEST_HEADER = 28;
const EMPTY = Buffer.alloc(0);
/** Writes at least this long whose payload is still arriving are received by the native side. */
const RECEIVE_MIN = 128 * 1024;
const EAGAIN = 11;
/** Replies one native receive job may queue (it stops when they are all unsent). */
const REPLIES_MAX = 256;

/** The part of a write's payload the native side did not receive in time (the client paused). */
interface RestOfWrite {
  cookie: Buffer;
  offset: number;
  remaining: number;
  length: number;
  fua: boolean;
  done: MaybePromise<void>[];
  fileErrno: number;
}

/** The parts of libuv's stream handle the native receive needs (Node keeps them stable). */
interface StreamHandle {
  reading: boolean;
  readStop(): number;
  readStart(): number;
}
/** Replies gathered from one socket read are sent together, but never more than this at once. */
const BATCH_LIMIT = 2 * 1024 * 1024;
/** Stop reading requests while this much is waiting to be sent, or this many are in flight. */
const MAX_UNSENT = 8 * 1024 * 1024;
const MAX_INFLIGHT = 256;
const MAX_INFLIGHT_BYTES = 8 * 1024 * 1024;
const MAX_EXTENTS = 1024;
/** Reads at least this long are split into data and hole chunks when the device reports holes. */
const HOLE_SPLIT_MIN = 64 * 1024;

const READ_FLAGS = P.CMD_FLAG_DF;
const WRITE_FLAGS = P.CMD_FLAG_FUA;
const ZERO_FLAGS = P.CMD_FLAG_FUA | P.CMD_FLAG_NO_HOLE | P.CMD_FLAG_FAST_ZERO;
const STATUS_FLAGS = P.CMD_FLAG_REQ_ONE;

type Phase = 'client-flags' | 'options' | 'transmission' | 'closing' | 'closed';

/**
 * One client, from the greeting to the end. The handshake runs as the states of proto.md's
 * "Newstyle negotiation"; the transmission phase follows the measured fast path (see
 * docs/decisions/0002-nbd-server-hot-path.md): every complete request in the received bytes is
 * handled at once, synchronous devices answer without a promise, and the replies of one socket
 * read go out in one write. Asynchronous results are answered as they complete (out of order).
 */
export class Connection {
  private socket: Socket;
  private readonly queue = new ChunkQueue();
  private phase: Phase = 'client-flags';
  private readonly st: HandshakeState = {
    tls: false,
    structured: false,
    noZeroes: false,
    contexts: [],
    contextsExport: undefined,
  };
  private exp: NbdExport | undefined;
  private readonly header = Buffer.allocUnsafe(REQUEST_HEADER);
  private batch: Buffer[] = [];
  private batchBytes = 0;
  private inflight = 0;
  private inflightBytes = 0;
  private waitingForDrain = false;
  /** Large reads go out from the file through this (plain sockets on file-backed exports). */
  private sender: FileSender | undefined;
  /** Socket writes not yet called back; a sender job starts only when none are. */
  private unsent = 0;
  /** Replies held while the sender owns the socket (or the rest of one of its replies is read). */
  private held: Buffer[] = [];
  private holding = false;
  /** Bytes of the request being handled taken from the server's memory budget, not yet owned. */
  private charge = 0;
  /** Reply buffers and the budget bytes each holds until the socket has sent it. */
  private readonly charged = new Map<Buffer, number>();
  private waitingForMemory = false;
  /** Reading is paused by us (backpressure, budget, shutdown); a native receive resumes it only if not. */
  private paused = false;
  /** Plain sockets in the transmission phase read into pooled buffers (receive-buffers.ts). */
  private receiver: SocketReceiver | undefined;
  /** The native side is reading a write's payload off the socket. */
  private receiving = false;
  private rest: RestOfWrite | undefined;
  /** The native job owns the socket's writes too (it answers the writes it receives). */
  private nativeWrites = false;
  /** The native receive's state and the replies it could not send (reused, one job at a time). */
  private readonly recvState = new Float64Array(RECV.COUNT);
  private readonly recvReplies = Buffer.allocUnsafeSlow(REPLIES_MAX * SIMPLE_HEADER);
  /** Request timing (metrics), resolved once for the export; absent: nothing is timed. */
  private rec: NbdRequestRecorder | undefined;
  /** The request being handled: its command and when it was taken (performance.now(), with `rec`). */
  private reqType = 0;
  private reqStart = 0;
  private readonly wakeForMemory = () => {
    this.waitingForMemory = false;
    if (this.phase !== 'transmission' || this.waitingForDrain || this.saturated()) return;
    this.resumeReading();
    this.pump();
  };
  private optionDiscard = 0;
  private draining: (() => void) | undefined;
  private handshakeTimer: NodeJS.Timeout | undefined;
  private pskIdentity: string | undefined;
  private authenticating = false;
  readonly closed: Promise<void>;
  private resolveClosed!: () => void;

  constructor(
    socket: Socket,
    private readonly host: ConnectionHost,
  ) {
    this.socket = socket;
    this.closed = new Promise((r) => (this.resolveClosed = r));
    socket.setNoDelay(true);
    this.listen(socket);
    // A client that never finishes its handshake must not hold a socket (and its buffers) forever.
    this.handshakeTimer = setTimeout(() => {
      this.host.log.warn(
        { remote: socket.remoteAddress, phase: this.phase, tls: this.st.tls },
        `closing NBD connection: no handshake within ${this.host.handshakeTimeoutMs} ms`,
      );
      this.socket.destroy();
      this.close();
    }, this.host.handshakeTimeoutMs);
    this.handshakeTimer.unref();
    // Greeting: fixed newstyle, and we can drop the 124 zero bytes.
    const g = Buffer.allocUnsafe(18);
    g.writeBigUInt64BE(P.NBDMAGIC, 0);
    g.writeBigUInt64BE(P.IHAVEOPT, 8);
    g.writeUInt16BE(P.FLAG_FIXED_NEWSTYLE | P.FLAG_NO_ZEROES, 16);
    socket.write(g);
  }

  /** Stops taking requests, lets those in flight finish, then closes. */
  shutdown(): Promise<void> {
    if (this.phase !== 'transmission' || this.inflight === 0) this.close();
    else {
      this.phase = 'closing';
      this.pauseReading();
      this.draining = () => this.close();
    }
    return this.closed;
  }

  private pauseReading(): void {
    this.paused = true;
    this.socket.pause();
  }

  /** Never while the native side reads the socket: it resumes reading itself when it is done. */
  private resumeReading(): void {
    this.paused = false;
    if (!this.receiving) this.socket.resume();
  }

  private listen(socket: Socket): void {
    socket.on('data', (chunk: Buffer) => {
      this.queue.push(chunk);
      this.pump();
    });
    socket.on('drain', () => {
      if (!this.waitingForDrain) return;
      this.waitingForDrain = false;
      if (this.phase === 'transmission' && !this.waitingForMemory) {
        this.resumeReading();
        this.pump();
      }
    });
    socket.on('error', (err) => this.host.log.debug({ err: err.message }, 'client connection error'));
    socket.on('close', () => this.close());
  }

  private close(): void {
    if (this.phase === 'closed') return;
    clearTimeout(this.handshakeTimer);
    const wasAttached = this.exp && (this.phase === 'transmission' || this.phase === 'closing');
    this.phase = 'closed';
    this.sender?.close();
    this.receiver?.close();
    this.held = [];
    this.host.memory.forget(this.wakeForMemory);
    for (const c of this.charged.values()) this.host.memory.give(c, this);
    this.charged.clear();
    if (wasAttached) this.host.detach(this.exp!);
    this.socket.end();
    this.socket.destroySoon?.();
    this.resolveClosed();
  }

  private protocolError(msg: string): void {
    this.host.log.warn({ remote: this.socket.remoteAddress }, `closing NBD connection: ${msg}`);
    this.socket.destroy();
    this.close();
  }

  private pump(): void {
    if (this.authenticating) return;
    try {
      if (this.phase === 'client-flags' || this.phase === 'options') this.negotiate();
      if (this.phase === 'transmission') this.transmit();
    } catch (err) {
      // Never let one client's bytes take the server down.
      this.host.log.error({ err: errorMessage(err) }, 'unexpected error on an NBD connection');
      this.socket.destroy();
      this.close();
    }
  }

  // ---- handshake -------------------------------------------------------------------------

  private negotiate(): void {
    const q = this.queue;
    if (this.phase === 'client-flags') {
      if (q.length < 4) return;
      const flags = q.takeCopy(4).readUInt32BE(0);
      if (flags & ~(P.FLAG_C_FIXED_NEWSTYLE | P.FLAG_C_NO_ZEROES))
        return this.protocolError(`unknown client flags ${flags}`);
      this.st.noZeroes = (flags & P.FLAG_C_NO_ZEROES) !== 0;
      this.phase = 'options';
    }
    while (this.phase === 'options') {
      if (this.optionDiscard > 0) {
        const n = Math.min(this.optionDiscard, q.length);
        q.skip(n);
        this.optionDiscard -= n;
        if (this.optionDiscard > 0) return;
        continue;
      }
      if (q.length < 16) return;
      q.peek(this.header, 16);
      if (this.header.readBigUInt64BE(0) !== P.IHAVEOPT) return this.protocolError('bad option magic');
      const option = this.header.readUInt32BE(8);
      const len = this.header.readUInt32BE(12);
      if (len > P.MAX_OPTION_LENGTH) {
        // Refuse without holding it: skip the data as it comes (bounded memory).
        q.skip(16);
        this.optionDiscard = len;
        this.socket.write(optionError(option, P.REP_ERR_TOO_BIG, `option data of ${len} bytes is too long`));
        continue;
      }
      if (q.length < 16 + len) return;
      q.skip(16);
      const data = q.takeCopy(len);
      const out = handleOption(this.host, this.st, option, data);
      for (const b of out.reply) this.socket.write(b);
      switch (out.next) {
        case 'options':
          break;
        case 'close':
          this.socket.end();
          this.close();
          return;
        case 'starttls':
          if (q.length > 0) return this.protocolError('client sent data before the TLS handshake');
          this.startTls();
          return;
        case 'transmission':
          clearTimeout(this.handshakeTimer);
          this.exp = out.export;
          this.host.attach(out.export);
          this.rec = this.host.observer?.forExport(out.export.name);
          this.phase = 'transmission';
          this.sender = this.st.tls ? undefined : this.openSender(out.export);
          if (!this.st.tls)
            this.receiver = SocketReceiver.attach(this.socket, this.host.receiveBuffers, {
              received: (chunk) => {
                this.queue.push(chunk);
                this.pump();
              },
              queued: (buf) => this.queue.references(buf),
            });
          return;
      }
    }
  }

  private startTls(): void {
    const plain = this.socket;
    const auth = this.host.tls!;
    plain.removeAllListeners('data');
    plain.removeAllListeners('drain');
    plain.removeAllListeners('close');
    plain.removeAllListeners('error');
    const options: TLSSocketOptions & PskServerOption = {
      isServer: true,
      secureContext: auth.context,
      requestCert: auth.requestCert,
      // Verified in auth.check below: Node itself does not on an upgraded socket.
      rejectUnauthorized: false,
      pskCallback: (_socket, identity) => {
        const key = auth.pskFor(identity);
        if (key) this.pskIdentity = identity;
        return key ?? null;
      },
    };
    const secure = new TLSSocket(plain, options);
    this.authenticating = true; // nothing is read before the client is known
    this.st.tls = true;
    this.socket = secure;
    secure.once('secure', () => {
      const r = auth.check(secure, this.pskIdentity);
      if ('refused' in r) {
        this.host.log.warn({ remote: plain.remoteAddress }, `closing NBD connection: ${r.refused}`);
        secure.destroy();
        this.close();
        return;
      }
      this.host.log.debug({ remote: plain.remoteAddress, client: r.who }, 'NBD client authenticated');
      this.authenticating = false;
      this.pump();
    });
    secure.on('error', (err) => {
      this.host.log.warn({ err: err.message }, 'TLS handshake or transport failed');
      this.close();
    });
    this.listen(secure);
  }

  // ---- transmission ----------------------------------------------------------------------

  private transmit(): void {
    const q = this.queue;
    const h = this.header;
    if (this.rest && !this.finishRest()) return;
    while (
      this.phase === 'transmission' &&
      !this.waitingForDrain &&
      !this.waitingForMemory &&
      !this.receiving &&
      !this.saturated() &&
      q.length >= REQUEST_HEADER
    ) {
      q.peek(h, REQUEST_HEADER);
      if (h.readUInt32BE(0) !== P.REQUEST_MAGIC) return this.protocolError('bad request magic');
      const flags = h.readUInt16BE(4);
      const type = h.readUInt16BE(6);
      const length = h.readUInt32BE(24);
      let payload: Buffer[] | undefined;
      if (type === P.CMD_WRITE) {
        if (length > P.MAX_PAYLOAD)
          return this.protocolError(`write of ${length} bytes exceeds the ${P.MAX_PAYLOAD}-byte limit`);
        if (q.length < REQUEST_HEADER + length) {
          if (length >= RECEIVE_MIN) this.receiveWrite(h, flags, length);
          break;
        }
      }
      // Data this request will hold: a write's payload, a read's reply buffer (none when sent from the file).
      const cost =
        type === P.CMD_WRITE
          ? length
          : type === P.CMD_READ && length <= P.MAX_PAYLOAD && !(this.sender && length >= SEND_FILE_MIN)
            ? length
            : 0;
      if (!this.host.memory.tryTake(cost, this)) {
        this.waitingForMemory = true;
        this.pauseReading();
        this.host.memory.wait(this.wakeForMemory);
        break;
      }
      if (type === P.CMD_WRITE) {
        q.skip(REQUEST_HEADER);
        payload = q.take(length);
      } else q.skip(REQUEST_HEADER);
      const cookie = Buffer.from(h.subarray(8, 16));
      const offset = readOffset(h, 16);
      this.charge = cost;
      this.request(type, flags, cookie, offset, length, payload);
      // Whatever the request did not keep (it failed, or completed at once) is given back now.
      if (this.charge) this.host.memory.give(this.charge, this);
      this.charge = 0;
      if (this.batchBytes >= BATCH_LIMIT) this.sendBatch();
    }
    this.sendBatch();
    this.kickSender();
  }

  private request(
    type: number,
    flags: number,
    cookie: Buffer,
    offset: number | undefined,
    length: number,
    payload?: Buffer[],
  ): void {
    const dev = this.exp!.device;
    if (this.rec) {
      this.reqType = type;
      this.reqStart = performance.now();
    }
    const fail = (errno: number, msg: string) => this.replyError(type, cookie, errno, msg);
    const allowed = (mask: number) => (flags & ~mask) === 0;

    if (type === P.CMD_DISC) {
      this.phase = 'closing';
      this.draining = () => this.close();
      if (this.inflight === 0) {
        this.sendBatch();
        this.close();
      }
      return;
    }
    if (offset === undefined)
      return fail(P.EINVAL, 'offset is beyond what Haven can represent exactly (2^53)');
    const inRange = offset + length <= dev.size;

    switch (type) {
      case P.CMD_READ: {
        if (!allowed(READ_FLAGS)) return fail(P.EINVAL, 'unknown flags on READ');
        if (length > P.MAX_PAYLOAD)
          return fail(P.EOVERFLOW, `read of ${length} bytes exceeds the ${P.MAX_PAYLOAD}-byte limit`);
        if (!inRange) return fail(P.EINVAL, 'read beyond the end of the export');
        return this.read(cookie, offset, length, (flags & P.CMD_FLAG_DF) !== 0);
      }
      case P.CMD_WRITE:
        if (!allowed(WRITE_FLAGS)) return fail(P.EINVAL, 'unknown flags on WRITE');
        break;
      case P.CMD_TRIM:
        if (!allowed(WRITE_FLAGS)) return fail(P.EINVAL, 'unknown flags on TRIM');
        break;
      case P.CMD_WRITE_ZEROES:
        if (!allowed(ZERO_FLAGS)) return fail(P.EINVAL, 'unknown flags on WRITE_ZEROES');
        break;
      case P.CMD_FLUSH:
        if (flags !== 0 || offset !== 0 || length !== 0)
          return fail(P.EINVAL, 'FLUSH takes no flags, offset or length');
        return this.complete(type, cookie, () => dev.flush());
      case P.CMD_CACHE:
        if (flags !== 0) return fail(P.EINVAL, 'unknown flags on CACHE');
        if (!inRange) return fail(P.EINVAL, 'cache request beyond the end of the export');
        return this.complete(type, cookie, () => dev.cache?.(offset, length));
      case P.CMD_BLOCK_STATUS:
        if (!allowed(STATUS_FLAGS)) return fail(P.EINVAL, 'unknown flags on BLOCK_STATUS');
        if (!this.st.structured || this.st.contexts.length === 0)
          return fail(P.EINVAL, 'no meta context was negotiated');
        if (length === 0 || !inRange) return fail(P.EINVAL, 'block status range is empty or beyond the end');
        return this.blockStatus(cookie, offset, length, (flags & P.CMD_FLAG_REQ_ONE) !== 0);
      default:
        return fail(P.EINVAL, `unknown command ${type}`);
    }

    // Writes, trims and zeroes.
    if (dev.readOnly) return fail(P.EPERM, 'the export is read-only');
    if (!inRange) return fail(P.ENOSPC, 'write beyond the end of the export');
    const fua = (flags & P.CMD_FLAG_FUA) !== 0;
    if (type === P.CMD_WRITE)
      return this.complete(type, cookie, () => dev.write(payload!, offset, { fua }), length, payload);
    if (type === P.CMD_TRIM) return this.complete(type, cookie, () => dev.trim(offset, length, { fua }));
    const zf = {
      fua,
      noHole: (flags & P.CMD_FLAG_NO_HOLE) !== 0,
      fastZero: (flags & P.CMD_FLAG_FAST_ZERO) !== 0,
    };
    return this.complete(type, cookie, () => dev.writeZeroes(offset, length, zf));
  }

  /** Runs an operation without reply data and answers with a simple reply. */
  private complete(
    type: number,
    cookie: Buffer,
    op: () => MaybePromise<void>,
    bytes = 0,
    payload?: Buffer[],
  ): void {
    let r: MaybePromise<void>;
    try {
      r = op();
    } catch (err) {
      return this.replyError(type, cookie, errnoFor(err, isWriteCommand(type)), errorMessage(err));
    }
    if (!isPromise(r)) return this.queueReply(simpleReply(0, cookie));
    // The device writes from views of the received bytes until it is done: not read into meanwhile.
    if (payload) this.receiver?.hold(payload, r);
    const held = this.claim();
    const start = this.reqStart;
    this.track(
      r.then(
        () => {
          this.timed(type, start);
          this.sendNow(simpleReply(0, cookie));
        },
        (err: unknown) => {
          this.timed(type, start);
          this.sendNow(this.errorReply(type, cookie, errnoFor(err, isWriteCommand(type)), errorMessage(err)));
        },
      ),
      bytes,
      held,
    );
  }

  private read(cookie: Buffer, offset: number, length: number, dontFragment: boolean): void {
    const dev = this.exp!.device;
    const structured = this.st.structured;
    if (length === 0) {
      // A data chunk must carry at least one byte (proto.md): answer an empty read with NONE.
      if (!structured) return this.queueReply(simpleReply(0, cookie));
      const none = Buffer.allocUnsafe(CHUNK_HEADER);
      writeChunkHeader(none, 0, P.REPLY_FLAG_DONE, P.REPLY_TYPE_NONE, cookie, 0);
      return this.queueReply(none);
    }
    if (structured && !dontFragment && length >= HOLE_SPLIT_MIN) {
      let ext: MaybePromise<Extent[]> | undefined;
      try {
        ext = dev.blockStatus(offset, length);
      } catch {
        ext = undefined;
      }
      if (ext && !isPromise(ext) && ext.some((e) => e.flags & P.STATE_ZERO))
        return this.readSplit(cookie, offset, length, ext);
    }
    const hdr = structured ? CHUNK_HEADER + 8 : SIMPLE_HEADER;
    if (this.sender && length >= SEND_FILE_MIN) {
      const header = Buffer.allocUnsafe(hdr);
      if (structured) {
        writeChunkHeader(header, 0, P.REPLY_FLAG_DONE, P.REPLY_TYPE_OFFSET_DATA, cookie, 8 + length);
        header.writeBigUInt64BE(BigInt(offset), CHUNK_HEADER);
      } else writeSimpleHeader(header, 0, 0, cookie);
      this.sender.add(header, offset, length);
      this.inflight++;
      this.inflightBytes += length;
      if (this.saturated()) this.pauseReading();
      return;
    }
    const reply = this.host.buffers.acquire(hdr + length);
    if (structured) {
      writeChunkHeader(reply, 0, P.REPLY_FLAG_DONE, P.REPLY_TYPE_OFFSET_DATA, cookie, 8 + length);
      reply.writeBigUInt64BE(BigInt(offset), CHUNK_HEADER);
    } else writeSimpleHeader(reply, 0, 0, cookie);
    let r: MaybePromise<void>;
    try {
      r = dev.read(reply.subarray(hdr), offset);
    } catch (err) {
      return this.replyError(P.CMD_READ, cookie, errnoFor(err, false), errorMessage(err));
    }
    if (!isPromise(r)) return this.queueReply(this.chargeTo(reply));
    this.replyWhenRead(r, reply, cookie, length);
  }

  /** Sends a read's reply once its reads (on the thread pool) are done, or its error. */
  private replyWhenRead(done: Promise<unknown>, reply: Buffer, cookie: Buffer, length: number): void {
    const held = this.claim();
    const start = this.reqStart;
    this.track(
      done.then(
        () => {
          if (this.phase === 'closed') return this.host.memory.give(held, this);
          this.charged.set(reply, held);
          this.timed(P.CMD_READ, start);
          this.sendNow(reply);
        },
        (err: unknown) => {
          this.host.memory.give(held, this);
          this.timed(P.CMD_READ, start);
          this.sendNow(this.errorReply(P.CMD_READ, cookie, errnoFor(err, false), errorMessage(err)));
        },
      ),
      length,
    );
  }

  /** A structured read answered as data chunks and hole chunks (blockStatus must answer at once; reads may go to the thread pool). */
  private readSplit(cookie: Buffer, offset: number, length: number, first: Extent[]): void {
    const dev = this.exp!.device;
    const parts: { offset: number; length: number; zero: boolean }[] = [];
    let pos = offset;
    let ext = first;
    const end = offset + length;
    while (pos < end) {
      for (const e of ext) {
        const stop = Math.min(e.offset + e.length, end);
        if (stop <= pos) continue;
        const zero = (e.flags & P.STATE_ZERO) !== 0;
        const last = parts[parts.length - 1];
        if (last && last.zero === zero) last.length += stop - pos;
        else parts.push({ offset: pos, length: stop - pos, zero });
        pos = stop;
      }
      if (pos >= end) break;
      const next = dev.blockStatus(pos, end - pos);
      if (isPromise(next) || next.length === 0) {
        parts.push({ offset: pos, length: end - pos, zero: false });
        break;
      }
      ext = next;
    }
    let size = 0;
    for (const p of parts) size += CHUNK_HEADER + 8 + (p.zero ? 4 : p.length);
    const reply = Buffer.allocUnsafe(size);
    let at = 0;
    // A data part may go to the thread pool (large, or not in the page cache): await those.
    const pending: Promise<void>[] = [];
    try {
      parts.forEach((p, i) => {
        const done = i === parts.length - 1 ? P.REPLY_FLAG_DONE : 0;
        if (p.zero) {
          writeChunkHeader(reply, at, done, P.REPLY_TYPE_OFFSET_HOLE, cookie, 12);
          reply.writeBigUInt64BE(BigInt(p.offset), at + CHUNK_HEADER);
          reply.writeUInt32BE(p.length, at + CHUNK_HEADER + 8);
          at += CHUNK_HEADER + 12;
        } else {
          writeChunkHeader(reply, at, done, P.REPLY_TYPE_OFFSET_DATA, cookie, 8 + p.length);
          reply.writeBigUInt64BE(BigInt(p.offset), at + CHUNK_HEADER);
          const r = dev.read(
            reply.subarray(at + CHUNK_HEADER + 8, at + CHUNK_HEADER + 8 + p.length),
            p.offset,
          );
          if (isPromise(r)) pending.push(r);
          at += CHUNK_HEADER + 8 + p.length;
        }
      });
    } catch (err) {
      if (pending.length === 0)
        return this.replyError(P.CMD_READ, cookie, errnoFor(err, false), errorMessage(err));
      pending.push(Promise.reject(err));
    }
    if (pending.length === 0) return this.queueReply(this.chargeTo(reply));
    this.replyWhenRead(Promise.all(pending), reply, cookie, length);
  }

  private blockStatus(cookie: Buffer, offset: number, length: number, reqOne: boolean): void {
    const contexts = this.st.contexts;
    const results: MaybePromise<[number, number][]>[] = contexts.map((c) =>
      collectExtents(
        (pos, len) => extentsOf(this.exp!, c, pos, len),
        offset,
        length,
        reqOne ? 1 : MAX_EXTENTS,
      ),
    );
    const build = (all: [number, number][][]) => {
      const bufs = all.map((desc, i) => {
        const b = Buffer.allocUnsafe(CHUNK_HEADER + 4 + 8 * desc.length);
        writeChunkHeader(
          b,
          0,
          i === all.length - 1 ? P.REPLY_FLAG_DONE : 0,
          P.REPLY_TYPE_BLOCK_STATUS,
          cookie,
          4 + 8 * desc.length,
        );
        b.writeUInt32BE(contexts[i]!.id, CHUNK_HEADER);
        desc.forEach(([len, flags], j) => {
          b.writeUInt32BE(len, CHUNK_HEADER + 4 + 8 * j);
          b.writeUInt32BE(flags, CHUNK_HEADER + 8 + 8 * j);
        });
        return b;
      });
      return Buffer.concat(bufs);
    };
    const onError = (err: unknown) =>
      this.errorReply(P.CMD_BLOCK_STATUS, cookie, errnoFor(err, false), errorMessage(err));
    if (results.some(isPromise)) {
      const start = this.reqStart;
      this.track(
        Promise.all(results).then(
          (all) => {
            this.timed(P.CMD_BLOCK_STATUS, start);
            this.sendNow(build(all));
          },
          (err: unknown) => {
            this.timed(P.CMD_BLOCK_STATUS, start);
            this.sendNow(onError(err));
          },
        ),
        0,
      );
      return;
    }
    this.queueReply(build(results as [number, number][][]));
  }

  // ---- replies ---------------------------------------------------------------------------

  private errorReply(type: number, cookie: Buffer, errno: number, message: string): Buffer {
    // Structured replies are mandatory for READ and BLOCK_STATUS once negotiated.
    if (this.st.structured && (type === P.CMD_READ || type === P.CMD_BLOCK_STATUS))
      return errorChunk(cookie, errno, message);
    return simpleReply(errno, cookie);
  }

  private replyError(type: number, cookie: Buffer, errno: number, message: string): void {
    this.host.log.debug({ type, errno, message }, 'NBD request failed');
    this.queueReply(this.errorReply(type, cookie, errno, message));
  }

  /** Replies queued here answer the request being handled, synchronously: timed now. */
  private queueReply(b: Buffer): void {
    if (this.rec) this.timed(this.reqType, this.reqStart);
    this.batch.push(b);
    this.batchBytes += b.length;
  }

  private timed(type: number, start: number): void {
    this.rec?.record(type, (performance.now() - start) / 1000);
  }

  private sendBatch(): void {
    if (this.batch.length === 0) return;
    const s = this.socket;
    if (this.batch.length === 1) this.writeOut(this.batch[0]!);
    else {
      s.cork();
      for (const b of this.batch) this.writeOut(b);
      s.uncork();
    }
    this.batch = [];
    this.batchBytes = 0;
    this.checkBackpressure();
  }

  private sendNow(b: Buffer): void {
    if (this.phase === 'closed') return;
    this.writeOut(b);
    this.checkBackpressure();
  }

  private writeOut(b: Buffer): void {
    if (this.sender?.busy || this.holding || this.nativeWrites) {
      this.held.push(b);
      return;
    }
    const pool = this.host.buffers;
    this.unsent++;
    this.socket.write(b, (err) => {
      this.unsent--;
      const c = this.charged.get(b);
      if (c !== undefined) {
        this.charged.delete(b);
        this.host.memory.give(c, this);
      }
      if (!err) pool.release(b);
      if (this.unsent === 0) this.kickSender();
    });
  }

  // ---- large write payloads received by the native side -----------------------------------

  /**
   * A large write whose payload is still arriving: what is here is written as usual, the rest is
   * received by the native side straight into the file (native recvWrites), off the event loop
   * and without a JavaScript buffer. Only when everything received so far belongs to this payload.
   * When the head went to the file at once and nothing of ours is unsent, the native side also
   * owns the socket's writes for the job: it answers this write and goes on with the following
   * large writes itself (a copy's stream of writes then never comes back to JavaScript), and our
   * own replies are held until it is done.
   */
  private receiveWrite(h: Buffer, flags: number, length: number): void {
    const sender = this.sender;
    const handle = (this.socket as unknown as { _handle?: StreamHandle })._handle;
    const dev = this.exp!.device;
    const offset = readOffset(h, 16);
    if (
      !sender ||
      !handle ||
      typeof handle.readStop !== 'function' ||
      this.socket.readableLength > 0 ||
      offset === undefined ||
      dev.readOnly ||
      offset + length > dev.size ||
      (flags & ~WRITE_FLAGS) !== 0 ||
      !this.host.memory.tryTake(length, this)
    )
      return; // the usual path, once the whole payload is here
    const q = this.queue;
    q.skip(REQUEST_HEADER);
    const head = q.take(q.length);
    let headLength = 0;
    for (const b of head) headLength += b.length;
    const cookie = Buffer.from(h.subarray(8, 16));
    const fua = (flags & P.CMD_FLAG_FUA) !== 0;
    // Node must not start reading again on its own while the native side reads.
    handle.reading = true;
    handle.readStop();
    this.receiving = true;
    this.inflight++;
    this.inflightBytes += length;
    const done: MaybePromise<void>[] = [];
    let fileErrno = 0;
    try {
      // Not FUA: the native side flushes once the whole payload is in.
      if (headLength > 0) done.push(this.holding_(head, dev.write(head, offset)));
    } catch (err) {
      fileErrno = errnoFor(err, true);
    }
    const st = this.recvState;
    st[RECV.OFFSET] = offset + headLength;
    st[RECV.REMAINING] = length - headLength;
    st[RECV.COOKIE_HI] = cookie.readUInt32BE(0);
    st[RECV.COOKIE_LO] = cookie.readUInt32BE(4);
    st[RECV.FUA] = fua ? 1 : 0;
    st[RECV.ERRNO] = fileErrno;
    const loop =
      !done.some(isPromise) &&
      this.unsent === 0 &&
      !sender.busy &&
      !this.holding &&
      this.held.length === 0 &&
      this.socket.writableLength === 0;
    st[RECV.LOOP] = loop ? 1 : 0;
    this.nativeWrites = loop;
    sender.receive(dev.size, st, this.recvReplies, (sockErrno) => {
      this.receiving = false;
      this.nativeWrites = false;
      const replied = st[RECV.REPLIED] === 1;
      const unsent = st[RECV.UNSENT]!;
      const remaining = st[RECV.REMAINING]!;
      if (
        this.phase === 'closed' ||
        (sockErrno && sockErrno !== EAGAIN) ||
        (remaining > 0 && this.phase !== 'transmission')
      ) {
        this.host.memory.give(length, this);
        if (this.phase !== 'closed') {
          this.socket.destroy();
          this.close();
        }
        return this.untrack(length);
      }
      // Replies the socket did not take go first, then whatever we held meanwhile.
      if (unsent > 0) this.writeOut(Buffer.from(this.recvReplies.subarray(0, unsent)));
      this.releaseHeld();
      // Reading goes on as it was before the job, unless we paused meanwhile.
      if (this.receiver) handle.reading = false;
      else handle.readStart();
      if (!this.paused) this.socket.resume();
      if (!replied) {
        const r: RestOfWrite = {
          cookie,
          offset: st[RECV.OFFSET]!,
          remaining,
          length,
          fua,
          done,
          fileErrno: st[RECV.ERRNO]!,
        };
        // The client paused mid-payload: the rest comes through the socket as usual.
        if (remaining > 0) this.rest = r;
        else this.finishWrite(r);
        return this.pump();
      }
      // The first write is answered (its reply sent, or among the unsent bytes above).
      this.host.memory.give(length, this);
      if (remaining > 0) {
        // A later write the client paused in: finished as usual; it holds no budget bytes.
        this.inflight++;
        this.rest = {
          cookie: cookieOf(st),
          offset: st[RECV.OFFSET]!,
          remaining,
          length: 0,
          fua: st[RECV.FUA] === 1,
          done: [],
          fileErrno: st[RECV.ERRNO]!,
        };
      }
      this.untrack(length);
      this.pump();
    });
  }

  /** A device's pending write from received views keeps their buffers out of reuse. */
  private holding_(views: Buffer[], r: MaybePromise<void>): MaybePromise<void> {
    if (isPromise(r)) this.receiver?.hold(views, r);
    return r;
  }

  /** Our replies held while a native job owned the socket's writes, sent now in order. */
  private releaseHeld(): void {
    const held = this.held;
    this.held = [];
    if (held.length > 1) this.socket.cork();
    for (const b of held) this.writeOut(b);
    if (held.length > 1) this.socket.uncork();
    this.checkBackpressure();
    this.kickSender();
  }

  /** Takes the rest of a natively received write once it is here; false while it is not. */
  private finishRest(): boolean {
    const r = this.rest!;
    if (this.queue.length < r.remaining) return false;
    this.rest = undefined;
    try {
      const views = this.queue.take(r.remaining);
      r.done.push(this.holding_(views, this.exp!.device.write(views, r.offset)));
    } catch (err) {
      r.fileErrno ||= errnoFor(err, true);
    }
    this.finishWrite(r);
    return true;
  }

  private finishWrite(r: RestOfWrite): void {
    const dev = this.exp!.device;
    const reply = (errno: number) => {
      this.host.memory.give(r.length, this);
      if (this.phase !== 'closed') this.sendNow(simpleReply(errno, r.cookie));
      this.untrack(r.length);
    };
    const fail = (err: unknown) => reply(errnoFor(err, true));
    const settle = () => {
      if (r.fileErrno) return reply(r.fileErrno);
      if (!r.fua) return reply(0);
      try {
        const f = dev.flush();
        if (isPromise(f)) f.then(() => reply(0), fail);
        else reply(0);
      } catch (err) {
        fail(err);
      }
    };
    const pending = r.done.filter(isPromise);
    if (pending.length) Promise.all(pending).then(settle, fail);
    else settle();
  }

  // ---- large reads sent from the file (file-sender.ts) -----------------------------------

  private openSender(exp: NbdExport): FileSender | undefined {
    const fd = (this.socket as unknown as { _handle?: { fd?: number } })._handle?.fd;
    return FileSender.open(nativeIo(), fd, exp.device.backingFd, {
      resumeWrites: () => this.releaseHeld(),
      sendRest: (header, headerDone, offset, length, dataDone) =>
        this.sendRest(header, headerDone, offset, length, dataDone),
      finished: (length) => this.untrack(length),
      failed: (errno) => {
        this.host.log.debug({ errno }, 'NBD client connection failed while sending from the file');
        this.socket.destroy();
        this.close();
      },
    });
  }

  /** Starts a sender job once everything written through the socket itself has gone out. */
  private kickSender(): void {
    const s = this.sender;
    if (
      !s ||
      s.busy ||
      this.holding ||
      this.nativeWrites ||
      s.pending === 0 ||
      this.phase === 'closed' ||
      this.unsent > 0
    )
      return;
    if (this.socket.writableLength > 0) {
      // Bytes written before the sender existed (the handshake's): wait until they are out.
      this.unsent++;
      this.socket.write(EMPTY, () => {
        this.unsent--;
        this.kickSender();
      });
      return;
    }
    s.start();
  }

  /** The part of a sender reply the client did not take in time, sent through the socket's own queue. */
  private sendRest(
    header: Buffer,
    headerDone: number,
    offset: number,
    length: number,
    dataDone: number,
  ): void {
    this.holding = true;
    const rest = header.length - headerDone;
    const buf = this.host.buffers.acquire(rest + length - dataDone);
    header.copy(buf, 0, headerDone);
    const send = () => {
      this.holding = false;
      if (this.phase === 'closed') return this.untrack(length);
      this.writeOut(buf);
      this.untrack(length);
      const held = this.held;
      this.held = [];
      for (const b of held) this.writeOut(b);
      this.checkBackpressure();
    };
    const fail = (err: unknown) => {
      // Part of the reply is on the wire already: the stream cannot carry an error now.
      this.holding = false;
      this.host.log.warn({ err: errorMessage(err) }, 'closing NBD connection: a read failed mid-reply');
      this.untrack(length);
      this.socket.destroy();
      this.close();
    };
    let r: MaybePromise<void>;
    try {
      r = this.exp!.device.read(buf.subarray(rest), offset + dataDone);
    } catch (err) {
      return fail(err);
    }
    if (isPromise(r)) r.then(send, fail);
    else send();
  }

  private checkBackpressure(): void {
    if (!this.waitingForDrain && this.socket.writableLength > MAX_UNSENT) {
      this.waitingForDrain = true;
      this.pauseReading();
    }
  }

  /** Counts an asynchronous request until it is answered; stops reading while too much is in flight. */
  private track(p: Promise<void>, bytes: number, held = 0): void {
    this.inflight++;
    this.inflightBytes += bytes;
    if (this.saturated()) this.pauseReading();
    void p.finally(() => {
      this.host.memory.give(held, this);
      this.untrack(bytes);
    });
  }

  /** Takes over the current request's budget bytes (the caller gives them back when done). */
  private claim(): number {
    const c = this.charge;
    this.charge = 0;
    return c;
  }

  /** The current request's budget bytes stay with this reply buffer until the socket has sent it. */
  private chargeTo(reply: Buffer): Buffer {
    const c = this.claim();
    if (c) this.charged.set(reply, c);
    return reply;
  }

  private untrack(bytes: number): void {
    this.inflight--;
    this.inflightBytes -= bytes;
    if (this.inflight === 0 && this.draining) {
      const d = this.draining;
      this.draining = undefined;
      return d();
    }
    if (
      !this.saturated() &&
      !this.waitingForDrain &&
      !this.waitingForMemory &&
      this.phase === 'transmission'
    ) {
      this.resumeReading();
      this.pump();
    }
  }

  private saturated(): boolean {
    return this.inflight >= MAX_INFLIGHT || this.inflightBytes >= MAX_INFLIGHT_BYTES;
  }
}

/** The cookie a native receive job stored in its state. */
function cookieOf(st: Float64Array): Buffer {
  const b = Buffer.allocUnsafe(8);
  b.writeUInt32BE(st[RECV.COOKIE_HI]!, 0);
  b.writeUInt32BE(st[RECV.COOKIE_LO]!, 4);
  return b;
}

function isWriteCommand(type: number): boolean {
  return type === P.CMD_WRITE || type === P.CMD_WRITE_ZEROES || type === P.CMD_TRIM;
}

function extentsOf(exp: NbdExport, c: MetaContext, pos: number, len: number): MaybePromise<Extent[]> {
  return c.kind === 'allocation' ? exp.device.blockStatus(pos, len) : c.bitmap.status(pos, len);
}

/** Gathers (length, flags) descriptors covering [offset, offset+length), merging equal neighbours. */
function collectExtents(
  get: (pos: number, len: number) => MaybePromise<Extent[]>,
  offset: number,
  length: number,
  max: number,
): MaybePromise<[number, number][]> {
  const out: [number, number][] = [];
  const end = offset + length;
  let pos = offset;
  const add = (ext: Extent[]) => {
    const before = pos;
    for (const e of ext) {
      const stop = Math.min(e.offset + e.length, end);
      if (stop <= pos || e.offset > pos) continue;
      const last = out[out.length - 1];
      if (last && last[1] === e.flags) last[0] += stop - pos;
      else if (out.length < max) out.push([stop - pos, e.flags]);
      else {
        pos = end;
        return;
      }
      pos = stop;
    }
    if (pos === before) throw new Error('device reported no extent at the requested offset');
  };
  const step = (): MaybePromise<[number, number][]> => {
    while (pos < end && !(max === 1 && out.length === 1)) {
      const r = get(pos, end - pos);
      if (isPromise(r))
        return r.then((ext) => {
          add(ext);
          return step();
        });
      add(r);
    }
    return out;
  };
  return step();
}
