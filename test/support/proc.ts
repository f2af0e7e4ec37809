import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { once } from 'node:events';
import { createConnection } from 'node:net';
import { existsSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';

/** Path of the `haven` launcher in this checkout. */
export const HAVEN_BIN = fileURLToPath(new URL('../../../bin/haven', import.meta.url));

export interface Running {
  child: ChildProcess;
  /** Everything the process wrote so far (stdout and stderr interleaved). */
  output(): string;
  /** SIGTERM, then SIGKILL after `graceMs`; resolves when the process is gone. */
  stop(graceMs?: number): Promise<void>;
  /** Resolves when the process is gone, however it went (also if that was before the call). */
  exited: Promise<void>;
}

/** Starts a long-running peer (qemu-nbd, nbdkit, haven nbd serve …), capturing its output. */
export function start(cmd: string, args: string[], opts: SpawnOptions = {}): Running {
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], ...opts });
  let out = '';
  child.stdout?.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr?.on('data', (d: Buffer) => (out += d.toString()));
  child.on('error', (e) => (out += `\nspawn error: ${e.message}`));
  const exited = once(child, 'exit').then(
    () => undefined,
    () => undefined,
  );
  return {
    child,
    exited,
    output: () => out,
    async stop(graceMs = 5000) {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill('SIGTERM');
      const t = setTimeout(() => child.kill('SIGKILL'), graceMs);
      await exited;
      clearTimeout(t);
    },
  };
}

/** Resolves once `host:port` (or a unix socket path) accepts connections; fails after `timeoutMs`. */
export async function waitForListen(
  target: { port: number; host?: string } | { path: string },
  timeoutMs = 10000,
  running?: Running,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (running && (running.child.exitCode !== null || running.child.signalCode !== null))
      throw new Error(
        `process exited (${running.child.exitCode ?? running.child.signalCode}) before listening:\n${running.output()}`,
      );
    if ('path' in target && !existsSync(target.path)) {
      await sleep(25);
      continue;
    }
    const ok = await new Promise<boolean>((resolve) => {
      const s =
        'path' in target
          ? createConnection(target.path)
          : createConnection(target.port, target.host ?? '127.0.0.1');
      s.once('connect', () => (s.destroy(), resolve(true)));
      s.once('error', () => resolve(false));
    });
    if (ok) return;
    await sleep(25);
  }
  throw new Error(
    `nothing listens on ${JSON.stringify(target)} after ${timeoutMs} ms\n${running?.output() ?? ''}`,
  );
}

/** A TCP port that is free right now on 127.0.0.1. */
export async function freePort(): Promise<number> {
  const { createServer } = await import('node:net');
  const srv = createServer();
  srv.listen(0, '127.0.0.1');
  await once(srv, 'listening');
  const port = (srv.address() as { port: number }).port;
  srv.close();
  return port;
}

/** Runs a command to completion; rejects with its output when it exits non-zero. */
export async function run(cmd: string, args: string[], opts: SpawnOptions & { input?: string } = {}) {
  const child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'], ...opts });
  let stdout = '';
  let stderr = '';
  child.stdout?.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
  // A child that exits without reading its input must not fail us with EPIPE.
  child.stdin?.on('error', () => undefined);
  child.stdin?.end(opts.input ?? '');
  const [code, signal] = (await once(child, 'exit')) as [number | null, string | null];
  if (code !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${code ?? signal}\n${stdout}\n${stderr}`);
  return { stdout, stderr };
}

/** Polls `ok` until it holds; fails naming `what` after `ms`. */
export async function until(what: string, ok: () => boolean, ms = 30_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!ok()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}
