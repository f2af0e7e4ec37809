import { invalidArgument } from '../../common/index.js';

/**
 * How a backup reads a volume's data. san: straight from the pool's files, past the storage
 * service (the proxy sees the pool); hotadd: the backup's snapshot attached over the site's local
 * unix socket; nbds / nbd: over the network from the site's NBD listeners, with or without TLS.
 * Image files and NBD URIs carry their own transport (file, nbd, nbds).
 */
export const TRANSPORTS = ['san', 'hotadd', 'nbds', 'nbd'] as const;
export type Transport = (typeof TRANSPORTS)[number];

export function isTransport(s: string): s is Transport {
  return (TRANSPORTS as readonly string[]).includes(s);
}

/**
 * The transport to use: the one asked for if the site offers it, else (auto) the first the site
 * offers in the order san, hotadd, nbds, nbd. A transport asked for but not offered is an error
 * naming what is offered, never a silent fallback.
 */
export function chooseTransport(wanted: string | undefined, offered: readonly Transport[]): Transport {
  if (wanted === undefined || wanted === 'auto') {
    const t = TRANSPORTS.find((x) => offered.includes(x));
    if (!t) throw invalidArgument('this site offers no transport for backups');
    return t;
  }
  if (!isTransport(wanted))
    throw invalidArgument(`unknown transport ${wanted}: use auto, ${TRANSPORTS.join(', ')}`);
  if (!offered.includes(wanted))
    throw invalidArgument(
      `transport ${wanted} is not available on this site (available: ${offered.join(', ') || 'none'})`,
    );
  return wanted;
}

/**
 * A limit on concurrent transfers per host: a job past the limit waits for a slot (in the order
 * it asked) instead of failing. Released slots go to the longest waiter.
 */
export class TransferSlots {
  private readonly inUse = new Map<string, number>();
  private readonly waiting = new Map<string, (() => void)[]>();

  constructor(readonly perHost: number) {
    if (!Number.isInteger(perHost) || perHost < 1)
      throw invalidArgument(`transfers per host must be a whole number from 1, not ${perHost}`);
  }

  used(host: string): number {
    return this.inUse.get(host) ?? 0;
  }

  /** Waits for a slot on `host`; `onWait` is told when the job has to wait. Returns the release. */
  async acquire(host: string, signal?: AbortSignal, onWait?: (inUse: number) => void): Promise<() => void> {
    if (this.used(host) >= this.perHost) {
      onWait?.(this.used(host));
      await new Promise<void>((resolve, reject) => {
        const queue = this.waiting.get(host) ?? [];
        const wake = () => {
          signal?.removeEventListener('abort', abort);
          resolve();
        };
        const abort = () => {
          const q = this.waiting.get(host) ?? [];
          q.splice(q.indexOf(wake), 1);
          reject(signal!.reason as Error);
        };
        signal?.addEventListener('abort', abort, { once: true });
        queue.push(wake);
        this.waiting.set(host, queue);
      });
    } else this.inUse.set(host, this.used(host) + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const next = this.waiting.get(host)?.shift();
      if (next)
        next(); // the slot passes straight to the waiter
      else this.inUse.set(host, this.used(host) - 1);
    };
  }
}
