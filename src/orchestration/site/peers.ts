import type { TLSSocket } from 'node:tls';
import { HavenError, conflict, invalidArgument } from '../../common/index.js';
import type { Db } from './database.js';
import type { Actor } from './domain.js';
import type { EventLog } from './events.js';
import type { SiteIdentity } from './identity.js';
import { apiUrl, checkOffer, offerTo, type PeerOffer } from './pairing.js';
import { PeerLinks, type ChannelHandler } from './peer-link.js';
import { PeerHealthWatch, type HeartbeatOptions, type PeerHealth } from './peer-health.js';
import { PeerRpc, type PeerOperation } from './peer-rpc.js';
import { PeerStore, type Peer } from './peer-store.js';

/** A pairing token's default life, and the longest one may have. */
export const PAIRING_TOKEN_TTL_S = 15 * 60;
const MAX_PAIRING_TOKEN_TTL_S = 24 * 3600;

/** How a site took a pairing request: with its API token, or with one of its one-time tokens. */
export interface AcceptCredential {
  pairingToken?: string;
}

/**
 * The sites this one is paired with (`site.peers`): pairing (both directions from one call),
 * one-time pairing tokens, unpairing, and the mutual-TLS peer links between paired sites with
 * their channels and the RPC on top. A pairing pins each site's self-signed certificate at the
 * other; nothing else may open a link.
 */
export class SitePeers {
  private readonly store: PeerStore;
  private readonly links: PeerLinks;
  private readonly rpc: PeerRpc;
  private apiUrl: string | undefined;
  /** Heartbeats to every paired site and the state of each (peer-health.ts). */
  readonly health: PeerHealthWatch;

  constructor(
    db: Db,
    private readonly events: EventLog,
    private readonly site: string,
    private readonly identity: SiteIdentity,
    heartbeat: HeartbeatOptions = {},
  ) {
    this.store = new PeerStore(db);
    this.links = new PeerLinks(site, identity, this.store, events);
    this.rpc = new PeerRpc(site, this.links);
    this.rpc.handle('ping', async () => site);
    this.health = new PeerHealthWatch(
      {
        peers: () => this.store.list().map((p) => p.name),
        ping: (peer, timeoutMs) => this.rpc.call(peer, 'ping', null, { timeoutMs }),
      },
      events,
      heartbeat,
    );
  }

  /** Whether `peer` answers, settled by heartbeats now (see PeerHealthWatch.settle). */
  settle(peer: string): Promise<'reachable' | 'unreachable'> {
    return this.health.settle(peer);
  }

  // ---- links -------------------------------------------------------------------------------

  /** Starts the peer link listener. */
  listen(at: { host: string; port: number }, advertise?: string): Promise<void> {
    this.links.advertise = advertise;
    return this.links.listen(at);
  }

  /** This site's link address (HOST:PORT, when it listens) and certificate fingerprint. */
  info(): { link?: string; fingerprint: string } {
    const link = this.links.link();
    return { ...(link ? { link } : {}), fingerprint: this.identity.fingerprint };
  }

  /** The API URL this site gives its peers at pairing (the daemon sets it once it listens). */
  setApiUrl(url: string): void {
    this.apiUrl = url;
  }

  /** Links that paired sites open for `channel` go to `handler`. */
  onChannel(channel: string, handler: ChannelHandler): void {
    this.links.onChannel(channel, handler);
  }

  /** A link to a paired site for the channel `open.channel`; see PeerLinks.dial. */
  dial(peerName: string, open: Record<string, unknown>): Promise<TLSSocket> {
    return this.links.dial(peerName, open);
  }

  /** An operation paired sites may call (`call` on their side). */
  handle(op: string, fn: PeerOperation): void {
    this.rpc.handle(op, fn);
  }

  /** Calls `op` at a paired site; its failure is rethrown here with its code, naming the site. */
  call(peerName: string, op: string, args: unknown, opts: { timeoutMs?: number } = {}): Promise<unknown> {
    return this.rpc.call(peerName, op, args, opts);
  }

  // ---- pairing -----------------------------------------------------------------------------

  /** The paired sites, each with its health. */
  list(): (Peer & { health: PeerHealth })[] {
    return this.store.list().map((p) => ({ ...p, health: this.health.health(p.name) }));
  }

  get(name: string): Peer & { health: PeerHealth } {
    const p = this.store.get(name);
    return { ...p, health: this.health.health(p.name) };
  }

  /** What this site tells a site it pairs with. */
  offer(): PeerOffer {
    const link = this.links.link();
    return {
      name: this.site,
      certificate: this.identity.certificate,
      ...(link ? { link } : {}),
      ...(this.apiUrl ? { api: this.apiUrl } : {}),
    };
  }

  /**
   * Pairs with the site whose API is at `api`, both ways: it stores this site, then this site
   * stores it. It is asked first to only check (so that nothing is stored on either side when
   * either would refuse), then to pair.
   */
  async pair(
    actor: Actor,
    req: { api: string; token: string; fingerprint?: string },
  ): Promise<Peer & { health: PeerHealth }> {
    const api = apiUrl(req.api);
    if (!req.token.trim()) throw invalidArgument('the peer token is empty');
    const token = req.token.trim();
    try {
      const checked = await offerTo(api, token, this.offer(), true);
      const { fingerprint } = this.check(checked, `the site at ${api}`);
      // Told out of band (haven site show there): an API reached over plain http could be
      // answered by someone else.
      if (req.fingerprint !== undefined && req.fingerprint.toUpperCase() !== fingerprint)
        throw conflict(
          `the site at ${api} (${checked.name}) presents the certificate ${fingerprint}, not ${req.fingerprint} as expected: nothing was paired`,
        );
      const answer = await offerTo(api, token, this.offer(), false);
      const again = this.check(answer, `the site at ${api}`);
      if (again.fingerprint !== fingerprint)
        throw conflict(
          `the site at ${api} changed its certificate while pairing (${fingerprint}, then ${again.fingerprint})`,
        );
      const peer = this.store.put({ ...answer, fingerprint });
      this.links.refresh();
      this.events.append({
        actor,
        action: 'peer.pair',
        target: peer.name,
        outcome: 'ok',
        message: `paired with site ${peer.name} (${fingerprint}) at ${api}`,
      });
      return { ...peer, health: this.health.health(peer.name) };
    } catch (err) {
      this.failed(actor, 'peer.pair', api, err);
      throw err;
    }
  }

