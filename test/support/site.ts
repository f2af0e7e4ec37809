/**
 * A site daemon for end-to-end tests: `haven serve` as a child process on a fresh data directory
 * (API and peer link on free ports, no NBD TCP port), the CLI pointed at it through HAVEN_DATA, and a cleanup
 * that stops its VMs (they outlive the daemon by design), the daemon, and any QEMU left behind.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { HAVEN_BIN, start, type Running } from './proc.js';
import { tempDir } from './tmp.js';
import { ensureGuest, patternBytes } from './guest.js';

const run = promisify(execFile);

export interface Site {
  dir: string;
  daemon: Running;
  env: NodeJS.ProcessEnv;
  haven(...args: string[]): Promise<string>;
  /** Runs a command that must fail; returns its stderr. */
  havenFails(...args: string[]): Promise<string>;
  /** The running daemon's API URL, API token, peer link address (HOST:PORT) and certificate fingerprint. */
  info(): Promise<DaemonInfo>;
}

export interface DaemonInfo {
  name: string;
  url: string;
  token: string;
  link?: string;
  fingerprint: string;
}

/** `haven serve` on `dir`, with `extra` options; resolves once its API listens. */
export async function startDaemon(
  dir: string,
  extra: string[] = [],
  env: NodeJS.ProcessEnv = {},
): Promise<Running> {
  // A daemon killed with -9 leaves its api.json behind; the next one writes it once listening.
  rmSync(join(dir, 'api.json'), { force: true });
  const daemon = start(
    HAVEN_BIN,
    [
      'serve',
      '--data',
      dir,
      '--listen',
      '127.0.0.1:0',
      '--nbd-listen',
      'none',
      '--peer-listen',
      '127.0.0.1:0',
      ...extra,
    ],
    {
      env: { ...process.env, HAVEN_LOG_LEVEL: 'debug', ...env },
    },
  );
  const deadline = Date.now() + 20_000;
  while (!existsSync(join(dir, 'api.json'))) {
    if (daemon.child.exitCode !== null || daemon.child.signalCode !== null || Date.now() > deadline)
      throw new Error(`the site daemon did not start:\n${daemon.output()}`);
    await sleep(50);
  }
  return daemon;
}

/** A daemon on a fresh data directory; `extra` are more `haven serve` options (the last of a repeated one wins). */
export async function site(
  t: { after: (fn: () => unknown) => void },
  extra: string[] = [],
  daemonEnv: NodeJS.ProcessEnv = {},
  /** Where the data directory goes (default the system's temporary directory). */
  tmpRoot?: string,
): Promise<Site> {
  const tmp = tempDir('haven-site-', tmpRoot);
  const dir = join(tmp.path, 'data');
  /** Scratch space beside the data directory. */
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    HAVEN_DATA: dir,
    HAVEN_CONFIG: join(tmp.path, 'no-config.json'),
  };
  delete env.HAVEN_API;
  delete env.HAVEN_TOKEN;
  const s: Site = {
    dir,
    daemon: await startDaemon(dir, extra, daemonEnv),
    env,
    haven: async (...args) => (await run(HAVEN_BIN, args, { env, timeout: 120_000 })).stdout,
    havenFails: async (...args) => {
      try {
        await run(HAVEN_BIN, args, { env, timeout: 120_000 });
      } catch (e) {
        return (e as { stderr: string }).stderr;
      }
      throw new Error(`haven ${args.join(' ')} succeeded but should have failed`);
    },
    info: async () => {
      const show = JSON.parse(await s.haven('site', 'show', '--json')) as {
        name: string;
        peer: { link?: string; fingerprint: string };
      };
      return {
        name: show.name,
        url: (JSON.parse(readFileSync(join(dir, 'api.json'), 'utf8')) as { url: string }).url,
        token: readFileSync(join(dir, 'api-token'), 'utf8').trim(),
        ...(show.peer.link ? { link: show.peer.link } : {}),
        fingerprint: show.peer.fingerprint,
      };
    },
  };
  t.after(async () => {
    // Stop VMs first: they outlive the daemon by design.
    try {
      for (const vm of JSON.parse(await s.haven('vm', 'list', '--json')) as { name: string; state: string }[])
        if (vm.state === 'running') await s.haven('vm', 'stop', vm.name, '--force');
    } catch {
      // the daemon may be down: kill its QEMUs below
    }
    await s.daemon.stop();
    await run('pkill', ['-9', '-f', `qemu-system-x86_64 .*${dir}`]).catch(() => undefined);
    tmp.cleanup();
  });
  return s;
}

export function guestArgs(cmd: string): string[] {
  const g = ensureGuest();
  return [
    '--kernel',
    g.kernel,
    '--initrd',
    g.initrd,
    '--memory',
    '192M',
    '--cmdline',
    `console=ttyS0 quiet panic=-1 haven.disks=1 haven.cmd="${cmd}"`,
  ];
}

/**
 * A VM's whole serial console log. The CLI prints the last 64 KiB by default: a test counting or
 * checking the guest's writes from that would, on a long run, see only the newest of them.
 */
export function wholeConsoleLog(
  s: { haven(...args: string[]): Promise<string> },
  vm: string,
): Promise<string> {
  return s.haven('vm', 'console-log', vm, '--bytes', '999999999');
}

export async function waitForConsole(s: Site, vm: string, re: RegExp, ms = 60_000): Promise<string> {
  const deadline = Date.now() + ms;
  let log = '';
  while (Date.now() < deadline) {
    log = await wholeConsoleLog(s, vm);
    if (re.test(log)) return log;
    await sleep(200);
  }
  throw new Error(`console of ${vm} never matched ${re}:\n${log}`);
}

/** A durable write the guest reported; `us`: its latency (stream with lat=1). */
export interface GuestWrite {
  seq: number;
  offset: number;
  length: number;
  us?: number;
}

export function writesIn(log: string): GuestWrite[] {
  const writes: GuestWrite[] = [];
  for (const l of log.split('\n').slice(0, -1)) {
    // (the last line may be still being written)
    if (!l.includes('"event":"write"')) continue;
    try {
      writes.push(JSON.parse(l.slice(l.indexOf('{'))) as GuestWrite);
    } catch {
      // The kernel's own messages share the serial console: on a loaded machine one can break a
      // line of the guest's in two (an RCU stall warning, say). That write is not checked.
    }
  }
  return writes;
}

export function assertWrites(image: Buffer, seed: number, writes: ReturnType<typeof writesIn>): void {
  for (const w of writes)
    assert.ok(
      image.subarray(w.offset, w.offset + w.length).equals(patternBytes(seed, w.seq, w.offset, w.length)),
      `write ${w.seq} at ${w.offset} is on the volume`,
    );
}
