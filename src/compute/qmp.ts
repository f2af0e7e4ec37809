import { EventEmitter, once } from 'node:events';
import { createConnection, type Socket } from 'node:net';
import { HavenError } from '../common/index.js';

/** An asynchronous QMP event (SHUTDOWN, STOP, BLOCK_JOB_COMPLETED, …). */
export interface QmpEvent {
  event: string;
  data: Record<string, unknown>;
  timestamp?: { seconds: number; microseconds: number };
}

interface Pending {
  resolve: (v: unknown) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
  command: string;
}

/**
 * A client of QEMU's machine protocol (QMP) over a unix socket: greeting, capability negotiation,
 * commands matched to replies by id, and events. Events: 'event' (QmpEvent), 'close'.
 */
export class QmpClient extends EventEmitter {
  private buf = '';
  private nextId = 1;
  private readonly pending = new Map<string, Pending>();
  private closed = false;
  /** QEMU's version, from the greeting. */
  version: { major: number; minor: number; micro: number } | undefined;

  private constructor(private readonly socket: Socket) {
    super();
    socket.setEncoding('utf8');
    socket.on('data', (d: string) => this.onData(d));
    socket.on('close', () => this.onClose());
    socket.on('error', () => undefined); // 'close' follows
  }

  /** Connects, reads the greeting and negotiates capabilities. */
  static async connect(path: string, timeoutMs = 10_000): Promise<QmpClient> {
    const socket = createConnection(path);
    const timer = setTimeout(() => socket.destroy(new Error('timed out')), timeoutMs);
    try {
      await Promise.race([
        once(socket, 'connect'),
        once(socket, 'error').then(([e]) => Promise.reject(e as Error)),
      ]);
    } catch (err) {
      clearTimeout(timer);
      throw new HavenError('IO', `cannot connect to QMP at ${path}: ${(err as Error).message}`);
    }
    const client = new QmpClient(socket);
    try {
      const greeting = (await client.nextGreeting(timeoutMs)) as {
        QMP?: { version?: { qemu?: QmpClient['version'] } };
      };
      client.version = greeting.QMP?.version?.qemu;
      await client.execute('qmp_capabilities', {}, { timeoutMs });
    } catch (err) {
      client.close();
      throw err;
    } finally {
      clearTimeout(timer);
    }
    return client;
  }

  private greetingWaiter: ((v: unknown) => void) | undefined;
  private nextGreeting(timeoutMs: number): Promise<unknown> {
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new HavenError('TIMEOUT', 'no QMP greeting')), timeoutMs);
      this.greetingWaiter = (v) => {
        clearTimeout(t);
        resolve(v);
      };
      this.once('close', () => reject(new HavenError('IO', 'QMP connection closed before the greeting')));
    });
  }

  /** Runs a command; rejects with the QMP error class and description. */
  execute<T = unknown>(
    command: string,
    args?: Record<string, unknown>,
    opts: { timeoutMs?: number } = {},
  ): Promise<T> {
    if (this.closed)
      return Promise.reject(new HavenError('IO', `QMP connection is closed (running ${command})`));
    const id = `haven-${this.nextId++}`;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(
          new HavenError('TIMEOUT', `QMP command ${command} got no answer in ${opts.timeoutMs ?? 30_000} ms`),
        );
      }, opts.timeoutMs ?? 30_000);
      this.pending.set(id, { resolve: resolve as (v: unknown) => void, reject, timer, command });
      this.socket.write(
        JSON.stringify({
          execute: command,
          ...(args && Object.keys(args).length ? { arguments: args } : {}),
          id,
        }) + '\r\n',
      );
    });
  }

  /** Resolves with the first event named `name` (and matching `predicate`) from now on. */
  waitForEvent(
    name: string,
    predicate: (e: QmpEvent) => boolean = () => true,
    timeoutMs = 30_000,
  ): Promise<QmpEvent> {
    return new Promise((resolve, reject) => {
      const onEvent = (e: QmpEvent) => {
        if (e.event !== name || !predicate(e)) return;
        cleanup();
        resolve(e);
      };
      const onClose = () => {
        cleanup();
        reject(new HavenError('IO', `QMP connection closed while waiting for ${name}`));
      };
      const timer = setTimeout(() => {
        cleanup();
        reject(new HavenError('TIMEOUT', `no ${name} event in ${timeoutMs} ms`));
      }, timeoutMs);
      const cleanup = () => {
        clearTimeout(timer);
        this.off('event', onEvent);
        this.off('close', onClose);
      };
      this.on('event', onEvent);
      this.on('close', onClose);
    });
  }

  get isClosed(): boolean {
    return this.closed;
  }

  close(): void {
    this.socket.destroy();
  }

  private onData(d: string): void {
    this.buf += d;
    let nl: number;
    while ((nl = this.buf.indexOf('\n')) >= 0) {
      const line = this.buf.slice(0, nl).trim();
      this.buf = this.buf.slice(nl + 1);
      if (!line) continue;
      let msg: Record<string, unknown>;
      try {
        msg = JSON.parse(line) as Record<string, unknown>;
      } catch {
        continue; // not QMP: ignore rather than tear the connection down
      }
      this.dispatch(msg);
    }
  }

  private dispatch(msg: Record<string, unknown>): void {
    if ('QMP' in msg) return this.greetingWaiter?.(msg);
    if ('event' in msg) return void this.emit('event', msg as unknown as QmpEvent);
    const id = msg.id as string | undefined;
    const p = id ? this.pending.get(id) : undefined;
    if (!p) return;
    this.pending.delete(id!);
    clearTimeout(p.timer);
    if ('error' in msg) {
      const e = msg.error as { class?: string; desc?: string };
      p.reject(
        new HavenError(
          'CONFLICT',
          `QMP ${p.command} failed: ${e.class ?? 'Error'}: ${e.desc ?? 'no description'}`,
        ),
      );
    } else p.resolve(msg.return);
  }

  private onClose(): void {
    if (this.closed) return;
    this.closed = true;
    for (const p of this.pending.values()) {
      clearTimeout(p.timer);
      p.reject(new HavenError('IO', `QMP connection closed while running ${p.command}`));
    }
    this.pending.clear();
    this.emit('close');
  }
}
