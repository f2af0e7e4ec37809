import { createServer, type Server, type Socket } from 'node:net';
import { once } from 'node:events';
import { chmodSync, lstatSync, rmSync } from 'node:fs';
import { conflict, invalidArgument, logger, type Logger } from '../../common/index.js';
import { BufferPool } from './buffer-pool.js';
import { MemoryBudget } from './memory-budget.js';
import { ReceiveBufferPool } from './receive-buffers.js';
import { Connection, type ConnectionHost } from './connection.js';
import type { NbdExport } from './handshake.js';
import { TlsAuth, type NbdTlsOptions } from './tls-auth.js';
import type { NbdRequestObserver } from './observer.js';

export type { NbdTlsOptions } from './tls-auth.js';
export type { NbdRequestObserver, NbdRequestRecorder } from './observer.js';

/** A client that has not reached the transmission phase by then is dropped (slow-client bound). */
export const DEFAULT_HANDSHAKE_TIMEOUT_MS = 10_000;

export interface NbdServerOptions {
  tls?: NbdTlsOptions;
  /** Refuse everything but STARTTLS before TLS (default: true whenever TLS is configured). */
  tlsOnly?: boolean;
  /** Milliseconds from accept to the transmission phase, TLS included (default 10 s). */
  handshakeTimeoutMs?: number;
  /**
   * The export a client that names none (`nbd://host:port`, the empty name) gets. Without it
   * such a client is refused: on a server of many exports any choice could be the wrong disk.
   */
  defaultExport?: string;
  /**
   * Request data (write payloads, read reply buffers) the server holds at once across all its
   * connections (default 16 MiB); clients wait while it is used up.
   */
  maxBytesInFlight?: number;
  /** Told of the requests served, for metrics (the server knows nothing of how they are kept). */
  observer?: NbdRequestObserver;
  log?: Logger;
}

/** What the server's memory budget holds now and held at most. */
export interface NbdMemoryStats {
  bytesInFlight: number;
  peakBytesInFlight: number;
  limit: number;
  /** Socket receive buffers allocated since the start (receive-buffers.ts): flat under steady traffic. */
  receiveBuffersAllocated: number;
}

export const DEFAULT_MAX_BYTES_IN_FLIGHT = 16 * 1024 * 1024;
/** What one socket read fills at most (libuv's suggestion for stream reads). */
const RECEIVE_BUFFER = 64 * 1024;

export type ListenAddress = { host: string; port: number } | { path: string };

/**
 * An NBD server (NetworkBlockDevice/nbd doc/proto.md, fixed newstyle) exporting BlockDevices
 * by name over TCP and unix sockets, optionally TLS-only. The empty export name "" selects the
 * export named by `defaultExport`, if any (proto.md: "the default export (if any)").
 */
export class NbdServer {
  private readonly exportsByName = new Map<string, NbdExport>();
  private readonly attached = new Map<string, number>();
  private readonly connections = new Set<Connection>();
  private readonly servers: { server: Server; address: ListenAddress }[] = [];
  private readonly host: ConnectionHost;
  private closing = false;
  private readonly memory: MemoryBudget;

