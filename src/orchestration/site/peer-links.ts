import type { TLSSocket } from 'node:tls';

/** A paired site, as the links know it. */
export interface LinkPeer {
  name: string;
}

/**
 * What the site's domains need from the links to paired sites (mutual TLS with pinned
 * certificates, SitePeers): channels to accept and dial, and calls answered by the peer.
 */
export interface PeerLinks {
  onChannel(
    channel: string,
    handler: (socket: TLSSocket, peer: LinkPeer, open: Record<string, unknown>) => void,
  ): void;
  dial(peer: string, open: Record<string, unknown>): Promise<TLSSocket>;
  handle(op: string, fn: (peer: LinkPeer, args: unknown) => Promise<unknown>): void;
  call(peer: string, op: string, args: unknown, opts?: { timeoutMs?: number }): Promise<unknown>;
  /** Whether `peer` answers, settled by its heartbeats now (reachable, or unreachable after the missed limit). */
  settle(peer: string): Promise<'reachable' | 'unreachable'>;
  /** Throws NOT_FOUND when `name` is not a paired site. */
  get(name: string): LinkPeer;
}
