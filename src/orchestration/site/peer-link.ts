import type { AddressInfo } from 'node:net';
import { hostname } from 'node:os';
import { connect, createServer, type Server, type TLSSocket } from 'node:tls';
import { HavenError, conflict, errorMessage, logger, notFound } from '../../common/index.js';
import { parseHostPort } from '../../nbd/index.js';
import { Frame, jsonFrame } from '../../protection/index.js';
import type { EventLog } from './events.js';
import type { SiteIdentity } from './identity.js';
import { jsonBody, readOneFrame } from './peer-frames.js';
import type { Peer, PeerStore } from './peer-store.js';

const log = logger('peer-link');

/** What a channel does with a link once it is open: the socket is the channel's from now on. */
export type ChannelHandler = (socket: TLSSocket, peer: Peer, open: Record<string, unknown>) => void;

/** A link's TLS handshake and its open frame must both be done within this. */
const HANDSHAKE_MS = 10_000;
/** An open frame is a small JSON object. */
const MAX_OPEN = 64 * 1024;
/** Refused links are logged every time, but at most this many a minute go into the event log. */
const REFUSED_EVENTS_PER_MINUTE = 30;

/**
 * The site's peer links: mutual TLS with the site identity on both ends, where the only
 * certificates trusted are the paired peers' own (each self-signed, so each is its own CA) and
 * the presented certificate must also be one of theirs byte for byte (its fingerprint): a
 * certificate the peer's key signed for something else does not pass. After the handshake the
 * dialer sends one open frame ({ channel, … }); the listener answers with an open frame
 * ({ site }) and hands the socket to that channel's handler, or with an error frame and closes.
 */
export class PeerLinks {
  private server: Server | undefined;
  private address: { host: string; port: number } | undefined;
  private readonly channels = new Map<string, ChannelHandler>();
  /** Every open link, with the peer at its other end (unpairing cuts them). */
  private readonly sockets = new Map<TLSSocket, string>();
  private refusedWindow = { start: 0, count: 0 };

  constructor(
    private readonly site: string,
    private readonly identity: SiteIdentity,
    private readonly store: PeerStore,
    private readonly events: EventLog,
  ) {}

  async listen(at: { host: string; port: number }): Promise<void> {
    const server = createServer(
      // Unauthorized clients are refused in accept(), before a byte is read from them, rather
      // than by rejectUnauthorized: Node would drop them without their address or the reason.
      { ...this.context(), requestCert: true, rejectUnauthorized: false, handshakeTimeout: HANDSHAKE_MS },
      (socket) => this.accept(socket),
    );
    server.on('tlsClientError', (err, socket) =>
      this.refused(socket.remoteAddress, `its TLS handshake failed: ${err.message}`),
    );
    await new Promise<void>((resolve, reject) => {
      server.once('error', (err: NodeJS.ErrnoException) =>
        reject(
          new HavenError(
            err.code === 'EADDRINUSE' ? 'CONFLICT' : 'INVALID_ARGUMENT',
            `the peer link of site ${this.site} cannot listen on ${at.host}:${at.port}: ${err.code === 'EADDRINUSE' ? 'the port is in use (another site?)' : err.message}; give another with --peer-listen HOST:PORT, or none`,
          ),
        ),
      );
      server.listen(at.port, at.host, () => resolve());
    });
    server.on('error', (err) => log.error({ err: errorMessage(err) }, 'peer link listener failed'));
    this.server = server;
    const a = server.address() as AddressInfo;
    this.address = { host: at.host, port: a.port };
  }

  /** Where peers dial this site (HOST:PORT), when it listens; a wildcard address is told as the host name. */
  /** The address paired sites are told to dial (e.g. a NAT or proxy in front of the listener). */
  advertise: string | undefined;

  link(): string | undefined {
    if (!this.address) return undefined;
    if (this.advertise) return this.advertise;
    const { host, port } = this.address;
    const h = host === '0.0.0.0' || host === '::' || host === '' ? hostname() : host;
    return `${h.includes(':') ? `[${h}]` : h}:${port}`;
  }

  onChannel(channel: string, handler: ChannelHandler): void {
    if (this.channels.has(channel)) throw conflict(`the peer link channel ${channel} has a handler already`);
    this.channels.set(channel, handler);
  }

  /** The peers changed: new handshakes trust exactly the peers now paired. */
  refresh(): void {
    this.server?.setSecureContext(this.context());
  }

  /** Cuts every link with `peer` (it was unpaired). */
  drop(peer: string): void {
    for (const [socket, name] of this.sockets) if (name === peer) socket.destroy();
  }

