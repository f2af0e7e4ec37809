import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { openRawFile } from '../../block/index.js';
import {
  HavenError,
  defaultDataDir,
  invalidArgument,
  logger,
  outputTarget,
  stageFile,
} from '../../common/index.js';
import {
  IMAGE_FORMATS,
  NbdServer,
  connectNbd,
  inspectImage,
  startQemuNbd,
  type InspectedImage,
  type ListenAddress,
  type NbdTlsOptions,
} from '../../nbd/index.js';
import { StorageExports, StorageService, type VolumeInfo } from '../../storage/index.js';
import { copyDevice, type CopyOptions, type CopyResult } from './nbd-copy.js';
import { openDestination, type Endpoint } from './nbd-endpoints.js';
import { parseHostPort, DEFAULT_NBD_PORT } from './serve-image.js';
import { sitePsk } from '../site/nbd-access.js';

export { defaultDataDir };

/** Opens a site's storage for one administrative operation (the data directory is locked meanwhile). */
export function openStorage(dataDir = defaultDataDir()): StorageService {
  return StorageService.open(dataDir);
}

export async function withStorage<T>(
  dataDir: string | undefined,
  fn: (s: StorageService) => T | Promise<T>,
): Promise<T> {
  const s = openStorage(dataDir);
  try {
    return await fn(s);
  } finally {
    s.close();
  }
}

// ---- serving -----------------------------------------------------------------------------

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

// ---- import and export -------------------------------------------------------------------

/** Serves a non-raw image read-only through qemu-nbd for the copy engine. */
async function withQemuNbd<T>(image: InspectedImage, fn: (uri: string) => Promise<T>): Promise<T> {
  const q = await startQemuNbd(image.path, image.format, { noBacking: image.probed });
  try {
    return await fn(q.uri);
  } finally {
    q.stop();
  }
}

/**
 * Imports an image (raw directly; qcow2, vmdk, vhdx through qemu-nbd) into a new volume, verified.
 * Without `format` it is probed, and an image that names other files is refused (inspectImage).
 */
export async function importVolume(
  storage: StorageService,
  opts: { image: string; name: string; pool: string; format?: string } & Pick<
    CopyOptions,
    'signal' | 'onProgress'
  >,
): Promise<{ volume: VolumeInfo; copy: CopyResult }> {
  const copyOpts = copyOptions(opts);
  const info = await inspectImage(opts.image, opts.format);
  const path = info.path;
  const format = info.format;
  const size = Math.ceil(info.virtualSize / 512) * 512;
  storage.createVolume(opts.name, size, opts.pool);
  try {
    const dst = {
      device: storage.openDevice(opts.name),
      name: `volume ${opts.name}`,
      kind: 'file' as const,
      fresh: true,
    };
    const copy =
      format === 'raw'
        ? await (async () => {
            const src = {
              device: openRawFile(path, { readOnly: true }),
              name: path,
              kind: 'file' as const,
              fresh: false,
            };
            try {
              return await copyDevice(src, dst, copyOpts);
            } finally {
              src.device.close();
            }
          })()
        : await withQemuNbd(info, async (uri) => {
            const device = await connectNbd(uri, { readOnly: true, connections: 4 });
            try {
              return await copyDevice({ device, name: path, kind: 'nbd', fresh: false }, dst, copyOpts);
            } finally {
              await device.close();
            }
          });
    return { volume: storage.volume(opts.name), copy };
  } catch (err) {
    storage.deleteVolume(opts.name); // an import that failed leaves nothing behind
    throw err;
  }
}

/**
 * Exports a volume (or "volume@snapshot") to a raw image file, verified; other formats via
 * qemu-img. The file is written under a temporary name and appears only complete and verified;
 * an existing file (or block device, raw only) is replaced only with `force`.
 */
export async function exportVolume(
  storage: StorageService,
  opts: { source: string; image: string; format?: string; force?: boolean } & Pick<
    CopyOptions,
    'signal' | 'onProgress'
  >,
): Promise<CopyResult> {
  const format = opts.format ?? 'raw';
  if (!IMAGE_FORMATS.has(format))
    throw invalidArgument(
      `image format "${format}" is not one Haven exports (${[...IMAGE_FORMATS].join(', ')})`,
    );
  const out = resolve(opts.image);
  if (format !== 'raw' && outputTarget(out, opts.force).kind === 'block')
    throw invalidArgument(`${out} is a block device: export to it as raw (--format raw)`);
  const device = storage.openDevice(opts.source, { readOnly: true });
  const src = { device, name: opts.source, kind: 'file' as const, fresh: false };
  if (format === 'raw') {
    let ok = false;
    let dst: Endpoint | undefined;
    try {
      dst = await openDestination(out, device.size, { force: opts.force });
      const r = await copyDevice(src, dst, copyOptions(opts));
      ok = true;
      return r;
    } finally {
      await dst?.device.close();
      await device.close();
      dst?.finish?.(ok);
    }
  }
  // Other formats: qemu-img reads the volume from a private NBD export.
  outputTarget(out, opts.force);
  const staged = stageFile(out, 0);
  const dir = mkdtempSync(join(tmpdir(), 'haven-export-'));
  const server = new NbdServer({ log: logger('export-nbd') });
  let ok = false;
  try {
    server.addExport({ name: 'vol', device });
    const addr = await server.listen({ path: join(dir, 'nbd.sock') });
    const uri = `nbd+unix:///vol?socket=${(addr as { path: string }).path}`;
    const started = performance.now();
    // Both run beside our event loop, which serves them the volume.
    await qemuImg(['convert', '-f', 'raw', '-O', format, uri, staged.tmp], 'qemu-img convert failed', 'IO');
    await qemuImg(
      ['compare', '-q', '-f', 'raw', '-F', format, uri, staged.tmp],
      `verification failed: ${out} (${format}) differs from ${opts.source}`,
      'CORRUPT',
    );
    const seconds = (performance.now() - started) / 1000;
    ok = true;
    return {
      source: opts.source,
      destination: out,
      size: device.size,
      dataBytes: 0,
      zeroBytes: 0,
      zeroedBytes: 0,
      verified: true,
      seconds,
      rate: device.size / seconds,
    };
  } finally {
    await server.close();
    await device.close();
    rmSync(dir, { recursive: true, force: true });
    if (ok) staged.commit();
    else staged.abort();
  }
}

function qemuImg(args: string[], what: string, code: 'IO' | 'CORRUPT'): Promise<void> {
  return new Promise<void>((res, rej) => {
    const p = spawn('qemu-img', args, { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    p.stderr.on('data', (d: Buffer) => (err += d.toString()));
    p.on('error', (e) => rej(new HavenError('IO', `${what}: ${e.message}`)));
    p.on('exit', (c) =>
      c === 0 ? res() : rej(new HavenError(code, `${what}${err.trim() ? `: ${err.trim()}` : ''}`)),
    );
  });
}

function copyOptions(o: Pick<CopyOptions, 'signal' | 'onProgress'>): CopyOptions {
  return { ...(o.signal ? { signal: o.signal } : {}), ...(o.onProgress ? { onProgress: o.onProgress } : {}) };
}
