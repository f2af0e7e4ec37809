import { connect as netConnect, type Socket } from 'node:net';
import { checkServerIdentity, connect as tlsConnect, type TLSSocket } from 'node:tls';
import { once } from 'node:events';
import { HavenError, errorMessage } from '../../common/index.js';
import * as P from '../protocol.js';
import { PSK_CIPHERS } from '../psk.js';
import type { NbdUri } from './uri.js';

/**
 * The client side of the handshake ("Newstyle negotiation" in doc/proto.md), as explicit steps:
 *
 *   connect → greeting (NBDMAGIC, IHAVEOPT, handshake flags) → client flags
 *     → [OPT_STARTTLS → TLS handshake]               ("TLS support")
 *     → [OPT_LIST]                                   (export list, for `haven nbd info --list`)
 *     → OPT_STRUCTURED_REPLY                         ("Structured reply chunk message")
 *     → [OPT_LIST_META_CONTEXT] → OPT_SET_META_CONTEXT ("Metadata querying")
 *     → OPT_GO with NBD_INFO_BLOCK_SIZE              ("NBD_OPT_GO")
 *       or, for servers that answer OPT_GO with NBD_REP_ERR_UNSUP, OPT_EXPORT_NAME.
 *
 * Every refusal becomes a HavenError naming the server, the export and the server's own message.
 */

export interface TlsCredentials {
  /** PEM text of the CA that signed the server certificate (not needed with `psk`). */
  ca?: string | Buffer;
  /** Client certificate and key (PEM), when the server asks for one. */
  cert?: string | Buffer;
  key?: string | Buffer;
  /** A pre-shared key instead of certificates: both sides prove they hold it (TLS-PSK). */
  psk?: { identity: string; key: Buffer };
}

export interface HandshakeOptions {
  tls?: TlsCredentials;
  /** Meta contexts to select besides base:allocation, e.g. qemu:dirty-bitmap:b0. */
  contexts?: string[];
  /** Also ask for the export list (OPT_LIST) before going into transmission. */
  list?: boolean;
  /** Also ask which meta contexts the export offers (OPT_LIST_META_CONTEXT). */
  listContexts?: boolean;
  /** Milliseconds to wait for the connection and the handshake (default 30 s). */
  timeoutMs?: number;
}

export interface ExportEntry {
  name: string;
  description: string;
}

export interface Negotiated {
  socket: Socket | TLSSocket;
  exportName: string;
  size: number;
  /** Transmission flags (FLAG_*). */
  flags: number;
  tls: boolean;
  structured: boolean;
  /** Server-advertised block sizes, when it sent NBD_INFO_BLOCK_SIZE. */
  blockSizes?: { minimum: number; preferred: number; maximum: number };
  description?: string;
  /** Selected meta contexts: name → id. */
  contexts: Map<string, number>;
  /** Only with `list`. */
  exports?: ExportEntry[];
  /** Only with `listContexts`. */
  availableContexts?: string[];
  /** "go" normally; "export-name" for old servers without OPT_GO. */
  via: 'go' | 'export-name';
}

/** Buffers bytes from a socket and hands them out exactly, for the handshake only. */
class Reader {
  private chunks: Buffer[] = [];
  private have = 0;
  private waiter?: () => void;
  private failure?: Error;
  private readonly onData = (b: Buffer) => {
    this.chunks.push(b);
    this.have += b.length;
    this.waiter?.();
  };
  private readonly onEnd = () => this.fail(new Error('the server closed the connection'));
  private readonly onError = (e: Error) => this.fail(e);

  constructor(private socket: Socket) {
    this.attach(socket);
  }

  private fail(e: Error) {
    this.failure ??= e;
    this.waiter?.();
  }

  attach(socket: Socket) {
    this.socket = socket;
    socket.on('data', this.onData).on('end', this.onEnd).on('close', this.onEnd).on('error', this.onError);
  }

  detach(): Buffer[] {
    this.socket
      .off('data', this.onData)
      .off('end', this.onEnd)
      .off('close', this.onEnd)
      .off('error', this.onError);
    const rest = this.chunks;
    this.chunks = [];
    this.have = 0;
    return rest;
  }

  async read(n: number): Promise<Buffer> {
    while (this.have < n) {
      if (this.failure) throw this.failure;
      await new Promise<void>((resolve) => (this.waiter = resolve));
      this.waiter = undefined;
    }
    const all = this.chunks.length === 1 ? this.chunks[0]! : Buffer.concat(this.chunks);
    const out = all.subarray(0, n);
    const rest = all.subarray(n);
    this.chunks = rest.length ? [rest] : [];
    this.have = rest.length;
    return out;
  }
}

interface OptionReply {
  type: number;
  data: Buffer;
}

