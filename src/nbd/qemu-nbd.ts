import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { HavenError } from '../common/index.js';
import { connectNbd } from './client/index.js';
import { BACKING_FORMATS, IMAGE_FORMATS } from './image-file.js';

/**
 * Serves an image of any format qemu reads (qcow2, vmdk, vhdx, …) read-only through qemu-nbd on
 * a private unix socket, for Haven's NBD client; `stop` ends qemu-nbd and removes the socket.
 * The format is always given (qemu-nbd never probes). With `noBacking` (an image whose format
 * was probed, see inspectImage) its backing file is disabled, so that a header written after it
 * was inspected still cannot make qemu read another file.
 *
 * qemu-nbd runs with `-t` (it must outlive the readiness probe and serve the copy's several
 * connections), so nothing would end it if this process died without calling `stop` (kill -9 of
 * the daemon during an import). It is therefore started through `setpriv --pdeathsig TERM`
 * (util-linux, always on Debian): the kernel sends it SIGTERM the moment the thread that spawned
 * it exits — Node cannot call prctl(PR_SET_PDEATHSIG) itself, and setpriv execs qemu-nbd in place,
 * so the pid is qemu-nbd's. Better than reaping recorded pids at the next start: nothing waits for
 * a next start, and no pid (possibly reused meanwhile) is ever killed. Spawn from the main thread
 * only: a worker thread's exit would end it.
 */
export async function startQemuNbd(
  path: string,
  format: string,
  opts: { noBacking?: boolean } = {},
): Promise<{ uri: string; pid: number; stop: () => void }> {
  if (!IMAGE_FORMATS.has(format))
    throw new HavenError(
      'INVALID_ARGUMENT',
      `image format "${format}" is not one Haven reads (${[...IMAGE_FORMATS].join(', ')})`,
    );
  const dir = mkdtempSync(join(tmpdir(), 'haven-qemu-nbd-'));
  const sock = join(dir, 'nbd.sock');
  const image =
    opts.noBacking && BACKING_FORMATS.has(format)
      ? [
          'json:' +
            JSON.stringify({
              driver: format,
              backing: null,
              file: { driver: statSync(path).isBlockDevice() ? 'host_device' : 'file', filename: path },
            }),
        ]
      : ['-f', format, path];
  const child = spawn(
    'setpriv',
    [
      '--pdeathsig',
      'TERM',
      'qemu-nbd',
      ...['-r', '--shared=8', '-x', 'img', `--socket=${sock}`, '-t', ...image],
    ],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  let stderr = '';
  let failed = false;
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  child.on('error', (e) => ((failed = true), (stderr += e.message)));
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
      return { uri, pid: child.pid!, stop };
    } catch (err) {
      if (failed || child.exitCode !== null || Date.now() > deadline) {
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
