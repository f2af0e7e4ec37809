import { once } from 'node:events';
import { createConnection, type Socket } from 'node:net';
import { randomInt } from 'node:crypto';
import { HavenError } from '../common/index.js';

/** The virtio-serial port name QEMU's guest agent listens on in the guest. */
export const GUEST_AGENT_PORT = 'org.qemu.guest_agent.0';

/**
 * A client of the QEMU guest agent (QGA) on a VM's agent channel: the unix socket of the VM's
 * virtio-serial chardev. QGA has no greeting and no command ids: a session starts with
 * guest-sync-delimited (the agent answers with a 0xFF byte and then the id we sent, so stale
 * answers left in the channel by an earlier client are skipped), then one answer per command, in
 * order. Every call has a time-out; an agent that does not answer in time is an error, never a
 * hang. One command at a time (QGA serves one client and answers in order).
 */
export class GuestAgent {
  private buf = Buffer.alloc(0);
  private synced = false;
  private waiter: (() => void) | undefined;
  private closed = false;

  private constructor(
    private readonly socket: Socket,
    readonly path: string,
  ) {
    socket.on('data', (d: Buffer) => {
      this.buf = Buffer.concat([this.buf, d]);
      this.waiter?.();
    });
    socket.on('close', () => {
      this.closed = true;
      this.waiter?.();
    });
    socket.on('error', () => undefined); // 'close' follows
  }

  /** Connects to the channel's socket and synchronises with the agent (guest-sync-delimited). */
  static async connect(path: string, timeoutMs: number): Promise<GuestAgent> {
    const socket = createConnection(path);
    const timer = setTimeout(() => socket.destroy(new Error(`no connection in ${timeoutMs} ms`)), timeoutMs);
    try {
      await Promise.race([
        once(socket, 'connect'),
        once(socket, 'error').then(([e]) => Promise.reject(e as Error)),
      ]);
    } catch (err) {
      throw new HavenError(
        'IO',
        `cannot connect to the guest agent channel ${path}: ${(err as Error).message}`,
      );
    } finally {
      clearTimeout(timer);
    }
    const agent = new GuestAgent(socket, path);
    try {
      await agent.sync(timeoutMs);
    } catch (err) {
      agent.close();
      throw err;
    }
    return agent;
  }

  /** guest-sync-delimited: everything before the 0xFF sentinel and answers to other ids are stale. */
  private async sync(timeoutMs: number): Promise<void> {
    const id = randomInt(1, 2 ** 31);
    // A leading 0xFF makes the agent drop a partial command an earlier client left behind.
    this.socket.write(Buffer.concat([Buffer.from([0xff]), Buffer.from(cmd('guest-sync-delimited', { id }))]));
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const at = this.buf.indexOf(0xff);
      if (at >= 0) {
        this.buf = this.buf.subarray(at + 1);
        const line = await this.line(deadline, 'guest-sync-delimited', timeoutMs);
        const r = parse(line, 'guest-sync-delimited') as { return?: unknown };
        if (r.return === id) break;
        continue; // the answer to an earlier client's sync: look for the next sentinel
      }
      this.buf = Buffer.alloc(0);
      await this.wait(deadline, 'guest-sync-delimited', timeoutMs);
    }
    this.synced = true;
  }

  /** Runs a command; rejects with the agent's error, or TIMEOUT when it does not answer in time. */
  async execute<T = unknown>(
    command: string,
    args?: Record<string, unknown>,
    timeoutMs = 10_000,
  ): Promise<T> {
    if (!this.synced) throw new HavenError('INTERNAL', 'guest agent not synchronised');
    this.socket.write(cmd(command, args));
    const line = await this.line(Date.now() + timeoutMs, command, timeoutMs);
    const r = parse(line, command) as { return?: T; error?: { class?: string; desc?: string } };
    if (r.error)
      throw new HavenError(
        'IO',
        `guest agent: ${command} failed: ${r.error.desc ?? r.error.class ?? 'error'}`,
      );
    return r.return as T;
  }

  close(): void {
    this.closed = true;
    this.socket.destroy();
  }

  /** The next non-empty line of the agent's output. */
  private async line(deadline: number, command: string, timeoutMs: number): Promise<string> {
    for (;;) {
      const nl = this.buf.indexOf(0x0a);
      if (nl >= 0) {
        const line = this.buf.subarray(0, nl).toString('utf8').trim();
        this.buf = this.buf.subarray(nl + 1);
        if (line) return line;
        continue;
      }
      await this.wait(deadline, command, timeoutMs);
    }
  }

  private wait(deadline: number, command: string, timeoutMs: number): Promise<void> {
    if (this.closed)
      return Promise.reject(
        new HavenError('IO', `guest agent channel ${this.path} closed during ${command}`),
      );
    const left = deadline - Date.now();
    if (left <= 0)
      return Promise.reject(
        new HavenError('TIMEOUT', `the guest agent did not answer ${command} within ${fmtMs(timeoutMs)}`),
      );
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => {
        this.waiter = undefined;
        reject(
          new HavenError('TIMEOUT', `the guest agent did not answer ${command} within ${fmtMs(timeoutMs)}`),
        );
      }, left);
      this.waiter = () => {
        clearTimeout(t);
        this.waiter = undefined;
        resolve();
      };
    });
  }
}

function cmd(command: string, args?: Record<string, unknown>): string {
  return `${JSON.stringify(args ? { execute: command, arguments: args } : { execute: command })}\n`;
}

function parse(line: string, command: string): unknown {
  try {
    return JSON.parse(line);
  } catch {
    throw new HavenError(
      'PROTOCOL',
      `guest agent: the answer to ${command} is not JSON: ${line.slice(0, 200)}`,
    );
  }
}

function fmtMs(ms: number): string {
  return ms % 1000 === 0 ? `${ms / 1000} s` : `${ms} ms`;
}