  constructor(opts: NbdServerOptions = {}) {
    const tls = opts.tls ? new TlsAuth(opts.tls) : undefined;
    const tlsRequired = !!tls && opts.tlsOnly !== false;
    if (tls?.clientAuth && !tlsRequired)
      throw invalidArgument('client authentication needs a TLS-only server (tlsOnly must not be false)');
    const handshakeTimeoutMs = opts.handshakeTimeoutMs ?? DEFAULT_HANDSHAKE_TIMEOUT_MS;
    const defaultExport = opts.defaultExport;
    if (!(handshakeTimeoutMs > 0)) throw invalidArgument('the NBD handshake timeout must be more than 0');
    const budget = opts.maxBytesInFlight ?? DEFAULT_MAX_BYTES_IN_FLIGHT;
    if (!(budget > 0)) throw invalidArgument('maxBytesInFlight of an NBD server must be more than 0');
    this.memory = new MemoryBudget(budget);
    this.host = {
      tls,
      handshakeTimeoutMs,
      tlsConfigured: !!tls,
      tlsRequired,
      log: opts.log ?? logger('nbd-server'),
      // Free buffers kept for reuse count towards the process's memory too: a quarter of the budget.
      // From 4 KiB: a fresh buffer per small read reply is garbage at 100 k+ requests a second.
      buffers: new BufferPool(4 * 1024, budget / 4),
      // As many free receive buffers as the budget's payloads fill: dropping one makes garbage
      // that lives until a full collection, keeping it costs nothing the peak had not held.
      receiveBuffers: new ReceiveBufferPool(RECEIVE_BUFFER, Math.ceil(budget / RECEIVE_BUFFER)),
      memory: this.memory,
      observer: opts.observer,
      findExport: (name) =>
        this.exportsByName.get(name === '' && defaultExport !== undefined ? defaultExport : name),
      exports: () => [...this.exportsByName.values()],
      hasRoom: (exp) =>
        exp.maxConnections === undefined || (this.attached.get(exp.name) ?? 0) < exp.maxConnections,
      attach: (exp) => this.attached.set(exp.name, (this.attached.get(exp.name) ?? 0) + 1),
      detach: (exp) => this.attached.set(exp.name, (this.attached.get(exp.name) ?? 1) - 1),
    };
  }

  addExport(exp: NbdExport): void {
    if (this.exportsByName.has(exp.name)) throw conflict(`an export named "${exp.name}" already exists`);
    if (Buffer.byteLength(exp.name) > 4096) throw invalidArgument('export names are at most 4096 bytes');
    this.exportsByName.set(exp.name, exp);
  }

  removeExport(name: string): void {
    this.exportsByName.delete(name);
  }

  /** The request data held now and at most, against the budget (`maxBytesInFlight`). */
  memoryStats(): NbdMemoryStats {
    return {
      bytesInFlight: this.memory.used,
      peakBytesInFlight: this.memory.peak,
      limit: this.memory.limit,
      receiveBuffersAllocated: this.host.receiveBuffers.allocated,
    };
  }

  /** Connections in the transmission phase of an export. */
  clientsOf(name: string): number {
    return this.attached.get(name) ?? 0;
  }

  /** Connections in the transmission phase, per export that had any since the server started. */
  clientCounts(): ReadonlyMap<string, number> {
    return this.attached;
  }

  async listen(address: ListenAddress): Promise<ListenAddress> {
    const server = createServer((socket) => this.accept(socket));
    if ('path' in address) {
      removeStaleSocket(address.path);
      server.listen(address.path);
    } else server.listen(address.port, address.host);
    await Promise.race([
      once(server, 'listening'),
      once(server, 'error').then(([e]) => Promise.reject(e as Error)),
    ]);
    // Only its owner may connect to a unix socket (the directory should be private too).
    if ('path' in address) chmodSync(address.path, 0o600);
    const bound: ListenAddress =
      'path' in address ? address : { host: address.host, port: (server.address() as { port: number }).port };
    this.servers.push({ server, address: bound });
    return bound;
  }

  /** Stops accepting, lets in-flight requests finish, closes every connection. */
  async close(): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    for (const { server } of this.servers) server.close();
    await Promise.all([...this.connections].map((c) => c.shutdown()));
    for (const { address } of this.servers) if ('path' in address) removeStaleSocket(address.path, false);
  }

  private accept(socket: Socket): void {
    if (this.closing) return void socket.destroy();
    const conn = new Connection(socket, this.host);
    this.connections.add(conn);
    void conn.closed.then(() => this.connections.delete(conn));
  }
}

/**
 * Removes a socket left by an earlier server at `path`; anything else there is refused, never
 * deleted (a mistyped --socket must not cost a file).
 */
function removeStaleSocket(path: string, refuseOthers = true): void {
  let st;
  try {
    st = lstatSync(path);
  } catch {
    return; // nothing there
  }
  if (st.isSocket()) rmSync(path, { force: true });
  else if (refuseOthers)
    throw conflict(`${path} exists and is not a socket: give a free path for the socket`);
}
