import { resolve } from 'node:path';
import { openRawFile, type BlockDevice } from '../block/index.js';
import { invalidArgument, logger } from '../common/index.js';
import { checkReadable } from './image-file.js';
import { NbdServer, type ListenAddress, type NbdTlsOptions } from './server/index.js';

export interface ServeImageOptions {
  image: string;
  name?: string;
  readOnly?: boolean;
  /** "HOST:PORT" (default 127.0.0.1:10809) or a unix socket path. */
  listen?: string;
  socket?: string;
  tls?: NbdTlsOptions;
  maxConnections?: number;
}

export interface ServingImage {
  /** Where clients connect, as an NBD URI. */
  uri: string;
  address: ListenAddress;
  name: string;
  /** Stops serving (in-flight requests finish) and closes the image. */
  stop(): Promise<void>;
}

export const DEFAULT_NBD_PORT = 10809;

/** Serves a raw image file over NBD until stopped. */
export async function serveImage(opts: ServeImageOptions): Promise<ServingImage> {
  if (opts.listen && opts.socket) throw invalidArgument('give --listen or --socket, not both');
  checkReadable(resolve(opts.image)); // a FIFO would block the open for ever
  const device: BlockDevice = openRawFile(resolve(opts.image), { readOnly: opts.readOnly ?? false });
  return serveDevice(device, resolve(opts.image), opts);
}

/** Serves a block device over NBD until stopped (stopping closes it, then runs `onStop`). */
export async function serveDevice(
  device: BlockDevice,
  description: string,
  opts: Omit<ServeImageOptions, 'image' | 'readOnly'> & { onStop?: () => void | Promise<void> },
): Promise<ServingImage> {
  if (opts.listen && opts.socket) throw invalidArgument('give --listen or --socket, not both');
  const name = opts.name ?? 'disk';
  // Its only export is also the default one: `nbd://host:port` reaches it as qemu-img and nbdcopy spell it.
  const server = new NbdServer({
    log: logger('nbd-server'),
    defaultExport: name,
    ...(opts.tls ? { tls: opts.tls } : {}),
  });
  server.addExport({
    name,
    device,
    description,
    ...(opts.maxConnections ? { maxConnections: opts.maxConnections } : {}),
  });
  let address: ListenAddress;
  try {
    address = await server.listen(
      opts.socket
        ? { path: resolve(opts.socket) }
        : parseHostPort(opts.listen ?? `127.0.0.1:${DEFAULT_NBD_PORT}`),
    );
  } catch (err) {
    await device.close();
    await opts.onStop?.();
    throw err;
  }
  const scheme = opts.tls ? 'nbds' : 'nbd';
  const uri =
    'path' in address
      ? `${scheme}+unix:///${encodeURIComponent(name)}?socket=${address.path}`
      : `${scheme}://${address.host.includes(':') ? `[${address.host}]` : address.host}:${address.port}/${encodeURIComponent(name)}`;
  return {
    uri,
    address,
    name,
    async stop() {
      await server.close();
      await device.close();
      await opts.onStop?.();
    },
  };
}

export function parseHostPort(s: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]*)):(\d+)$/.exec(s);
  const port = m ? Number(m[3]) : NaN;
  if (!m || !Number.isInteger(port) || port < 0 || port > 65535)
    throw invalidArgument(`"${s}" is not HOST:PORT (e.g. 127.0.0.1:10809)`);
  return { host: m[1] ?? (m[2] || '127.0.0.1'), port };
}
