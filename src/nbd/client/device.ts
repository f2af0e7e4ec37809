import { HavenError, outOfRange } from '../../common/index.js';
import {
  DEFAULT_BLOCK_SIZES,
  type BlockDevice,
  type BlockSizes,
  type Extent,
  type WriteFlags,
  type ZeroFlags,
} from '../../block/index.js';
import * as P from '../protocol.js';
import {
  negotiate,
  type ExportEntry,
  type HandshakeOptions,
  type Negotiated,
  type TlsCredentials,
} from './handshake.js';
import { NbdConnection } from './connection.js';
import { parseNbdUri, type NbdUri } from './uri.js';

export interface ConnectNbdOptions {
  tls?: TlsCredentials;
  /** Select qemu:dirty-bitmap:<bitmap> so that `dirtyStatus` works. */
  bitmap?: string;
  /**
   * Connections to open (default 1). More than one only when the server advertises multi-conn
   * or the export is read-only; otherwise one is used.
   */
  connections?: number;
  /** Treat the export as read-only even if the server allows writes. */
  readOnly?: boolean;
  /** Window per connection (defaults 64 requests, 64 MiB). */
  maxRequests?: number;
  maxBytes?: number;
  /** Also fetch the export list and the export's available meta contexts (for `nbd info`). */
  list?: boolean;
  listContexts?: boolean;
  timeoutMs?: number;
}

/** What the server told us in the handshake (for `haven nbd info`). */
export interface NbdExportInfo {
  uri: string;
  exportName: string;
  size: number;
  flags: number;
  flagNames: string[];
  tls: boolean;
  structured: boolean;
  blockSizes: BlockSizes;
  blockSizesAdvertised: boolean;
  description?: string;
  contexts: string[];
  availableContexts?: string[];
  exports?: ExportEntry[];
  connections: number;
  via: 'go' | 'export-name';
}

const FLAG_NAMES: [number, string][] = [
  [P.FLAG_READ_ONLY, 'read-only'],
  [P.FLAG_SEND_FLUSH, 'flush'],
  [P.FLAG_SEND_FUA, 'fua'],
  [P.FLAG_ROTATIONAL, 'rotational'],
  [P.FLAG_SEND_TRIM, 'trim'],
  [P.FLAG_SEND_WRITE_ZEROES, 'write-zeroes'],
  [P.FLAG_SEND_DF, 'df'],
  [P.FLAG_CAN_MULTI_CONN, 'multi-conn'],
  [P.FLAG_SEND_RESIZE, 'resize'],
  [P.FLAG_SEND_CACHE, 'cache'],
  [P.FLAG_SEND_FAST_ZERO, 'fast-zero'],
  [P.FLAG_BLOCK_STAT_PAYLOAD, 'block-status-payload'],
];

/** Largest length for one trim / write-zeroes / block-status request (32-bit field). */
const MAX_RANGE = 0x80000000; // 2 GiB, a multiple of every sane minimum block size

/**
 * Opens an NBD export as a BlockDevice. `uri` is nbd://, nbds://, nbd+unix:// or nbds+unix://.
 * Refusals (unknown export, TLS required, missing bitmap) reject with a HavenError naming the
 * server, the export and the server's message.
 */
export async function connectNbd(
  uri: string | NbdUri,
  opts: ConnectNbdOptions = {},
): Promise<NbdClientDevice> {
  const u = typeof uri === 'string' ? parseNbdUri(uri) : uri;
  const hs: HandshakeOptions = {
    tls: opts.tls,
    contexts: opts.bitmap ? [P.CONTEXT_DIRTY_BITMAP_PREFIX + opts.bitmap] : [],
    list: opts.list,
    listContexts: opts.listContexts,
    timeoutMs: opts.timeoutMs,
  };
  const first = await negotiate(u, hs);
  const writable = !(first.flags & P.FLAG_READ_ONLY) && !opts.readOnly;
  const multi = (first.flags & P.FLAG_CAN_MULTI_CONN) !== 0 || !writable;
  const want = Math.max(1, Math.min(16, Math.floor(opts.connections ?? 1)));
  const count = multi ? want : 1;
  const rest: Negotiated[] = [];
  try {
    for (let i = 1; i < count; i++)
      rest.push(await negotiate(u, { ...hs, list: false, listContexts: false }));
  } catch (e) {
    for (const n of [first, ...rest]) n.socket.destroy();
    throw e;
  }
  return new NbdClientDevice(u, [first, ...rest], opts);
}

export class NbdClientDevice implements BlockDevice {
  readonly size: number;
  readonly readOnly: boolean;
  readonly blockSizes: BlockSizes;
  readonly flushCoversAll: boolean;
  readonly info: NbdExportInfo;
  private readonly conns: NbdConnection[];
  private readonly flags: number;
  private readonly allocId?: number;
  private readonly dirtyId?: number;
  private readonly label: string;
  private rr = 0;
  private closed = false;

