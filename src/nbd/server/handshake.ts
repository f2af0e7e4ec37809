import type { BitmapView, BlockDevice } from '../../block/index.js';
import * as P from '../protocol.js';
import { infoBlockSize, infoExport, infoString, metaContextReply, optionError, optionReply } from './wire.js';

/** What the server offers under one name. */
export interface NbdExport {
  name: string;
  description?: string;
  device: BlockDevice;
  /** Dirty bitmaps offered as `qemu:dirty-bitmap:<name>` meta contexts. */
  bitmaps?: BitmapView[];
  /** At most this many clients in the transmission phase at once (default: unlimited). */
  maxConnections?: number;
}

export type MetaContext = { id: number; name: string } & (
  { kind: 'allocation' } | { kind: 'bitmap'; bitmap: BitmapView }
);

/** What the connection needs from the server during option haggling. */
export interface HandshakeHost {
  /** The export a client's name selects; "" is the default export, if the server has one. */
  findExport(name: string): NbdExport | undefined;
  exports(): NbdExport[];
  tlsConfigured: boolean;
  tlsRequired: boolean;
  /** Whether another client may enter the transmission phase on this export now. */
  hasRoom(exp: NbdExport): boolean;
}

/** Per-connection negotiation state ("Option haggling", proto.md §Newstyle negotiation). */
export interface HandshakeState {
  tls: boolean;
  structured: boolean;
  noZeroes: boolean;
  /**
   * Contexts chosen by the last SET_META_CONTEXT, and the export its name selected: compared as
   * the export, not the name, since "" and the default export's own name are the same export.
   */
  contexts: MetaContext[];
  contextsExport: NbdExport | undefined;
}

/** Outcome of one option: bytes to send, and what happens next. */
export type OptionOutcome =
  | { next: 'options'; reply: Buffer[] }
  | { next: 'starttls'; reply: Buffer[] }
  | { next: 'transmission'; reply: Buffer[]; export: NbdExport }
  | { next: 'close'; reply: Buffer[] };

export function transmissionFlags(exp: NbdExport): number {
  const d = exp.device;
  let f =
    P.FLAG_HAS_FLAGS |
    P.FLAG_SEND_FLUSH |
    P.FLAG_SEND_FUA |
    P.FLAG_SEND_TRIM |
    P.FLAG_SEND_WRITE_ZEROES |
    P.FLAG_SEND_DF |
    P.FLAG_SEND_CACHE |
    P.FLAG_SEND_FAST_ZERO;
  if (d.readOnly) f |= P.FLAG_READ_ONLY;
  // Multi-conn only where a flush through one connection covers writes through all (proto.md).
  if (d.flushCoversAll) f |= P.FLAG_CAN_MULTI_CONN;
  return f;
}

/** Handles one option; `data` is its complete payload. */
export function handleOption(
  host: HandshakeHost,
  st: HandshakeState,
  option: number,
  data: Buffer,
): OptionOutcome {
  const err = (type: number, msg: string): OptionOutcome => ({
    next: 'options',
    reply: [optionError(option, type, msg)],
  });

  // TLS-only mode: before STARTTLS nothing but STARTTLS and ABORT (proto.md §TLS support, FORCEDTLS).
  if (host.tlsRequired && !st.tls && option !== P.OPT_STARTTLS && option !== P.OPT_ABORT) {
    if (option === P.OPT_EXPORT_NAME) return { next: 'close', reply: [] }; // no way to refuse it but to hang up
    return err(P.REP_ERR_TLS_REQD, 'TLS is required: send NBD_OPT_STARTTLS first');
  }

  switch (option) {
    case P.OPT_EXPORT_NAME: {
      const exp = host.findExport(data.toString('utf8'));
      if (!exp || !host.hasRoom(exp)) return { next: 'close', reply: [] };
      const b = Buffer.alloc(st.noZeroes ? 10 : 134);
      b.writeBigUInt64BE(BigInt(exp.device.size), 0);
      b.writeUInt16BE(transmissionFlags(exp), 8);
      if (st.contextsExport !== exp) st.contexts = [];
      return { next: 'transmission', reply: [b], export: exp };
    }

    case P.OPT_ABORT:
      return { next: 'close', reply: [optionReply(option, P.REP_ACK)] };

    case P.OPT_LIST: {
      if (data.length !== 0) return err(P.REP_ERR_INVALID, 'NBD_OPT_LIST takes no data');
      const reply = host.exports().map((e) => {
        const name = Buffer.from(e.name, 'utf8');
        const desc = Buffer.from(e.description ?? '', 'utf8');
        const b = Buffer.allocUnsafe(4 + name.length + desc.length);
        b.writeUInt32BE(name.length, 0);
        name.copy(b, 4);
        desc.copy(b, 4 + name.length);
        return optionReply(option, P.REP_SERVER, b);
      });
      reply.push(optionReply(option, P.REP_ACK));
      return { next: 'options', reply };
    }

    case P.OPT_STARTTLS:
      if (data.length !== 0) return err(P.REP_ERR_INVALID, 'NBD_OPT_STARTTLS takes no data');
      if (st.tls) return err(P.REP_ERR_INVALID, 'TLS is already active');
      if (!host.tlsConfigured) return err(P.REP_ERR_POLICY, 'this server has no TLS configured');
      // What was negotiated in the clear does not carry over (proto.md: renegotiate after STARTTLS).
      st.structured = false;
      st.contexts = [];
      st.contextsExport = undefined;
      return { next: 'starttls', reply: [optionReply(option, P.REP_ACK)] };

    case P.OPT_STRUCTURED_REPLY:
      if (data.length !== 0) return err(P.REP_ERR_INVALID, 'NBD_OPT_STRUCTURED_REPLY takes no data');
      st.structured = true;
      return { next: 'options', reply: [optionReply(option, P.REP_ACK)] };

    case P.OPT_INFO:
    case P.OPT_GO:
      return infoOrGo(host, st, option, data);

    case P.OPT_LIST_META_CONTEXT:
    case P.OPT_SET_META_CONTEXT:
      return metaContext(host, st, option, data);

    default:
      return err(P.REP_ERR_UNSUP, `option ${option} is not supported`);
  }
}

