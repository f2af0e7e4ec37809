import { closeSync, openSync, readFileSync, rmSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { HavenError } from './errors.js';

/**
 * Takes a data directory for this process alone (a `.lock` file naming us), so that a serving
 * process and a command-line tool never open the same volumes at once. A lock left by a process
 * that no longer exists is taken over.
 *
 * A pid alone does not name a process: after a crash or a reboot the pid in a stale lock may
 * belong to an unrelated process, and the directory would stay locked for ever. So the lock holds
 * the pid, that process's start time (field 22 of /proc/PID/stat, in clock ticks since boot) and
 * the boot id; the holder is alive only if a process with that pid exists, in this boot, and
 * started at that time. A lock of the older form (the pid only) is judged by the pid.
 */
export function lockDirectory(dir: string, what = 'data directory'): { release: () => void } {
  const path = join(dir, '.lock');
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const fd = openSync(path, 'wx', 0o600);
      writeSync(fd, lockText(process.pid));
      closeSync(fd);
      return { release: () => rmSync(path, { force: true }) };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      const holder = parseLock(readFileSync(path, 'utf8'));
      if (holder && holderAlive(holder))
        throw new HavenError('CONFLICT', `${what} ${dir} is in use by process ${holder.pid}`);
      rmSync(path, { force: true }); // stale
    }
  }
  throw new HavenError('CONFLICT', `${what} ${dir} could not be locked`);
}

interface LockHolder {
  pid: number;
  startTime?: string;
  bootId?: string;
}

/** "PID STARTTIME BOOTID\n": what names this process among all that ever ran on this machine. */
export function lockText(pid: number): string {
  const start = processStartTime(pid);
  const boot = bootId();
  return start && boot ? `${pid} ${start} ${boot}\n` : `${pid}\n`;
}

function parseLock(text: string): LockHolder | undefined {
  const [p, startTime, bootId] = text.trim().split(/\s+/);
  const pid = Number.parseInt(p ?? '', 10);
  if (!Number.isInteger(pid) || pid <= 0) return undefined;
  return { pid, ...(startTime && bootId ? { startTime, bootId } : {}) };
}

function holderAlive(h: LockHolder): boolean {
  if (!isAlive(h.pid)) return false;
  if (h.startTime === undefined || h.bootId === undefined) return true; // older lock: the pid is all we know
  const boot = bootId();
  const start = processStartTime(h.pid);
  // Unreadable here (another pid namespace, no /proc): do not steal what may be held.
  if (!boot || !start) return true;
  return boot === h.bootId && start === h.startTime;
}

/** Field 22 of /proc/PID/stat; the command name (field 2) may hold spaces and parentheses. */
export function processStartTime(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
  } catch {
    return undefined;
  }
}

function bootId(): string | undefined {
  try {
    return readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim() || undefined;
  } catch {
    return undefined;
  }
}

/** Whether process `pid` runs (a zombie does not: it holds nothing any more). */
export function isAlive(pid: number): boolean {
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