  constructor(uri: NbdUri, negotiated: Negotiated[], opts: ConnectNbdOptions) {
    const n = negotiated[0]!;
    this.label = `${uri.text}`;
    this.size = n.size;
    this.flags = n.flags;
    this.readOnly = (n.flags & P.FLAG_READ_ONLY) !== 0 || !!opts.readOnly;
    const bs = n.blockSizes;
    this.blockSizes = bs
      ? {
          minimum: bs.minimum || 1,
          preferred: bs.preferred || 4096,
          maximum: Math.min(bs.maximum, P.MAX_PAYLOAD),
        }
      : { ...DEFAULT_BLOCK_SIZES };
    this.flushCoversAll = (n.flags & P.FLAG_CAN_MULTI_CONN) !== 0;
    this.allocId = n.contexts.get(P.CONTEXT_BASE_ALLOCATION);
    if (opts.bitmap) this.dirtyId = n.contexts.get(P.CONTEXT_DIRTY_BITMAP_PREFIX + opts.bitmap);
    this.conns = negotiated.map(
      (x) =>
        new NbdConnection(x, { label: this.label, maxRequests: opts.maxRequests, maxBytes: opts.maxBytes }),
    );
    this.info = {
      uri: uri.text,
      exportName: n.exportName,
      size: n.size,
      flags: n.flags,
      flagNames: FLAG_NAMES.filter(([f]) => n.flags & f).map(([, name]) => name),
      tls: n.tls,
      structured: n.structured,
      blockSizes: this.blockSizes,
      blockSizesAdvertised: !!bs,
      description: n.description,
      contexts: [...n.contexts.keys()],
      availableContexts: n.availableContexts,
      exports: n.exports,
      connections: negotiated.length,
      via: n.via,
    };
  }

  /** Whether the server advertised a transmission flag (FLAG_*). */
  has(flag: number): boolean {
    return (this.flags & flag) !== 0;
  }

  /** The least busy live connection. */
  private conn(): NbdConnection {
    if (this.closed) throw new HavenError('IO', `NBD ${this.label}: the device is closed`);
    if (this.conns.length === 1) return this.conns[0]!;
    let best = this.conns[this.rr++ % this.conns.length]!;
    for (const c of this.conns) if (c.alive && (c.inFlight < best.inFlight || !best.alive)) best = c;
    return best;
  }

