import { closeSync, openSync, readFileSync, rmSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { HavenError } from './errors.js';

/**
 * Takes a data directory for this process alone (a `.lock` file holding our pid), so that a
 * serving process and a command-line tool never open the same volumes at once. A lock left by
 * a process that no longer exists is taken over.
 */
export function lockDirectory(dir: string, what = 'data directory'): { release: () => void } {
  const path = join(dir, '.lock');
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const fd = openSync(path, 'wx', 0o600);
      writeSync(fd, `${process.pid}\n`);
      closeSync(fd);
      return { release: () => rmSync(path, { force: true }) };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      const pid = Number.parseInt(readFileSync(path, 'utf8'), 10);
      if (Number.isInteger(pid) && pid > 0 && (pid === process.pid || isAlive(pid)))
        throw new HavenError('CONFLICT', `${what} ${dir} is in use by process ${pid}`);
      rmSync(path, { force: true }); // stale
    }
  }
  throw new HavenError('CONFLICT', `${what} ${dir} could not be locked`);
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
  try {
    // A killed process nobody has reaped yet (a zombie) holds nothing any more.
    return !/\) Z /.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return true;
  }
}
