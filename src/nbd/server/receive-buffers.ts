import type { Socket } from 'node:net';

/**
 * Socket reads into reused buffers, instead of a fresh 64 KiB ArrayBuffer for every read.
 *
 * By default Node gives each socket read its own buffer, freed only when the garbage collector
 * finds it dead: at the ~100 MB/s of write payloads one NBD client sends through JavaScript, that
 * garbage was most of the server's memory beyond Node's own (measured: 14–35 MiB of external
 * memory under two fio clients, whatever the request budget). Here a plain socket reads into
 * buffers of a server-wide pool (Node's `onread` user-buffer mode, which `net.Server` does not
 * offer for accepted sockets: it is switched on through the socket's own fields). A buffer is
 * read into again as soon as nothing refers to it: not the received bytes still queued (a
 * request or payload not complete yet), and no payload a device is still writing from
 * (`hold`). While one is referenced the next read goes into another buffer.
 *
 * Costs: buffers in use are the payloads the memory budget admits plus one request being
 * received per connection; up to `maxFree` free ones are kept for the whole server (the server
 * keeps as many as its budget fills, so that none becomes garbage). A buffer held by a small
 * payload (a 4 KiB write on a device that answers later) keeps all of its 64 KiB, as Node's own
 * read buffers did. TLS sockets read as Node does (TLS decrypts into its own buffers).
 */
export class ReceiveBufferPool {
  private readonly free: Buffer[] = [];
  private made = 0;

  constructor(
    readonly size = 64 * 1024,
    private readonly maxFree = 32,
  ) {}

  take(): Buffer {
    const b = this.free.pop();
    if (b) return b;
    this.made++;
    return Buffer.allocUnsafeSlow(this.size);
  }

  give(b: Buffer): void {
    if (this.free.length < this.maxFree) this.free.push(b);
  }

  /** Free buffers kept now. */
  get kept(): number {
    return this.free.length;
  }

  /** Buffers allocated since the server started: stays flat once the traffic's need is met. */
  get allocated(): number {
    return this.made;
  }
}

/** The fields of a net.Socket that Node's user-buffer reading uses (lib/net.js, `onread`). */
interface UserBufferFields {
  kBuffer: symbol;
  kBufferCb: symbol;
  kBufferGen: symbol;
}

let fields: UserBufferFields | null | undefined;

function userBufferFields(socket: Socket): UserBufferFields | null {
  if (fields !== undefined) return fields;
  const syms = Object.getOwnPropertySymbols(socket);
  const find = (d: string) => syms.find((s) => s.description === d);
  const kBuffer = find('kBuffer');
  const kBufferCb = find('kBufferCb');
  const kBufferGen = find('kBufferGen');
  fields = kBuffer && kBufferCb && kBufferGen ? { kBuffer, kBufferCb, kBufferGen } : null;
  return fields;
}

/** What the reader asks of the connection it reads for. */
export interface ReceiveHost {
  /** Received bytes (a view of a pool buffer, valid until `inUse` says the buffer is free). */
  received(chunk: Buffer): void;
  /** Whether the connection still refers to bytes of `buf` (queued, or held by a device). */
  queued(buf: ArrayBufferLike): boolean;
}

/**
 * Reads one plain socket into pool buffers. `attach` switches the socket over (from then on no
 * 'data' events come: `host.received` gets the bytes); it returns undefined when this Node does
 * not have the fields it needs or the socket is not a plain stream handle, and the socket reads
 * as before.
 */
export class SocketReceiver {
  private current: Buffer;
  /** Buffers read into earlier whose bytes were still queued then (a few: one request's worth). */
  private queued: Buffer[] = [];
  /** Payload views a device still writes from: their buffers and how many writes hold each. */
  private readonly holds = new Map<ArrayBufferLike, { buf: Buffer | undefined; n: number }>();
  private closed = false;

  private constructor(
    private readonly pool: ReceiveBufferPool,
    private readonly host: ReceiveHost,
  ) {
    this.current = pool.take();
  }

  static attach(socket: Socket, pool: ReceiveBufferPool, host: ReceiveHost): SocketReceiver | undefined {
    const f = userBufferFields(socket);
    const handle = (socket as unknown as { _handle?: { useUserBuffer?: (b: Buffer) => void } })._handle;
    if (!f || typeof handle?.useUserBuffer !== 'function') return undefined;
    const r = new SocketReceiver(pool, host);
    const s = socket as unknown as Record<symbol, unknown>;
    s[f.kBuffer] = r.current;
    s[f.kBufferCb] = (nread: number, buf: Buffer) => {
      host.received(buf.subarray(0, nread));
    };
    s[f.kBufferGen] = () => r.next();
    handle.useUserBuffer(r.current);
    return r;
  }

  /** The buffer the next read goes into: the current one again unless it is still referred to. */
  private next(): Buffer {
    if (this.queued.length) this.retire(this.queued.splice(0));
    const cur = this.current;
    const held = this.holds.get(cur.buffer);
    if (held || this.host.queued(cur.buffer)) {
      if (held) held.buf = cur;
      else this.queued.push(cur);
      this.current = this.pool.take();
    }
    return this.current;
  }

  /** Retired buffers go back to the pool once neither queued nor held (held ones: at their release). */
  private retire(bufs: Buffer[]): void {
    for (const b of bufs) {
      const held = this.holds.get(b.buffer);
      if (held) held.buf = b;
      else if (this.host.queued(b.buffer)) this.queued.push(b);
      else if (!this.closed) this.pool.give(b);
    }
  }

  /** Keeps the buffers under `views` out of reuse until `done` settles (a device writes from them). */
  hold(views: readonly Uint8Array[], done: Promise<unknown>): void {
    const bufs = views.map((v) => v.buffer);
    for (const b of bufs) {
      const h = this.holds.get(b);
      if (h) h.n++;
      else this.holds.set(b, { buf: undefined, n: 1 });
    }
    const release = () => {
      for (const b of bufs) {
        const h = this.holds.get(b)!;
        if (--h.n > 0) continue;
        this.holds.delete(b);
        // Retired while held: free now, or back to waiting for the queue.
        if (h.buf) this.retire([h.buf]);
      }
    };
    done.then(release, release);
  }

  /** The socket is gone: nothing goes back to the pool any more (a late read could still land). */
  close(): void {
    this.closed = true;
    this.queued = [];
  }
}
