import { resolve } from 'node:path';
import { invalidArgument, logger } from '../common/index.js';
import {
  DEFAULT_NBD_PORT,
  NbdServer,
  parseHostPort,
  type ListenAddress,
  type NbdTlsOptions,
} from '../nbd/index.js';
import { StorageExports } from './exports.js';
import { sitePsk } from './nbd-access.js';
import { openStorage } from './open.js';
import type { StorageService } from './service.js';

export interface ServeStorageOptions {
  dataDir?: string;
  listen?: string;
  socket?: string;
  tls?: NbdTlsOptions;
  /** TCP without TLS or authentication: anyone who reaches it reads and writes every volume. */
  plain?: boolean;
}

export interface ServingStorage {
  address: ListenAddress;
  /** NBD URI of an export on this server. */
  uriOf(exportName: string): string;
  exports: StorageExports;
  storage: StorageService;
  stop(): Promise<void>;
}

/** The storage service of a site: every volume (and snapshot, read-only) over NBD. */
export async function serveStorage(opts: ServeStorageOptions = {}): Promise<ServingStorage> {
  if (opts.listen && opts.socket) throw invalidArgument('give --listen or --socket, not both');
  if (opts.plain && (opts.tls || opts.socket))
    throw invalidArgument('--plain is for a TCP listener without TLS');
  const storage = openStorage(opts.dataDir);
  const log = logger('storage-nbd');
  // TCP is TLS unless the operator says otherwise: by default with the site's own key, as the
  // daemon's listener (a unix socket is private to the site's user already).
  const psk = !opts.socket && !opts.tls && !opts.plain ? sitePsk(storage.dataDir, log) : undefined;
  const tls = opts.tls ?? (psk ? { psk: psk.file } : undefined);
  if (opts.plain)
    log.warn(
      'serving every volume over plain TCP WITHOUT AUTHENTICATION: anyone who reaches the port reads and writes them',
    );
  const server = new NbdServer({ log, ...(tls ? { tls } : {}) });
  const exports = new StorageExports(storage, server);
  let address: ListenAddress;
  try {
    exports.refresh();
    address = await server.listen(
      opts.socket
        ? { path: resolve(opts.socket) }
        : parseHostPort(opts.listen ?? `127.0.0.1:${DEFAULT_NBD_PORT}`),
    );
  } catch (err) {
    storage.close();
    throw err;
  }
  const scheme = tls ? 'nbds' : 'nbd';
  const user = psk ? `${psk.identity}@` : '';
  const query = psk ? `?tls-psk-file=${psk.file}` : '';
  return {
    address,
    exports,
    storage,
    uriOf: (name) =>
      'path' in address
        ? `${scheme}+unix:///${encodeURIComponent(name)}?socket=${address.path}`
        : `${scheme}://${user}${address.host}:${address.port}/${encodeURIComponent(name)}${query}`,
    async stop() {
      await server.close();
      storage.close();
    },
  };
}
