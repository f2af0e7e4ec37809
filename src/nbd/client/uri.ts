import { invalidArgument } from '../../common/index.js';

/**
 * NBD URIs (NetworkBlockDevice/nbd doc/uri.md):
 *
 *   nbd://host[:port]/export            TCP, no TLS (unless the caller asks for it)
 *   nbds://host[:port]/export           TCP, TLS required
 *   nbd+unix:///export?socket=PATH      Unix socket
 *   nbds+unix:///export?socket=PATH     Unix socket, TLS required
 *
 * The export name is the path without its leading "/", percent-decoded. Query parameters
 * understood: socket, tls-hostname, tls-verify-peer; tls-type only as "x509". Anything else is
 * refused (the specification says unknown parameters SHOULD be diagnosed). Certificates are not
 * part of the URI: they are passed to connectNbd separately.
 */
export interface NbdUri {
  /** The URI as given (for messages). */
  readonly text: string;
  readonly tls: boolean;
  readonly transport: { kind: 'tcp'; host: string; port: number } | { kind: 'unix'; path: string };
  readonly exportName: string;
  /** Name to verify the server certificate against (tls-hostname, else the host). */
  readonly tlsHostname?: string;
  /** tls-verify-peer=0 turns verification off (tests only). */
  readonly tlsVerifyPeer: boolean;
}

export const NBD_DEFAULT_PORT = 10809;
const SCHEMES = ['nbd:', 'nbds:', 'nbd+unix:', 'nbds+unix:'];

/** True when `s` looks like an NBD URI (as opposed to a file path). */
export function isNbdUri(s: string): boolean {
  return /^nbds?(\+unix)?:\/\//i.test(s);
}

export function parseNbdUri(text: string): NbdUri {
  const bad = (why: string) => invalidArgument(`bad NBD URI '${text}': ${why}`);
  let u: URL;
  try {
    u = new URL(text);
  } catch {
    throw bad('not a URI (expected nbd://host[:port]/export or nbd+unix:///export?socket=PATH)');
  }
  const scheme = u.protocol.toLowerCase();
  if (!SCHEMES.includes(scheme))
    throw bad(`unknown scheme '${scheme.slice(0, -1)}' (expected nbd, nbds, nbd+unix or nbds+unix)`);
  const tls = scheme.startsWith('nbds');
  const unix = scheme.endsWith('+unix:');
  if (u.username || u.password) throw bad('user information is not supported');
  if (u.hash) throw bad('a fragment (#…) is not allowed');

  let exportName: string;
  try {
    exportName = decodeURIComponent(u.pathname.replace(/^\//, ''));
  } catch {
    throw bad('the export name has broken percent-encoding');
  }
  if (exportName.includes('\0')) throw bad('the export name contains NUL');
  if (Buffer.byteLength(exportName) > 4096) throw bad('the export name is longer than 4096 bytes');

  let socket: string | undefined;
  let tlsHostname: string | undefined;
  let tlsVerifyPeer = true;
  for (const [key, value] of u.searchParams) {
    switch (key) {
      case 'socket':
        socket = value;
        break;
      case 'tls-hostname':
        tlsHostname = value;
        break;
      case 'tls-verify-peer':
        if (value !== '0' && value !== '1') throw bad(`tls-verify-peer must be 0 or 1, not '${value}'`);
        tlsVerifyPeer = value === '1';
        break;
      case 'tls-type':
        if (value !== 'x509') throw bad(`tls-type '${value}' is not supported (only x509)`);
        break;
      default:
        throw bad(`unknown query parameter '${key}'`);
    }
  }

  if (unix) {
    if (u.host) throw bad('a Unix socket URI takes no host (write nbd+unix:///export?socket=PATH)');
    if (!socket) throw bad("a Unix socket URI needs '?socket=PATH'");
    return { text, tls, transport: { kind: 'unix', path: socket }, exportName, tlsHostname, tlsVerifyPeer };
  }
  if (socket !== undefined) throw bad("'socket=' belongs to nbd+unix:// URIs only");
  const host = u.hostname.replace(/^\[(.*)\]$/, '$1');
  if (!host) throw bad('no host (write nbd://host[:port]/export)');
  const port = u.port ? Number(u.port) : NBD_DEFAULT_PORT;
  if (!Number.isInteger(port) || port < 1 || port > 65535) throw bad(`bad port '${u.port}'`);
  return {
    text,
    tls,
    transport: { kind: 'tcp', host, port },
    exportName,
    tlsHostname: tlsHostname ?? host,
    tlsVerifyPeer,
  };
}

/** Formats an NBD URI (export name percent-encoded). */
export function formatNbdUri(uri: Omit<NbdUri, 'text' | 'tlsVerifyPeer'>): string {
  const name = uri.exportName
    .split('/')
    .map((p) => encodeURIComponent(p))
    .join('/');
  if (uri.transport.kind === 'unix')
    return `${uri.tls ? 'nbds' : 'nbd'}+unix:///${name}?socket=${encodeURIComponent(uri.transport.path)}`;
  const host = uri.transport.host.includes(':') ? `[${uri.transport.host}]` : uri.transport.host;
  const port = uri.transport.port === NBD_DEFAULT_PORT ? '' : `:${uri.transport.port}`;
  return `${uri.tls ? 'nbds' : 'nbd'}://${host}${port}/${name}`;
}
