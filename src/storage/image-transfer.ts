import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { copyBlocks, openRawFile, type CopyOptions, type CopyResult } from '../block/index.js';
import { HavenError, invalidArgument, logger, outputTarget, stageFile } from '../common/index.js';
import {
  IMAGE_FORMATS,
  NbdServer,
  connectNbd,
  copyEndpoints,
  inspectImage,
  openDestination,
  startQemuNbd,
  type Endpoint,
  type InspectedImage,
} from '../nbd/index.js';
import type { VolumeInfo } from './pool.js';
import type { StorageService } from './service.js';

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
    // The new volume reads as zeroes: zero ranges of the image need no write.
    const target = storage.openDevice(opts.name);
    const into = { ...copyOpts, fresh: true, sourceName: path, targetName: `volume ${opts.name}` };
    const copy =
      format === 'raw'
        ? await (async () => {
            const source = openRawFile(path, { readOnly: true });
            try {
              return await copyBlocks(source, target, into);
            } finally {
              source.close();
            }
          })()
        : await withQemuNbd(info, async (uri) => {
            const source = await connectNbd(uri, { readOnly: true, connections: 4 });
            try {
              return await copyBlocks(source, target, into);
            } finally {
              await source.close();
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
      const r = await copyEndpoints(src, dst, copyOptions(opts));
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
