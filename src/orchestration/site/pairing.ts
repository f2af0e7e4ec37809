import { HavenError, invalidArgument, isHavenErrorCode } from '../../common/index.js';
import { checkName } from '../../storage/index.js';
import { parseHostPort } from '../../nbd/index.js';
import { parseCertificate } from './identity.js';

/** What a site tells another at pairing: who it is and where to reach it. */
export interface PeerOffer {
  name: string;
  /** PEM of its self-signed site certificate. */
  certificate: string;
  /** HOST:PORT of its peer link listener, if it has one. */
  link?: string;
  /** Its API URL, if it knows it. */
  api?: string;
}

/** The API path of a peer's accept route (the API layer's prefix, which this layer may not import). */
const ACCEPT_PATH = '/api/v1/peers/accept';
const PAIRING_TIMEOUT_MS = 20_000;

/**
 * An offer that holds up: a site name, a certificate that parses and is made out to
 * CN=haven-site-NAME, a link HOST:PORT and an http(s) API URL; its certificate's fingerprint.
 * `from` names who made it, for the error messages.
 */
export function checkOffer(o: PeerOffer, from: string): { offer: PeerOffer; fingerprint: string } {
  checkName('site', o.name);
  const cert = parseCertificate(o.certificate, `the certificate of site ${o.name} (${from})`);
  const cn = /(?:^|\n)CN=([^\n]*)/.exec(cert.subject)?.[1];
  if (cn !== `haven-site-${o.name}`)
    throw invalidArgument(
      `the certificate of site ${o.name} (${from}) is made out to ${cn ? `CN=${cn}` : cert.subject}, not CN=haven-site-${o.name}`,
    );
  if (o.link !== undefined) parseHostPort(o.link);
  if (o.api !== undefined) apiUrl(o.api);
  return { offer: o, fingerprint: cert.fingerprint256 };
}

/** An http(s) URL of a site's API, without a trailing slash; a clear error for anything else. */
export function apiUrl(s: string): string {
  let u: URL;
  try {
    u = new URL(s);
  } catch {
    throw invalidArgument(`the peer API "${s}" is not a URL: give one like http://HOST:8710`);
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:')
    throw invalidArgument(`the peer API "${s}" is not an http(s) URL: give one like http://HOST:8710`);
  return s.replace(/\/+$/, '');
}

/**
 * Offers this site to the site whose API is at `api`, authenticated with `token` (its API token
 * or one of its pairing tokens); resolves with that site's offer. `dryRun`: it only checks.
 */
export async function offerTo(
  api: string,
  token: string,
  mine: PeerOffer,
  dryRun: boolean,
): Promise<PeerOffer> {
  let res: Response;
  try {
    res = await fetch(api + ACCEPT_PATH, {
      method: 'POST',
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
      body: JSON.stringify({ ...mine, dryRun }),
      signal: AbortSignal.timeout(PAIRING_TIMEOUT_MS),
    });
  } catch (err) {
    const cause = (err as { cause?: { message?: string } }).cause?.message;
    throw new HavenError('IO', `cannot reach the peer API ${api}: ${cause ?? (err as Error).message}`);
  }
  const text = await res.text();
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch {
    throw new HavenError(
      'PROTOCOL',
      `the peer API ${api} answered ${res.status} with no JSON: is it a Haven site?`,
    );
  }
  const e = (body as { error?: { code?: string; message?: string } }).error;
  // The token is this request's input, not this site's credential: not a 401 here.
  if (res.status === 401)
    throw invalidArgument(
      `the site at ${api} refused the peer token: ${e?.message ?? 'HTTP 401'}; give its API token (DATA/api-token there) or a fresh one-time token from "haven site pair-token" there`,
    );
  if (!res.ok) {
    throw new HavenError(
      e?.code && isHavenErrorCode(e.code) ? e.code : 'PROTOCOL',
      `the site at ${api} refused the pairing: ${e?.message ?? `HTTP ${res.status}`}`,
    );
  }
  const o = body as Partial<PeerOffer>;
  if (typeof o.name !== 'string' || typeof o.certificate !== 'string')
    throw new HavenError('PROTOCOL', `the peer API ${api} answered without a site name and certificate`);
  return {
    name: o.name,
    certificate: o.certificate,
    ...(typeof o.link === 'string' ? { link: o.link } : {}),
    ...(typeof o.api === 'string' ? { api: o.api } : {}),
  };
}
