import type { Duplex } from 'node:stream';
import { HavenError } from '../../common/index.js';

/**
 * The gateways' wire format: frames of an 8-byte header (type, flags, 2 reserved, body length
 * u32 LE) and a body. A batch's body is journal records as the journal holds them (each with
 * its own CRC), zstd-compressed when the flag says so.
 */
export const Frame = {
  /** source → target: { group, version } */
  hello: 1,
  /** target → source: { held }: the highest sequence the target holds durably */
  welcome: 2,
  /** source → target: records */
  batch: 3,
  /** target → source: { held } after a batch is durable */
  ack: 4,
  /** either way: { message }, then the connection closes */
  error: 5,
  /** dialer → listener, first on a peer link: { channel, … }; the listener answers with one too ({ site }) or an error */
  open: 6,
  /** the rpc channel: { op, args } */
  request: 7,
  /** the rpc channel: { ok: true, result } or { ok: false, code, message } */
  response: 8,
} as const;
export type FrameType = (typeof Frame)[keyof typeof Frame];

export const FLAG_ZSTD = 1;
export const FRAME_HEADER = 8;
const HEADER = FRAME_HEADER;
/** Larger frames are refused (a batch is a few MiB). */
export const MAX_FRAME = 64 * 1024 * 1024;
const MiB = 1024 * 1024;

export interface ReceivedFrame {
  type: FrameType;
  flags: number;
  body: Buffer;
}

export function frameHeader(type: FrameType, flags: number, length: number): Buffer {
  const h = Buffer.alloc(HEADER);
  h[0] = type;
  h[1] = flags;
  h.writeUInt32LE(length, 4);
  return h;
}

/**
 * Writes a frame; resolves once the socket has taken it (the body may then be reused) and the
 * socket can take more (backpressure). `piece`: a body larger than this goes in pieces of it,
 * each written once the socket took the one before (the event loop turns between them).
 */
export async function writeFrame(
  socket: Duplex,
  type: FrameType,
  body: Uint8Array,
  flags = 0,
  piece = Infinity,
): Promise<void> {
  if (body.length <= piece) return writeParts(socket, [frameHeader(type, flags, body.length), body]);
  await writeParts(socket, [frameHeader(type, flags, body.length), body.subarray(0, piece)]);
  for (let at = piece; at < body.length; at += piece)
    await writeParts(socket, [body.subarray(at, Math.min(body.length, at + piece))]);
}

/** Writes `parts` corked; resolves once the socket has taken them and can take more. */
function writeParts(socket: Duplex, parts: Uint8Array[]): Promise<void> {
  return new Promise((resolve, reject) => {
    let written = false;
    let drained = true;
    const closed = () => reject(new HavenError('IO', 'the replication link closed'));
    const done = () => {
      if (!written || !drained) return;
      socket.off('close', closed);
      resolve();
    };
    socket.once('close', closed);
    socket.cork();
    for (const p of parts.slice(0, -1)) socket.write(p);
    const more = socket.write(parts[parts.length - 1]!, (err) => {
      if (err) return reject(err);
      written = true;
      done();
    });
    socket.uncork();
    if (!more) {
      drained = false;
      socket.once('drain', () => {
        drained = true;
        done();
      });
    }
  });
}

export const jsonFrame = (socket: Duplex, type: FrameType, value: unknown) =>
  writeFrame(socket, type, Buffer.from(JSON.stringify(value)));

/** A frame waiting to be taken, and the reusable buffer its body was gathered into (if one was). */
interface QueuedFrame {
  frame: ReceivedFrame;
  backing?: Buffer;
}

/** Buffers kept for gathering frames that arrive in many pieces. */
const SPARE_BUFFERS = 2;

/**
 * The frames arriving on a socket, one at a time: `next()` resolves with the next frame, or
 * undefined once the socket has ended. The socket is paused while a frame waits to be taken.
 * A frame's body is valid until the next call of `next()`: a body that arrived in several pieces
 * (a batch of MiBs, in TLS records of 16 KiB) is gathered into a buffer that is used again for
 * a later frame, since a fresh buffer of MiBs per frame cost ten times the copy (page faults).
 */