const REP_ERR_NAMES: Record<number, string> = {
  [P.REP_ERR_UNSUP]: 'unsupported',
  [P.REP_ERR_POLICY]: 'refused by policy',
  [P.REP_ERR_INVALID]: 'invalid',
  [P.REP_ERR_PLATFORM]: 'not available on this platform',
  [P.REP_ERR_TLS_REQD]: 'TLS required',
  [P.REP_ERR_UNKNOWN]: 'unknown export',
  [P.REP_ERR_SHUTDOWN]: 'server shutting down',
  [P.REP_ERR_BLOCK_SIZE_REQD]: 'block size negotiation required',
  [P.REP_ERR_TOO_BIG]: 'request too big',
  [P.REP_ERR_EXT_HEADER_REQD]: 'extended headers required',
};

const OPT_NAMES: Record<number, string> = {
  [P.OPT_EXPORT_NAME]: 'EXPORT_NAME',
  [P.OPT_LIST]: 'LIST',
  [P.OPT_STARTTLS]: 'STARTTLS',
  [P.OPT_GO]: 'GO',
  [P.OPT_STRUCTURED_REPLY]: 'STRUCTURED_REPLY',
  [P.OPT_LIST_META_CONTEXT]: 'LIST_META_CONTEXT',
  [P.OPT_SET_META_CONTEXT]: 'SET_META_CONTEXT',
};

function where(uri: NbdUri) {
  return uri.transport.kind === 'unix'
    ? `unix socket ${uri.transport.path}`
    : `${uri.transport.host}:${uri.transport.port}`;
}