  /**
   * The other half of `pair`, at the site asked: checks the caller's offer and (unless `dryRun`)
   * stores it, spending the pairing token it came with, if any; answers with this site's offer.
   */
  accept(actor: Actor, o: PeerOffer & { dryRun?: boolean }, credential: AcceptCredential = {}): PeerOffer {
    const offer: PeerOffer = {
      name: o.name,
      certificate: o.certificate,
      ...(o.link !== undefined ? { link: o.link } : {}),
      ...(o.api !== undefined ? { api: o.api } : {}),
    };
    const run = () => {
      const { fingerprint } = this.check(offer, `the calling site ${offer.name}`);
      const token = credential.pairingToken;
      if (o.dryRun) {
        if (token !== undefined && this.store.tokenProblem(token)) throw this.tokenRefused(token);
        return this.offer();
      }
      if (token !== undefined && !this.store.consumeToken(token)) throw this.tokenRefused(token);
      this.store.put({ ...offer, fingerprint });
      this.links.refresh();
      this.events.append({
        actor,
        action: 'peer.pair',
        target: offer.name,
        outcome: 'ok',
        message: `paired with site ${offer.name} (${fingerprint}), at its request${token ? ' with a one-time token' : ''}`,
      });
      return this.offer();
    };
    if (o.dryRun) return run();
    try {
      return run();
    } catch (err) {
      this.failed(actor, 'peer.pair', offer.name, err);
      throw err;
    }
  }

  /** A one-time token another site may pair with instead of this site's API token. */
  createPairingToken(actor: Actor, ttlSeconds = PAIRING_TOKEN_TTL_S): { token: string; expiresAt: string } {
    if (!(Number.isInteger(ttlSeconds) && ttlSeconds >= 1 && ttlSeconds <= MAX_PAIRING_TOKEN_TTL_S))
      throw invalidArgument(
        `a pairing token lives 1 to ${MAX_PAIRING_TOKEN_TTL_S} seconds, not ${ttlSeconds}`,
      );
    const t = this.store.createToken(ttlSeconds * 1000);
    this.events.append({
      actor,
      action: 'peer.token.create',
      target: this.site,
      outcome: 'ok',
      message: `made a one-time pairing token, valid until ${t.expiresAt}`,
    });
    return t;
  }

  /**
   * Why `token` is not a pairing token that can be spent now, or undefined when it is (the API's
   * authentication asks, for the one route a pairing token opens).
   */
  pairingTokenProblem(token: string): string | undefined {
    return this.store.tokenProblem(token) === undefined ? undefined : this.tokenRefused(token).message;
  }

  /** Forgets a paired site here (not there) and cuts its links. */
  unpair(actor: Actor, name: string): void {
    try {
      const peer = this.store.get(name);
      this.store.remove(name);
      this.health.forget(name);
      this.links.refresh();
      this.links.drop(name);
      this.events.append({
        actor,
        action: 'peer.unpair',
        target: name,
        outcome: 'ok',
        message: `unpaired site ${name} (${peer.fingerprint}) here; it may still list this site until unpaired there`,
      });
    } catch (err) {
      this.failed(actor, 'peer.unpair', name, err);
      throw err;
    }
  }

  close(): Promise<void> {
    this.health.stop();
    return this.links.close();
  }

  /** An offer this site can pair with: valid, not itself, not clashing with a pairing it has. */
  private check(offer: PeerOffer, from: string): { fingerprint: string } {
    const { fingerprint } = checkOffer(offer, from);
    if (fingerprint === this.identity.fingerprint)
      throw conflict(`${from} is site ${this.site} itself: a site cannot pair with itself`);
    if (offer.name === this.site)
      throw conflict(`${from} is named ${offer.name} like this site: paired sites need different names`);
    const known = this.store.find(offer.name);
    if (known && known.fingerprint !== fingerprint)
      throw conflict(
        `site ${offer.name} is paired with site ${this.site} under the certificate ${known.fingerprint}, but ${from} presents ${fingerprint}: ` +
          `if site ${offer.name} was rebuilt, unpair it on site ${this.site} first (haven site unpair ${offer.name})`,
      );
    const other = this.store.byFingerprint(fingerprint);
    if (other && other.name !== offer.name)
      throw conflict(`the certificate ${fingerprint} of ${from} is paired already, as site ${other.name}`);
    return { fingerprint };
  }

  private tokenRefused(token: string): HavenError {
    const why = this.store.tokenProblem(token) ?? 'used';
    return new HavenError(
      'UNAUTHENTICATED',
      why === 'expired'
        ? `the pairing token of site ${this.site} has expired`
        : why === 'used'
          ? `the pairing token of site ${this.site} was used already (each pairs once)`
          : `the token is neither the API token nor a pairing token of site ${this.site}`,
    );
  }

  private failed(actor: Actor, action: string, target: string, err: unknown): void {
    if (err instanceof HavenError && err.code !== 'INTERNAL')
      this.events.append({
        actor,
        action,
        target,
        outcome: 'failed',
        message: `${action} ${target}: ${err.message}`,
      });
  }
}
