import type { BlockDevice } from '../../block/index.js';
import { invalidArgument } from '../../common/index.js';
import { connectNbd } from '../../nbd/index.js';
import type { StorageExports } from '../../storage/index.js';

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

/** A TCP listener of the site's storage service, as a client reaches it. */
export interface TcpEndpoint {
  host: string;
  port: number;
}

/**
 * What a site offers for reading its volumes' snapshots: its exports (refreshed so that a new
 * snapshot is served before a client asks for it), the local unix socket (hotadd), a plain TCP
 * listener (nbd) and the TLS one with the site's PSK (nbds). The site passes this down; the
 * backup never calls back up into it.
 */
export interface SiteEndpoints {
  exports: StorageExports;
  socket: string;
  nbd?: TcpEndpoint;
  nbds?: TcpEndpoint & { psk: { identity: string; key: Buffer } };
}

/**
 * The transports a site may offer with these listeners (san and hotadd always; nbds and nbd with
 * their listener), narrowed to `wanted` when the operator names them; a wanted transport without
 * its listener is an error naming the option that is missing.
 */
export function offeredTransports(
  endpoints: Pick<SiteEndpoints, 'nbd' | 'nbds'>,
  wanted?: readonly string[],
): Transport[] {
  for (const t of wanted ?? [])
    if (!isTransport(t)) throw invalidArgument(`unknown transport ${t}: use ${TRANSPORTS.join(', ')}`);
  const possible: Transport[] = [
    'san',
    'hotadd',
    ...(endpoints.nbds ? ['nbds' as const] : []),
    ...(endpoints.nbd ? ['nbd' as const] : []),
  ];
  for (const t of (wanted as Transport[] | undefined) ?? [])
    if (!possible.includes(t))
      throw invalidArgument(
        `transport ${t} cannot be offered: ${t === 'nbds' ? 'no NBD TCP listener (--nbd-listen is none)' : 'no plain NBD listener (--nbd-listen-plain)'} is configured`,
      );
  return [...((wanted as Transport[] | undefined) ?? possible)];
}

/**
 * A snapshot ("volume@snapshot") of the site read over NBD the way `transport` says: the local
 * socket (hotadd) or a TCP listener (nbd, nbds with the site's PSK). A listener bound to every
 * address is reached on the loopback one. san does not attach (it reads the pool directly).
 */
export async function attachSnapshot(
  transport: Transport,
  snapshot: string,
  site: SiteEndpoints,
): Promise<BlockDevice> {
  site.exports.refresh();
  const name = encodeURIComponent(snapshot);
  const tcp = (a: TcpEndpoint | undefined) => {
    if (!a) throw invalidArgument(`transport ${transport} needs an NBD TCP listener`);
    const host = a.host === '0.0.0.0' || a.host === '::' ? '127.0.0.1' : a.host;
    return `${host.includes(':') ? `[${host}]` : host}:${a.port}`;
  };
  if (transport === 'hotadd')
    return connectNbd(`nbd+unix:///${name}?socket=${site.socket}`, { connections: 2 });
  if (transport === 'nbd') return connectNbd(`nbd://${tcp(site.nbd)}/${name}`, { connections: 2 });
  if (transport === 'nbds')
    return connectNbd(`nbds://${tcp(site.nbds)}/${name}`, {
      connections: 2,
      tls: { psk: { identity: site.nbds!.psk.identity, key: site.nbds!.psk.key } },
    });
  throw invalidArgument(`transport ${transport} does not attach over NBD`);
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
