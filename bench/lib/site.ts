import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { HAVEN_BIN, run, start, type Running } from '../../test/support/proc.js';
import { siteApi } from '../../test/support/site-api.js';

/**
 * A site daemon for a benchmark (`haven serve`, no NBD TCP listener) on `DIR/site`, driven
 * through the CLI; its VMs' QEMUs (which outlive a daemon by design) are killed with it.
 */
export class BenchSite {
  readonly data: string;
  readonly env: NodeJS.ProcessEnv;
  daemon: Running | undefined;

  constructor(
    readonly dir: string,
    private readonly commandTimeoutMs: number,
    /** More `haven serve` options (the last of a repeated one wins), e.g. `--site`, `--peer-listen`. */
    private readonly serveArgs: string[] = [],
  ) {
    this.data = join(dir, 'site');
    this.env = { ...process.env, HAVEN_DATA: this.data, HAVEN_LOG_LEVEL: 'warn' };
  }

  /** The daemon's process id (for its peak RSS). */
  get pid(): number {
    return this.daemon?.child.pid ?? -1;
  }

  /** The REST API, straight (JSON; throws with the server's message on an error status). */
  async api<T>(method: string, path: string, body?: unknown): Promise<T> {
    return siteApi<T>(this.data, method, path, body);
  }

  /** The NBD URI of an export of this site (its unix socket). */
  nbd(exportName: string): string {
    return `nbd+unix:///${encodeURIComponent(exportName)}?socket=${join(this.data, 'run', 'nbd.sock')}`;
  }

  /** Starts the daemon; resolves once its API listens. */
  async start(): Promise<Running> {
    // HAVEN_BENCH_CPU_PROF=DIR: each daemon writes a CPU profile there when it stops (node --cpu-prof).
    const prof = process.env.HAVEN_BENCH_CPU_PROF;
    const daemon = start(
      process.execPath,
      [
        ...(prof ? ['--cpu-prof', `--cpu-prof-dir=${prof}`] : []),
        HAVEN_BIN,
        'serve',
        '--data',
        this.data,
        '--listen',
        '127.0.0.1:0',
        '--nbd-listen',
        'none',
        '--peer-listen',
        '127.0.0.1:0',
        ...this.serveArgs,
      ],
      { env: this.env },
    );
    this.daemon = daemon;
    const deadline = Date.now() + 30_000;
    while (!existsSync(join(this.data, 'api.json'))) {
      if (Date.now() > deadline || daemon.child.exitCode !== null)
        throw new Error(`the daemon did not start:\n${daemon.output()}`);
      await sleep(50);
    }
    return daemon;
  }

  /** `haven ARGS…` against this site; its standard output. */
  async haven(...args: string[]): Promise<string> {
    return (
      await run(process.execPath, [HAVEN_BIN, ...args], { env: this.env, timeout: this.commandTimeoutMs })
    ).stdout;
  }

  killQemus(): void {
    try {
      execFileSync('pkill', ['-9', '-f', `qemu-system-x86_64 .*${this.dir}`]);
    } catch {
      // none left
    }
  }

  /** Kills the VMs at once, then stops the daemon. */
  async stop(): Promise<void> {
    this.killQemus();
    await this.daemon?.stop();
  }
}
