import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { HavenError } from '../common/index.js';
import { connectNbd } from './client/index.js';

export const IMAGE_FORMATS = new Set(['raw', 'qcow2', 'vmdk', 'vhdx', 'vpc', 'vdi']);

/**
 * Serves an image of any format qemu reads (qcow2, vmdk, vhdx, …) read-only through qemu-nbd on
 * a private unix socket, for Haven's NBD client; `stop` ends qemu-nbd and removes the socket.
 */
export async function startQemuNbd(path: string, format: string): Promise<{ uri: string; stop: () => void }> {
  if (!IMAGE_FORMATS.has(format))
    throw new HavenError(
      'INVALID_ARGUMENT',
      `image format "${format}" is not one Haven reads (${[...IMAGE_FORMATS].join(', ')})`,
    );
  const dir = mkdtempSync(join(tmpdir(), 'haven-qemu-nbd-'));
  const sock = join(dir, 'nbd.sock');
  const child = spawn(
    'qemu-nbd',
    ['-r', '-f', format, '--shared=8', '-x', 'img', `--socket=${sock}`, '-t', path],
    {
      stdio: ['ignore', 'ignore', 'pipe'],
    },
  );
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const stop = () => {
    child.kill('SIGTERM');
    rmSync(dir, { recursive: true, force: true });
  };
  const uri = `nbd+unix:///img?socket=${sock}`;
  const deadline = Date.now() + 10_000;
  for (;;) {
    try {
      const probe = await connectNbd(uri, { readOnly: true });
      await probe.close();
      return { uri, stop };
    } catch (err) {
      if (child.exitCode !== null || Date.now() > deadline) {
        stop();
        throw new HavenError(
          'IO',
          `qemu-nbd could not serve ${path}: ${stderr.trim() || (err as Error).message}`,
        );
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}

export interface ImageInfo {
  format: string;
  virtualSize: number;
}

export function imageInfo(path: string): ImageInfo {
  let out: string;
  try {
    out = execFileSync('qemu-img', ['info', '--output=json', path], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'pipe'],
    });
  } catch (err) {
    const msg = (err as { stderr?: string }).stderr?.trim() || (err as Error).message;
    throw new HavenError('INVALID_ARGUMENT', `cannot read image ${path}: ${msg}`);
  }
  const j = JSON.parse(out) as { format: string; 'virtual-size': number };
  return { format: j.format, virtualSize: j['virtual-size'] };
}
