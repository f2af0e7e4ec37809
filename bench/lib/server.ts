import { readFileSync } from 'node:fs';
import { execFileSync, type SpawnOptions } from 'node:child_process';
import { start, waitForListen, type Running } from '../../test/support/proc.js';
import { onInterrupt } from './cleanup.js';

/** Reads one `kB` field (VmHWM, VmRSS …) of /proc/PID/status, in bytes; null when gone. */
export function procStatusBytes(pid: number, field: string): number | null {
  try {
    const text = readFileSync(`/proc/${pid}/status`, 'utf8');
    const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(text);
    return m ? Number(m[1]) * 1024 : null;
  } catch {
    return null;
  }
}

/** The kernel's clock ticks per second, which /proc/PID/stat counts in (`getconf CLK_TCK`). */
let clockTicks: number | undefined;

/** CPU seconds (user and system) a process has used so far, from /proc/PID/stat; null once it is gone. */
export function procCpuSeconds(pid: number): number | null {
  clockTicks ??= Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
  try {
    // The fields after the command (which may hold spaces) and its ')': utime and stime are 14th and 15th.
    const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
    return (Number(fields[11]) + Number(fields[12])) / clockTicks;
  } catch {
    return null;
  }
}

/**
 * A server process under benchmark: started, awaited until its socket (unix or TCP) accepts connections, and
 * watched for its peak resident set size. The kernel keeps the peak itself (VmHWM, "high water
 * mark") for the life of the process, so `peakRss()` read just before `stop()` is exact; the poll
 * only keeps the last value in case the process dies first. Only the process itself is counted,
 * not children it might start.
 */
export class BenchServer {
  private readonly running: Running;
  private lastHwm: number | null = null;
  private readonly poll: NodeJS.Timeout;
  private readonly unregister: () => void;

  private constructor(
    readonly label: string,
    running: Running,
  ) {
    this.running = running;
    this.poll = setInterval(() => this.sample(), 500);
    this.poll.unref();
    this.unregister = onInterrupt(() => running.child.kill('SIGKILL'));
  }

  static async start(
    label: string,
    cmd: string,
    args: string[],
    listen: { path: string } | { port: number; host?: string },
    opts: SpawnOptions = {},
    timeoutMs = 15000,
  ): Promise<BenchServer> {
    const s = new BenchServer(label, start(cmd, args, opts));
    try {
      await waitForListen(listen, timeoutMs, s.running);
    } catch (e) {
      await s.stop();
      throw e;
    }
    return s;
  }

  get pid(): number {
    return this.running.child.pid ?? -1;
  }

  /** Everything the server printed so far. */
  output(): string {
    return this.running.output();
  }

  alive(): boolean {
    return this.running.child.exitCode === null && this.running.child.signalCode === null;
  }

  private sample(): void {
    const v = procStatusBytes(this.pid, 'VmHWM');
    if (v != null) this.lastHwm = v;
  }

  /** Peak resident set size in bytes so far (VmHWM). */
  peakRss(): number | null {
    this.sample();
    return this.lastHwm;
  }

  async stop(): Promise<void> {
    clearInterval(this.poll);
    await this.running.stop(3000);
    this.unregister();
  }
}