function infoOrGo(host: HandshakeHost, st: HandshakeState, option: number, data: Buffer): OptionOutcome {
  const invalid = (msg: string): OptionOutcome => ({
    next: 'options',
    reply: [optionError(option, P.REP_ERR_INVALID, msg)],
  });
  if (data.length < 6) return invalid('option data too short');
  const nameLen = data.readUInt32BE(0);
  if (nameLen > data.length - 6) return invalid('export name length exceeds the option data');
  const name = data.toString('utf8', 4, 4 + nameLen);
  const nInfo = data.readUInt16BE(4 + nameLen);
  if (data.length !== 6 + nameLen + 2 * nInfo)
    return invalid('information request count does not match the option data');
  const exp = host.findExport(name);
  if (!exp) return unknownExport(host, option, name);
  if (option === P.OPT_GO && !host.hasRoom(exp))
    return {
      next: 'options',
      reply: [optionError(option, P.REP_ERR_POLICY, `export "${name}" has reached its connection limit`)],
    };

  const requested = new Set<number>();
  for (let i = 0; i < nInfo; i++) requested.add(data.readUInt16BE(6 + nameLen + 2 * i));
  const reply: Buffer[] = [];
  if (requested.has(P.INFO_NAME))
    reply.push(optionReply(option, P.REP_INFO, infoString(P.INFO_NAME, exp.name)));
  if (requested.has(P.INFO_DESCRIPTION) && exp.description)
    reply.push(optionReply(option, P.REP_INFO, infoString(P.INFO_DESCRIPTION, exp.description)));
  const bs = exp.device.blockSizes;
  reply.push(optionReply(option, P.REP_INFO, infoBlockSize(bs.minimum, bs.preferred, bs.maximum)));
  reply.push(optionReply(option, P.REP_INFO, infoExport(exp.device.size, transmissionFlags(exp))));
  reply.push(optionReply(option, P.REP_ACK));
  if (option === P.OPT_INFO) return { next: 'options', reply };
  if (st.contextsExport !== exp) st.contexts = [];
  return { next: 'transmission', reply, export: exp };
}

function unknownExport(host: HandshakeHost, option: number, name: string): OptionOutcome {
  const msg =
    name === ''
      ? `this server has no default export: name one in the URI, e.g. nbd://HOST:PORT/NAME (${host.exports().length} exported; nbdinfo --list shows them)`
      : `no export named "${name}"`;
  return { next: 'options', reply: [optionError(option, P.REP_ERR_UNKNOWN, msg)] };
}

function availableContexts(exp: NbdExport): Omit<MetaContext, 'id'>[] {
  return [
    { name: P.CONTEXT_BASE_ALLOCATION, kind: 'allocation' as const },
    ...(exp.bitmaps ?? []).map((b) => ({
      name: P.CONTEXT_DIRTY_BITMAP_PREFIX + b.name,
      kind: 'bitmap' as const,
      bitmap: b,
    })),
  ];
}

function metaContext(host: HandshakeHost, st: HandshakeState, option: number, data: Buffer): OptionOutcome {
  const invalid = (msg: string): OptionOutcome => ({
    next: 'options',
    reply: [optionError(option, P.REP_ERR_INVALID, msg)],
  });
  if (!st.structured) return invalid('negotiate NBD_OPT_STRUCTURED_REPLY before meta contexts');
  if (data.length < 8) return invalid('option data too short');
  const nameLen = data.readUInt32BE(0);
  if (nameLen > data.length - 8) return invalid('export name length exceeds the option data');
  const name = data.toString('utf8', 4, 4 + nameLen);
  const nQueries = data.readUInt32BE(4 + nameLen);
  const queries: string[] = [];
  let at = 8 + nameLen;
  for (let i = 0; i < nQueries; i++) {
    if (at + 4 > data.length) return invalid('query count exceeds the option data');
    const len = data.readUInt32BE(at);
    if (len > data.length - at - 4) return invalid('query length exceeds the option data');
    queries.push(data.toString('utf8', at + 4, at + 4 + len));
    at += 4 + len;
  }
  if (at !== data.length) return invalid('trailing bytes after the queries');
  const exp = host.findExport(name);
  if (!exp) return unknownExport(host, option, name);

  const available = availableContexts(exp);
  const reply: Buffer[] = [];
  if (option === P.OPT_LIST_META_CONTEXT) {
    // Queries may be namespaces ("base:", "qemu:") or leaf prefixes ("qemu:dirty-bitmap:").
    const matches = (c: { name: string }) =>
      queries.length === 0 || queries.some((q) => c.name === q || (q.endsWith(':') && c.name.startsWith(q)));
    for (const c of available)
      if (matches(c)) reply.push(optionReply(option, P.REP_META_CONTEXT, metaContextReply(0, c.name)));
  } else {
    st.contexts = [];
    st.contextsExport = exp;
    for (const q of new Set(queries)) {
      const c = available.find((a) => a.name === q);
      if (!c) continue;
      const ctx = { ...c, id: st.contexts.length + 1 } as MetaContext;
      st.contexts.push(ctx);
      reply.push(optionReply(option, P.REP_META_CONTEXT, metaContextReply(ctx.id, ctx.name)));
    }
  }
  reply.push(optionReply(option, P.REP_ACK));
  return { next: 'options', reply };
}
