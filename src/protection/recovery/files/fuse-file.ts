import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import type { BlockDevice } from '../../../block/index.js';
import { HavenError, logger, unsupported } from '../../../common/index.js';
import { NbdServer } from '../../../nbd/index.js';

/** A block device seen as a local, read-only file, for tools that read only files (debugfs). */
export interface DeviceFile {
  path: string;
  /** Unmounts, stops nbdfuse and the NBD server. Safe to call more than once; never throws. */
  close(): Promise<void>;
}

const READY_MS = 15_000;
const STOP_MS = 5_000; // then nbdfuse is killed, and the mount lazily detached

/**
 * Exposes `device` as the file `workDir/mnt/disk`: Haven's NBD server on a unix socket in
 * `workDir`, and libnbd's nbdfuse (read-only) mounting it over FUSE. Reads of the file reach the
 * device through this process's event loop, so callers must read it from child processes
 * (spawned asynchronously), never synchronously from this one.
 */
export async function exposeAsFile(
  device: BlockDevice,
  workDir: string,
  signal?: AbortSignal,
): Promise<DeviceFile> {
  // nbdfuse --unix names no export: the one disk is the default export too.
  const server = new NbdServer({ log: logger('files-nbd'), defaultExport: 'disk' });
  server.addExport({ name: 'disk', device, description: 'file-level restore' });
  const socket = join(workDir, 'nbd.sock');
  await server.listen({ path: socket });
  const mnt = join(workDir, 'mnt');
  mkdirSync(mnt);
  const path = join(mnt, 'disk');
  let child: ChildProcess | undefined;
  let exited: Promise<void> = Promise.resolve();
  let stderr = '';
  let closed = false;
  const close = async () => {
    if (closed) return;
    closed = true;
    if (child && child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM'); // nbdfuse unmounts on SIGTERM
      const timer = setTimeout(() => child?.kill('SIGKILL'), STOP_MS);
      await exited;
      clearTimeout(timer);
    }
    if (isMounted(mnt)) await runQuietly('umount', ['-l', mnt]);
    await server.close();
  };
  try {
    child = spawn('nbdfuse', ['-r', path, '--unix', socket], { stdio: ['ignore', 'ignore', 'pipe'] });
    exited = new Promise((res) => child!.once('close', () => res()));
    child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    const failed = new Promise<never>((_, rej) => {
      child!.once('error', (err: NodeJS.ErrnoException) =>
        rej(
          err.code === 'ENOENT'
            ? unsupported('file-level restore needs nbdfuse (Debian package libnbd-bin): run scripts/setup')
            : err,
        ),
      );
      child!.once('exit', (code, sig) =>
        rej(
          new HavenError(
            'IO',
            `nbdfuse exited (${sig ?? code}) before the disk was mounted: ${stderr.trim() || 'no message'} (FUSE needs /dev/fuse and the right to mount)`,
          ),
        ),
      );
    });
    await Promise.race([failed, waitForFile(path, device.size, signal)]);
    failed.catch(() => undefined); // it may still reject once the mount stops
    return { path, close };
  } catch (err) {
    await close();
    throw err;
  }
}

async function waitForFile(path: string, size: number, signal?: AbortSignal): Promise<void> {
  const deadline = Date.now() + READY_MS;
  for (let wait = 5; ; wait = Math.min(100, wait * 2)) {
    signal?.throwIfAborted();
    try {
      if (statSync(path).size === size) return;
    } catch {
      // not mounted yet
    }
    if (Date.now() > deadline)
      throw new HavenError('TIMEOUT', `nbdfuse did not mount ${path} within ${READY_MS / 1000} s`);
    await new Promise((r) => setTimeout(r, wait));
  }
}

function isMounted(dir: string): boolean {
  try {
    return readFileSync('/proc/self/mountinfo', 'utf8')
      .split('\n')
      .some((l) => l.split(' ')[4] === dir);
  } catch {
    return false;
  }
}

function runQuietly(cmd: string, args: string[]): Promise<void> {
  return new Promise((res) => {
    const p = spawn(cmd, args, { stdio: 'ignore' });
    p.once('error', () => res());
    p.once('close', () => res());
  });
}