  /**
   * A link to `peerName` for `open.channel`, authenticated both ways: resolves once the peer
   * has accepted it, with the socket ready for the channel's protocol.
   */
  async dial(peerName: string, open: Record<string, unknown>): Promise<TLSSocket> {
    if (typeof open.channel !== 'string')
      throw new HavenError('INVALID_ARGUMENT', 'open.channel must be a string');
    const peer = this.store.get(peerName);
    if (!peer.link)
      throw conflict(
        `site ${peer.name} has no peer link address (it runs with --peer-listen none): restart it with one and pair again`,
      );
    const { host, port } = parseHostPort(peer.link);
    const who = `site ${peer.name} at ${peer.link}`;
    const socket = await new Promise<TLSSocket>((resolve, reject) => {
      const s = connect({
        host,
        port,
        key: this.identity.key,
        cert: this.identity.certificate,
        ca: [peer.certificate],
        // The certificate is pinned (checked below), not matched to a host name.
        checkServerIdentity: () => undefined,
        rejectUnauthorized: false,
        timeout: HANDSHAKE_MS,
      });
      s.once('timeout', () => s.destroy(new Error(`no TLS handshake within ${HANDSHAKE_MS} ms`)));
      s.once('error', (err: NodeJS.ErrnoException) =>
        reject(new HavenError('IO', `cannot reach ${who}: ${err.message}`)),
      );
      s.once('secureConnect', () => {
        const got = s.getPeerCertificate().fingerprint256;
        if (got !== peer.fingerprint) {
          s.destroy();
          return reject(
            new HavenError(
              'PROTOCOL',
              `${who} presented the certificate ${got ?? '(none)'}, not the one paired (${peer.fingerprint}): ` +
                `something else listens there, or the site was rebuilt (then unpair it and pair again)`,
            ),
          );
        }
        if (!s.authorized) {
          s.destroy();
          return reject(
            new HavenError(
              'PROTOCOL',
              `${who}: its certificate is not valid: ${String(s.authorizationError)}`,
            ),
          );
        }
        s.setTimeout(0);
        // Small frames (acknowledgements, a synchronous write's record) go at once: Nagle's
        // wait for an ACK that the peer delays cost synchronous writes 14 ms each (40 ms at p99).
        s.setNoDelay(true);
        resolve(s);
      });
    });
    this.track(socket, peer.name);
    let answer;
    try {
      await jsonFrame(socket, Frame.open, open);
      answer = await readOneFrame(socket, who, { maxBytes: MAX_OPEN, timeoutMs: HANDSHAKE_MS });
    } catch (err) {
      socket.destroy();
      // TLS 1.3: the peer checks our certificate after our side of the handshake is done, so
      // its refusal shows here, as the link failing or closing before its answer.
      if (err instanceof HavenError && err.code !== 'IO') throw err;
      throw new HavenError(
        'PROTOCOL',
        `${who} refused the link: it does not trust this site's certificate (${this.identity.fingerprint}); pair again (haven site pair): ${errorMessage(err)}`,
      );
    }
    try {
      jsonBody(answer, Frame.open, who);
    } catch (err) {
      socket.destroy();
      throw err;
    }
    return socket;
  }

  async close(): Promise<void> {
    for (const s of this.sockets.keys()) s.destroy();
    const server = this.server;
    this.server = undefined;
    if (server) await new Promise<void>((r) => server.close(() => r()));
  }

  private context() {
    const peers = this.store.list().map((p) => p.certificate);
    // Never an empty or absent list: that would mean the system's CAs.
    return {
      key: this.identity.key,
      cert: this.identity.certificate,
      ca: peers.length ? peers : [this.identity.certificate],
    };
  }

  private accept(socket: TLSSocket): void {
    socket.setNoDelay(true);
    socket.on('error', () => undefined); // until it is tracked, or destroyed below
    const cert = socket.getPeerCertificate();
    const fingerprint = cert?.fingerprint256;
    const peer = fingerprint ? this.store.byFingerprint(fingerprint) : undefined;
    if (!socket.authorized || !peer) {
      const shown = fingerprint ? `${cert.subject?.CN ?? 'no CN'}, ${fingerprint}` : 'none';
      this.refused(
        socket.remoteAddress,
        socket.authorized
          ? `its certificate (${shown}) is not a paired site's`
          : `its certificate (${shown}) is not trusted: ${String(socket.authorizationError)}`,
      );
      socket.destroy();
      return;
    }
    this.track(socket, peer.name);
    const who = `site ${peer.name}`;
    void (async () => {
      try {
        const f = await readOneFrame(socket, who, { maxBytes: MAX_OPEN, timeoutMs: HANDSHAKE_MS });
        const open = jsonBody(f, Frame.open, who);
        const handler = typeof open.channel === 'string' ? this.channels.get(open.channel) : undefined;
        if (!handler) throw notFound(`site ${this.site} has no peer link channel ${String(open.channel)}`);
        await jsonFrame(socket, Frame.open, { site: this.site });
        log.debug({ peer: peer.name, channel: open.channel }, 'peer link open');
        try {
          handler(socket, peer, open);
        } catch (err) {
          // The link is the channel's now: no frame of ours may go into it.
          log.error(
            { peer: peer.name, channel: open.channel, err: errorMessage(err) },
            'peer link channel failed',
          );
          socket.destroy();
        }
      } catch (err) {
        log.warn({ peer: peer.name, err: errorMessage(err) }, 'peer link not opened');
        const code = err instanceof HavenError ? err.code : 'INTERNAL';
        if (!socket.destroyed)
          await jsonFrame(socket, Frame.error, { code, message: errorMessage(err) })
            .then(() => socket.end())
            .catch(() => socket.destroy());
      }
    })();
  }

  private track(socket: TLSSocket, peer: string): void {
    // A link that fails is the channel's to notice (by its close); this keeps the failure from
    // being an unhandled 'error' whatever the channel listens to.
    socket.on('error', (err) => log.debug({ peer, err: errorMessage(err) }, 'peer link error'));
    this.sockets.set(socket, peer);
    socket.once('close', () => this.sockets.delete(socket));
  }

  private refused(address: string | undefined, why: string): void {
    const message = `refused a peer link from ${address ?? 'an unknown address'}: ${why}`;
    log.warn({ address }, message);
    const t = Date.now();
    if (t - this.refusedWindow.start > 60_000) this.refusedWindow = { start: t, count: 0 };
    if (++this.refusedWindow.count > REFUSED_EVENTS_PER_MINUTE) return;
    this.events.append({
      actor: `peer@${address ?? 'unknown'}`,
      action: 'peer.link.refused',
      target: address ?? 'unknown',
      outcome: 'warning',
      message,
    });
  }
}
