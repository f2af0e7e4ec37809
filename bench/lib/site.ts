import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { HAVEN_BIN, run, start, type Running } from '../../test/support/proc.js';

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
  ) {
    this.data = join(dir, 'site');
    this.env = { ...process.env, HAVEN_DATA: this.data, HAVEN_LOG_LEVEL: 'warn' };
  }

  /** Starts the daemon; resolves once its API listens. */
  async start(): Promise<Running> {
    const daemon = start(
      process.execPath,
      [
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