  private check(what: string, offset: number, length: number) {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0)
      throw new HavenError(
        'INVALID_ARGUMENT',
        `NBD ${this.label}: ${what}: bad offset ${offset} or length ${length}`,
      );
    if (offset + length > this.size)
      throw outOfRange(
        `NBD ${this.label}: ${what} of ${length} bytes at offset ${offset} is beyond the export's size of ${this.size} bytes`,
      );
  }

  private writable(what: string) {
    if (this.readOnly)
      throw new HavenError('READ_ONLY', `NBD ${this.label}: ${what}: the export is read-only`);
  }

  read(buf: Uint8Array, offset: number): Promise<void> {
    try {
      this.check('read', offset, buf.length);
      const max = this.blockSizes.maximum;
      if (buf.length <= max) return this.conn().read(buf, offset);
      const parts: Promise<void>[] = [];
      for (let at = 0; at < buf.length; at += max)
        parts.push(this.conn().read(buf.subarray(at, Math.min(buf.length, at + max)), offset + at));
      return Promise.all(parts).then(() => undefined);
    } catch (e) {
      return Promise.reject(e);
    }
  }

  write(data: Uint8Array | readonly Uint8Array[], offset: number, flags?: WriteFlags): Promise<void> {
    const chunks: readonly Uint8Array[] = data instanceof Uint8Array ? [data] : data;
    let total = 0;
    for (const c of chunks) total += c.length;
    const nativeFua = !!flags?.fua && this.has(P.FLAG_SEND_FUA);
    let done: Promise<void>;
    try {
      this.writable('write');
      this.check('write', offset, total);
      const max = this.blockSizes.maximum;
      if (total <= max) done = this.conn().write(chunks, offset, total, nativeFua);
      else {
        const parts: Promise<void>[] = [];
        for (let at = 0; at < total; at += max) {
          const len = Math.min(max, total - at);
          parts.push(this.conn().write(sliceChunks(chunks, at, len), offset + at, len, nativeFua));
        }
        done = Promise.all(parts).then(() => undefined);
      }
    } catch (e) {
      return Promise.reject(e);
    }
    return flags?.fua && !nativeFua ? done.then(() => this.flush()) : done;
  }

  async flush(): Promise<void> {
    if (!this.has(P.FLAG_SEND_FLUSH) || this.readOnly) return;
    // With multi-conn one flush covers all; without it there is only one connection.
    await this.conn().flush();
  }

  /**
   * The BlockDevice contract says trimmed ranges read as zeroes, which NBD_CMD_TRIM does not
   * promise; so trim is NBD_CMD_WRITE_ZEROES without NO_HOLE (the server may punch a hole),
   * falling back to writing zeroes. `discard` is the plain, advisory NBD_CMD_TRIM.
   */
  trim(offset: number, length: number, flags?: WriteFlags): Promise<void> {
    return this.writeZeroes(offset, length, { fua: flags?.fua });
  }

  /** Plain NBD_CMD_TRIM: advisory, content afterwards unspecified. No-op if not advertised. */
  async discard(offset: number, length: number, flags?: WriteFlags): Promise<void> {
    this.writable('trim');
    this.check('trim', offset, length);
    if (!this.has(P.FLAG_SEND_TRIM)) return;
    const fua = !!flags?.fua && this.has(P.FLAG_SEND_FUA);
    await this.ranges(offset, length, (o, l) => this.conn().trim(o, l, fua));
  }

  async writeZeroes(offset: number, length: number, flags?: ZeroFlags): Promise<void> {
    this.writable('write zeroes');
    this.check('write zeroes', offset, length);
    if (length === 0) return;
    if (flags?.fastZero && !(this.has(P.FLAG_SEND_FAST_ZERO) && this.has(P.FLAG_SEND_WRITE_ZEROES)))
      throw new HavenError('UNSUPPORTED', `NBD ${this.label}: the server cannot zero fast (no FAST_ZERO)`);
    if (!this.has(P.FLAG_SEND_WRITE_ZEROES)) {
      // Emulate with plain writes of a shared zero buffer.
      const step = Math.min(this.blockSizes.maximum, 1024 * 1024);
      const zero = new Uint8Array(step);
      const parts: Promise<void>[] = [];
      for (let at = 0; at < length; at += step) {
        const len = Math.min(step, length - at);
        parts.push(this.write(len === step ? zero : zero.subarray(0, len), offset + at, { fua: flags?.fua }));
      }
      await Promise.all(parts);
      return;
    }
    const fua = !!flags?.fua && this.has(P.FLAG_SEND_FUA);
    const cmd =
      (fua ? P.CMD_FLAG_FUA : 0) |
      (flags?.noHole ? P.CMD_FLAG_NO_HOLE : 0) |
      (flags?.fastZero ? P.CMD_FLAG_FAST_ZERO : 0);
    await this.ranges(offset, length, (o, l) => this.conn().writeZeroes(o, l, cmd));
    if (flags?.fua && !fua) await this.flush();
  }

  async cache(offset: number, length: number): Promise<void> {
    this.check('cache', offset, length);
    if (!this.has(P.FLAG_SEND_CACHE)) return;
    await this.ranges(offset, length, (o, l) => this.conn().cache(o, l));
  }

  /** base:allocation of the range; all data (flags 0) when the server has no such context. */
  async blockStatus(offset: number, length: number): Promise<Extent[]> {
    return this.status('block status', this.allocId, offset, length, true);
  }

  /** The dirty bitmap selected with `bitmap`: extents with flags 1 (dirty) or 0 (clean). */
  async dirtyStatus(offset: number, length: number): Promise<Extent[]> {
    if (this.dirtyId === undefined)
      throw new HavenError(
        'UNSUPPORTED',
        `NBD ${this.label}: no dirty bitmap was selected (connect with bitmap)`,
      );
    return this.status('dirty status', this.dirtyId, offset, length, false);
  }

  private async status(
    what: string,
    id: number | undefined,
    offset: number,
    length: number,
    allDataIfMissing: boolean,
  ): Promise<Extent[]> {
    this.check(what, offset, length);
    if (length === 0) return [];
    const len = Math.min(length, MAX_RANGE);
    if (id === undefined) return [{ offset, length: len, flags: 0 }];
    const map = await this.conn().blockStatus(offset, len);
    const got = map.get(id);
    if (!got?.length) {
      if (allDataIfMissing) return [{ offset, length: len, flags: 0 }];
      throw new HavenError('PROTOCOL', `NBD ${this.label}: ${what}: the server sent no extents`);
    }
    // Clip to the request (the last extent may run past it).
    const out: Extent[] = [];
    const end = offset + len;
    for (const e of got) {
      if (e.offset >= end) break;
      out.push(e.offset + e.length > end ? { ...e, length: end - e.offset } : e);
    }
    return out;
  }

  private async ranges(offset: number, length: number, fn: (o: number, l: number) => Promise<void>) {
    const parts: Promise<void>[] = [];
    for (let at = 0; at < length; at += MAX_RANGE)
      parts.push(fn(offset + at, Math.min(MAX_RANGE, length - at)));
    await Promise.all(parts);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    try {
      if (!this.readOnly && this.conns.every((c) => c.alive)) await this.flush();
    } finally {
      this.closed = true;
      await Promise.all(this.conns.map((c) => c.disconnect()));
    }
  }
}

/** Sub-views of `chunks` covering [start, start+len) of their concatenation, without copying. */
export function sliceChunks(chunks: readonly Uint8Array[], start: number, len: number): Uint8Array[] {
  const out: Uint8Array[] = [];
  let pos = 0;
  const end = start + len;
  for (const c of chunks) {
    const cEnd = pos + c.length;
    if (cEnd > start && pos < end)
      out.push(c.subarray(Math.max(0, start - pos), Math.min(c.length, end - pos)));
    pos = cEnd;
    if (pos >= end) break;
  }
  return out;
}