/** Opens the transport and negotiates; resolves with the socket in transmission phase. */
export async function negotiate(uri: NbdUri, opts: HandshakeOptions = {}): Promise<Negotiated> {
  const server = where(uri);
  const what = `NBD server ${server}, export '${uri.exportName}'`;
  const timeoutMs = opts.timeoutMs ?? 30000;
  if (uri.tls && !opts.tls)
    throw new HavenError(
      'INVALID_ARGUMENT',
      `${uri.text} needs TLS: give the CA certificate (--tls-ca) or a PSK file (--tls-psk-file)`,
    );

  let socket: Socket =
    uri.transport.kind === 'unix'
      ? netConnect(uri.transport.path)
      : netConnect({ host: uri.transport.host, port: uri.transport.port });
  const timer = setTimeout(
    () => socket.destroy(new HavenError('TIMEOUT', `${what}: no handshake within ${timeoutMs} ms`)),
    timeoutMs,
  );
  try {
    try {
      await once(socket, 'connect');
    } catch (e) {
      throw new HavenError('IO', `cannot connect to ${server}: ${errorMessage(e)}`, { cause: e });
    }
    socket.setNoDelay(true);
    const reader = new Reader(socket);
    const fail = (e: unknown): never => {
      if (e instanceof HavenError) throw e;
      throw new HavenError('PROTOCOL', `${what}: handshake failed: ${errorMessage(e)}`, { cause: e });
    };

    // Greeting.
    const greet = await reader.read(18).catch(fail);
    if (greet.readBigUInt64BE(0) !== P.NBDMAGIC) fail(new Error('not an NBD server (bad magic)'));
    if (greet.readBigUInt64BE(8) !== P.IHAVEOPT)
      fail(new Error('the server speaks the oldstyle protocol, which Haven does not support'));
    const serverFlags = greet.readUInt16BE(16);
    const fixed = (serverFlags & P.FLAG_FIXED_NEWSTYLE) !== 0;
    const noZeroes = (serverFlags & P.FLAG_NO_ZEROES) !== 0;
    const cflags = Buffer.alloc(4);
    cflags.writeUInt32BE((fixed ? P.FLAG_C_FIXED_NEWSTYLE : 0) | (noZeroes ? P.FLAG_C_NO_ZEROES : 0));
    socket.write(cflags);

    const sendOption = (opt: number, data: Buffer = Buffer.alloc(0)) => {
      const h = Buffer.alloc(16);
      h.writeBigUInt64BE(P.IHAVEOPT, 0);
      h.writeUInt32BE(opt, 8);
      h.writeUInt32BE(data.length, 12);
      socket.write(data.length ? Buffer.concat([h, data]) : h);
    };
    const readReply = async (opt: number): Promise<OptionReply> => {
      const h = await reader.read(20).catch(fail);
      if (h.readBigUInt64BE(0) !== P.OPTION_REPLY_MAGIC) fail(new Error('bad option reply magic'));
      if (h.readUInt32BE(8) !== opt)
        fail(new Error(`reply to option ${h.readUInt32BE(8)} while waiting for ${OPT_NAMES[opt] ?? opt}`));
      const type = h.readUInt32BE(12);
      const len = h.readUInt32BE(16);
      if (len > P.MAX_OPTION_LENGTH * 16) fail(new Error(`option reply of ${len} bytes is too large`));
      const data = len ? await reader.read(len).catch(fail) : Buffer.alloc(0);
      return { type, data };
    };
    const refusal = (opt: number, r: OptionReply) => {
      const name = REP_ERR_NAMES[r.type] ?? `error ${r.type >>> 0}`;
      const msg = r.data.length ? `: ${r.data.toString('utf8')}` : '';
      const code =
        r.type === P.REP_ERR_UNKNOWN
          ? 'NOT_FOUND'
          : r.type === P.REP_ERR_UNSUP
            ? 'UNSUPPORTED'
            : r.type === P.REP_ERR_POLICY || r.type === P.REP_ERR_TLS_REQD
              ? 'CONFLICT'
              : 'PROTOCOL';
      const hint = r.type === P.REP_ERR_TLS_REQD ? ' (use an nbds:// URI and give --tls-ca)' : '';
      return new HavenError(code, `${what}: NBD_OPT_${OPT_NAMES[opt] ?? opt} refused (${name})${msg}${hint}`);
    };

    // TLS: when the URI demands it, or when the caller gave credentials.
    let tls = false;
    if (opts.tls) {
      if (!fixed) throw new HavenError('UNSUPPORTED', `${what}: server cannot do TLS (not fixed newstyle)`);
      sendOption(P.OPT_STARTTLS);
      const r = await readReply(P.OPT_STARTTLS);
      if (r.type !== P.REP_ACK) {
        if (uri.tls || P.isOptionError(r.type)) throw refusal(P.OPT_STARTTLS, r);
      } else {
        const rest = reader.detach();
        if (rest.length) fail(new Error('data after the STARTTLS reply'));
        const psk = opts.tls.psk;
        const secure = tlsConnect({
          socket,
          ca: opts.tls.ca,
          cert: opts.tls.cert,
          key: opts.tls.key,
          servername: uri.tlsHostname && !/^[\d.:]+$/.test(uri.tlsHostname) ? uri.tlsHostname : undefined,
          rejectUnauthorized: uri.tlsVerifyPeer,
          // Node's check, against the name in the URI (or its tls-hostname); a PSK proves the
          // server by itself (it has no certificate).
          checkServerIdentity: (host, cert) =>
            uri.tlsVerifyPeer && !psk ? checkServerIdentity(uri.tlsHostname ?? host, cert) : undefined,
          ...(psk
            ? {
                pskCallback: () => ({ psk: psk.key, identity: psk.identity }),
                ciphers: PSK_CIPHERS,
              }
            : {}),
        });
        try {
          await once(secure, 'secureConnect');
        } catch (e) {
          throw new HavenError('IO', `${what}: TLS handshake failed: ${errorMessage(e)}`, { cause: e });
        }
        socket = secure;
        reader.attach(secure);
        tls = true;
      }
    }

    let exports: ExportEntry[] | undefined;
    if (opts.list && fixed) {
      sendOption(P.OPT_LIST);
      exports = [];
      for (;;) {
        const r = await readReply(P.OPT_LIST);
        if (r.type === P.REP_ACK) break;
        if (r.type === P.REP_SERVER) {
          const n = r.data.readUInt32BE(0);
          exports.push({
            name: r.data.toString('utf8', 4, 4 + n),
            description: r.data.toString('utf8', 4 + n),
          });
          continue;
        }
        if (P.isOptionError(r.type)) {
          if (r.type === P.REP_ERR_TLS_REQD) throw refusal(P.OPT_LIST, r);
          exports = undefined; // the server keeps its list to itself
          break;
        }
      }
    }

    let structured = false;
    if (fixed) {
      sendOption(P.OPT_STRUCTURED_REPLY);
      const r = await readReply(P.OPT_STRUCTURED_REPLY);
      if (r.type === P.REP_ERR_TLS_REQD) throw refusal(P.OPT_STRUCTURED_REPLY, r);
      structured = r.type === P.REP_ACK;
    }

    const nameBuf = Buffer.from(uri.exportName, 'utf8');
    const contextQuery = (queries: string[]) => {
      const parts = [u32(nameBuf.length), nameBuf, u32(queries.length)];
      for (const q of queries) {
        const b = Buffer.from(q, 'utf8');
        parts.push(u32(b.length), b);
      }
      return Buffer.concat(parts);
    };
    const readContexts = async (opt: number) => {
      const found = new Map<string, number>();
      for (;;) {
        const r = await readReply(opt);
        if (r.type === P.REP_ACK) return found;
        if (r.type === P.REP_META_CONTEXT) found.set(r.data.toString('utf8', 4), r.data.readUInt32BE(0));
        else if (P.isOptionError(r.type)) {
          if (r.type === P.REP_ERR_UNKNOWN || r.type === P.REP_ERR_TLS_REQD) throw refusal(opt, r);
          return undefined;
        }
      }
    };

    let availableContexts: string[] | undefined;
    if (structured && opts.listContexts) {
      sendOption(P.OPT_LIST_META_CONTEXT, contextQuery([]));
      const found = await readContexts(P.OPT_LIST_META_CONTEXT);
      availableContexts = found ? [...found.keys()] : undefined;
    }
    let contexts = new Map<string, number>();
    const wanted = [P.CONTEXT_BASE_ALLOCATION, ...(opts.contexts ?? [])];
    if (structured) {
      sendOption(P.OPT_SET_META_CONTEXT, contextQuery(wanted));
      contexts = (await readContexts(P.OPT_SET_META_CONTEXT)) ?? new Map();
    }
    for (const c of opts.contexts ?? [])
      if (!contexts.has(c))
        throw new HavenError(
          'NOT_FOUND',
          `${what}: the server does not offer meta context '${c}'` +
            (c.startsWith(P.CONTEXT_DIRTY_BITMAP_PREFIX) ? ' (no such dirty bitmap exported)' : ''),
        );

    // OPT_GO, asking for block sizes.
    let result: Omit<Negotiated, 'socket'> | undefined;
    if (fixed) {
      const go = Buffer.concat([u32(nameBuf.length), nameBuf, u16(1), u16(P.INFO_BLOCK_SIZE)]);
      sendOption(P.OPT_GO, go);
      let size: number | undefined;
      let flags = 0;
      let blockSizes: Negotiated['blockSizes'];
      let description: string | undefined;
      for (;;) {
        const r = await readReply(P.OPT_GO);
        if (r.type === P.REP_ACK) break;
        if (r.type === P.REP_INFO) {
          const it = r.data.readUInt16BE(0);
          if (it === P.INFO_EXPORT) {
            const s = r.data.readBigUInt64BE(2);
            if (s > BigInt(Number.MAX_SAFE_INTEGER))
              throw new HavenError('OUT_OF_RANGE', `${what}: export size ${s} is beyond 2^53 bytes`);
            size = Number(s);
            flags = r.data.readUInt16BE(10);
          } else if (it === P.INFO_BLOCK_SIZE) {
            blockSizes = {
              minimum: r.data.readUInt32BE(2),
              preferred: r.data.readUInt32BE(6),
              maximum: r.data.readUInt32BE(10),
            };
          } else if (it === P.INFO_DESCRIPTION) description = r.data.toString('utf8', 2);
          continue;
        }
        if (r.type === P.REP_ERR_UNSUP) break; // old server: fall back to EXPORT_NAME below
        if (P.isOptionError(r.type)) throw refusal(P.OPT_GO, r);
      }
      if (size !== undefined)
        result = {
          exportName: uri.exportName,
          size,
          flags,
          tls,
          structured,
          blockSizes,
          description,
          contexts,
          exports,
          availableContexts,
          via: 'go',
        };
    }
    if (!result) {
      sendOption(P.OPT_EXPORT_NAME, nameBuf);
      const r = await reader.read(noZeroes ? 10 : 134).catch((e: unknown) => {
        throw new HavenError(
          'NOT_FOUND',
          `${what}: the server closed the connection on NBD_OPT_EXPORT_NAME (no such export?): ${errorMessage(e)}`,
        );
      });
      result = {
        exportName: uri.exportName,
        size: Number(r.readBigUInt64BE(0)),
        flags: r.readUInt16BE(8),
        tls,
        structured,
        contexts,
        exports,
        availableContexts,
        via: 'export-name',
      };
    }
    const leftover = reader.detach();
    if (leftover.length) fail(new Error('unexpected data from the server after the handshake'));
    return { socket, ...result };
  } catch (e) {
    socket.destroy();
    throw e;
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Lists the exports of a server (OPT_LIST), then ends politely with OPT_ABORT. Uses the same
 * greeting and TLS steps as `negotiate`.
 */
export async function listExports(
  uri: NbdUri,
  opts: HandshakeOptions = {},
): Promise<ExportEntry[] | undefined> {
  const n = await negotiate(uri, { ...opts, list: true });
  await disconnectSocket(n.socket);
  return n.exports;
}

/** Sends NBD_CMD_DISC and closes (used when only the handshake was wanted). */
export async function disconnectSocket(socket: Socket): Promise<void> {
  const h = Buffer.alloc(28);
  h.writeUInt32BE(P.REQUEST_MAGIC, 0);
  h.writeUInt16BE(P.CMD_DISC, 6);
  socket.end(h);
  if (!socket.destroyed) await once(socket, 'close').catch(() => undefined);
}

function u32(n: number) {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n);
  return b;
}
function u16(n: number) {
  const b = Buffer.alloc(2);
  b.writeUInt16BE(n);
  return b;
}
