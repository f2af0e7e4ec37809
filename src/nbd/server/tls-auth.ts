import { X509Certificate, constants } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createSecureContext, type SecureContext, type TLSSocket } from 'node:tls';
import { invalidArgument } from '../../common/index.js';
import { PSK_CIPHERS, readPskFile } from '../psk.js';

export interface NbdTlsOptions {
  /** PEM files: the server's certificate and key (optional when `psk` is given). */
  cert?: string;
  key?: string;
  /** CA (PEM): clients may authenticate with a certificate it signed directly. */
  ca?: string;
  /**
   * A PSK file, one `identity:hex-key` a line (what GnuTLS psktool writes and QEMU's
   * tls-creds-psk and libnbd's tls-psk-file read): clients may authenticate with one of its keys.
   */
  psk?: string;
}

/**
 * The server's TLS credentials and how a client proves who it is. With `ca` or `psk` every
 * client must authenticate (a certificate the CA signed, or a key of the PSK file); with neither
 * the server only proves itself (its certificate) and anyone may connect.
 */
export class TlsAuth {
  readonly context: SecureContext;
  readonly clientAuth: boolean;
  private readonly cas: X509Certificate[];
  private readonly keys: Map<string, Buffer>;

  constructor(opts: NbdTlsOptions) {
    if (!opts.psk && !(opts.cert && opts.key))
      throw invalidArgument('TLS needs a certificate and its key, or a PSK file');
    if (!!opts.cert !== !!opts.key) throw invalidArgument('give both the TLS certificate and its key');
    try {
      this.cas = opts.ca ? splitPem(readFileSync(opts.ca, 'utf8')).map((p) => new X509Certificate(p)) : [];
      this.keys = opts.psk ? readPskFile(opts.psk) : new Map();
      this.context = createSecureContext({
        ...(opts.cert ? { cert: readFileSync(opts.cert), key: readFileSync(opts.key!) } : {}),
        ...(opts.ca ? { ca: readFileSync(opts.ca) } : {}),
        ...(opts.psk ? { ciphers: PSK_CIPHERS, honorCipherOrder: true } : {}),
        minVersion: 'TLSv1.2',
        // No resumption: a resumed session would skip the client's proof (see check()).
        secureOptions: constants.SSL_OP_NO_TICKET,
      });
      // A TLS 1.3 PSK handshake looks like a session resumption, which OpenSSL refuses without a
      // session id context when it may also ask for a certificate (tls.Server sets one; a
      // socket upgraded by STARTTLS has none).
      (this.context.context as { setSessionIdContext(id: string): void }).setSessionIdContext('haven-nbd');
    } catch (err) {
      if (err instanceof Error && 'code' in err && err.code === 'INVALID_ARGUMENT') throw err;
      throw invalidArgument(`TLS credentials cannot be loaded: ${(err as Error).message}`);
    }
    this.clientAuth = this.cas.length > 0 || this.keys.size > 0;
  }

  get requestCert(): boolean {
    return this.cas.length > 0;
  }

  /** The key for a PSK identity, or undefined (then the handshake falls back to certificates). */
  pskFor(identity: string): Buffer | undefined {
    return this.keys.get(identity);
  }

  /**
   * Who the client proved to be, or why it is refused. Node verifies client certificates only
   * inside tls.Server, not on a socket upgraded by STARTTLS, so the check is made here: the
   * certificate must be signed by a CA of the `ca` file and be valid now. A PSK counts only when
   * the handshake used it — OpenSSL asks for an offered identity's key and may then drop the PSK
   * (under a suite of another hash) and fall back to certificates — which TLS 1.3 reports as a
   * resumed session (none other can be: tickets are off) and TLS 1.2 as a PSK suite.
   */
  check(socket: TLSSocket, pskIdentity: string | undefined): { who: string } | { refused: string } {
    if (!this.clientAuth) return { who: 'anonymous' };
    const usedPsk =
      socket.getProtocol() === 'TLSv1.3' ? socket.isSessionReused() : /PSK/.test(socket.getCipher().name);
    if (usedPsk && pskIdentity !== undefined && this.keys.has(pskIdentity))
      return { who: `psk:${pskIdentity}` };
    const peer = socket.getPeerX509Certificate();
    if (!peer)
      return {
        refused: this.cas.length ? 'no client certificate (and no PSK)' : 'no PSK identity this server knows',
      };
    const now = Date.now();
    if (now < Date.parse(peer.validFrom) || now > Date.parse(peer.validTo))
      return { refused: `client certificate ${peer.subject} is not valid now` };
    const ca = this.cas.find((c) => peer.checkIssued(c) && peer.verify(c.publicKey));
    if (!ca) return { refused: `client certificate ${peer.subject} is not signed by the trusted CA` };
    if (peer.keyUsage && !peer.keyUsage.includes('1.3.6.1.5.5.7.3.2'))
      return { refused: `client certificate ${peer.subject} is not for client authentication` };
    return { who: `x509:${peer.subject.replace(/\n/g, ',')}` };
  }
}

function splitPem(text: string): string[] {
  const blocks = text.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g);
  if (!blocks) throw invalidArgument('the CA file holds no PEM certificate');
  return blocks;
}