export class FrameReader {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private readonly frames: QueuedFrame[] = [];
  /** The gathering buffer of the frame last handed out: free again at the next `next()`. */
  private lent: Buffer | undefined;
  private spare: Buffer[] = [];
  private waiter: ((f: ReceivedFrame | undefined) => void) | undefined;
  private ended = false;
  private failure: Error | undefined;

  constructor(
    private readonly socket: Duplex,
    private readonly peer: string,
  ) {
    socket.on('data', (d: Buffer) => this.onData(d));
    socket.on('end', () => this.end());
    socket.on('close', () => this.end());
    // A link that fails (reset, cut) just ends: the gateways reconnect; only a broken protocol is an error.
    socket.on('error', () => this.end());
  }

  next(): Promise<ReceivedFrame | undefined> {
    if (this.lent && this.spare.length < SPARE_BUFFERS) this.spare.push(this.lent);
    this.lent = undefined;
    const q = this.frames.shift();
    if (q) {
      if (!this.frames.length) this.socket.resume();
      this.lent = q.backing;
      return Promise.resolve(q.frame);
    }
    if (this.failure) return Promise.reject(this.failure);
    if (this.ended) return Promise.resolve(undefined);
    return new Promise((resolve) => (this.waiter = resolve));
  }

  private onData(d: Buffer): void {
    this.chunks.push(d);
    this.buffered += d.length;
    for (;;) {
      if (this.buffered < HEADER) return;
      const head = this.peek(HEADER);
      const length = head.readUInt32LE(4);
      if (length > MAX_FRAME) {
        this.end(
          new HavenError('PROTOCOL', `${this.peer} sent a frame of ${length} bytes (at most ${MAX_FRAME})`),
        );
        this.socket.destroy();
        return;
      }
      if (this.buffered < HEADER + length) return;
      const { bytes, backing } = this.take(HEADER + length);
      this.push({
        frame: { type: bytes[0] as FrameType, flags: bytes[1]!, body: bytes.subarray(HEADER) },
        ...(backing ? { backing } : {}),
      });
    }
  }

  private push(q: QueuedFrame): void {
    const w = this.waiter;
    if (w) {
      this.waiter = undefined;
      this.lent = q.backing;
      w(q.frame);
    } else {
      this.frames.push(q);
      this.socket.pause();
    }
  }

  private end(err?: Error): void {
    if (err && !this.failure) this.failure = err;
    this.ended = true;
    const w = this.waiter;
    this.waiter = undefined;
    if (w) w(undefined);
  }

  /** The first `n` buffered bytes (a copy of them only when they span chunks). */
  private peek(n: number): Buffer {
    if (this.chunks[0]!.length >= n) return this.chunks[0]!;
    return this.gather(Buffer.allocUnsafe(n), n, false);
  }

  /** The next `n` bytes, taken off the chunks: a view of one chunk, or gathered into a spare buffer. */
  private take(n: number): { bytes: Buffer; backing?: Buffer } {
    const first = this.chunks[0]!;
    this.buffered -= n;
    if (first.length >= n) {
      if (first.length === n) this.chunks.shift();
      else this.chunks[0] = first.subarray(n);
      return { bytes: first.subarray(0, n) };
    }
    const i = this.spare.findIndex((b) => b.length >= n);
    // Rounded up to a MiB, so that the next frame of about this size fits too.
    const backing = i >= 0 ? this.spare.splice(i, 1)[0]! : Buffer.allocUnsafe(Math.ceil(n / MiB) * MiB);
    return { bytes: this.gather(backing, n, true), backing };
  }

  /** Copies the first `n` buffered bytes into `into`; `consume`: and drops them from the chunks. */
  private gather(into: Buffer, n: number, consume: boolean): Buffer {
    let at = 0;
    let i = 0;
    while (at < n) {
      const c = this.chunks[i]!;
      const k = Math.min(c.length, n - at);
      c.copy(into, at, 0, k);
      at += k;
      if (consume && k < c.length) {
        // Partly taken: its rest stays first.
        this.chunks[i] = c.subarray(k);
        break;
      }
      i++;
    }
    if (consume) this.chunks.splice(0, i);
    return into.subarray(0, n);
  }
}
