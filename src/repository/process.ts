import { readFileSync } from 'node:fs';
import { isAlive, processStartTime } from '../common/index.js';

// Whether the process behind a session or lock record of this host still runs. As for the data
// directory's lock (decision 0007), a pid alone does not name a process: the record also holds
// the boot id and the process's start time, so a pid reused after a crash or reboot is not
// mistaken for the writer that died.

let boot: string | undefined;

/** The kernel's boot id: a record from an earlier boot is dead whatever its pid is now. */
export function bootId(): string {
  try {
    boot ??= readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
  } catch {
    boot = '';
  }
  return boot;
}

/** What names this process among all that ran on this host: for session and lock records. */
export function selfIdentity(): { pid: number; boot: string; start?: string } {
  const start = processStartTime(process.pid);
  return { pid: process.pid, boot: bootId(), ...(start ? { start } : {}) };
}

/** Whether the process a record of this host names is alive (older records: by pid and boot). */
export function recordAlive(rec: { pid: number; boot?: string; start?: string }): boolean {
  if (rec.boot && bootId() && rec.boot !== bootId()) return false;
  if (!isAlive(rec.pid)) return false;
  if (!rec.start) return true;
  const start = processStartTime(rec.pid);
  // Unreadable here (another pid namespace, no /proc): do not judge what may be alive.
  return start === undefined || start === rec.start;
}
