import { readFileSync } from 'node:fs';

// Whether the process behind a session or lock record (on this host) still runs.

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

export function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}
