import { createHash, randomBytes } from 'node:crypto';
import { notFound } from '../../common/index.js';
import { now, type Db } from './database.js';

/** A site this one is paired with: its pinned certificate and where to reach it. */
export interface Peer {
  name: string;
  /** PEM of its self-signed certificate: the only one its links may present. */
  certificate: string;
  fingerprint: string;
  /** HOST:PORT of its peer link listener (absent: it listens for none). */
  link?: string;
  /** Its API's URL, as it gave it. */
  api?: string;
  pairedAt: string;
}

interface PeerRow {
  name: string;
  certificate: string;
  fingerprint: string;
  link_address: string | null;
  api_url: string | null;
  paired_at: string;
}

const toPeer = (r: PeerRow): Peer => ({
  name: r.name,
  certificate: r.certificate,
  fingerprint: r.fingerprint,
  ...(r.link_address ? { link: r.link_address } : {}),
  ...(r.api_url ? { api: r.api_url } : {}),
  pairedAt: r.paired_at,
});

/** Pairing tokens look like this, so that one pasted in the wrong place is recognisable. */
const TOKEN_PREFIX = 'haven-pair-';
const hash = (token: string) => createHash('sha256').update(token).digest('hex');

/** The peers table and the one-time pairing tokens (only their SHA-256 is stored). */
export class PeerStore {
  constructor(private readonly db: Db) {}

  list(): Peer[] {
    return (this.db.prepare('SELECT * FROM peers ORDER BY name').all() as PeerRow[]).map(toPeer);
  }

  find(name: string): Peer | undefined {
    const r = this.db.prepare('SELECT * FROM peers WHERE name = ?').get(name) as PeerRow | undefined;
    return r && toPeer(r);
  }

  get(name: string): Peer {
    const p = this.find(name);
    if (!p) throw notFound(`site ${name} is not paired with this site: pair it first (haven site pair)`);
    return p;
  }

  byFingerprint(fingerprint: string): Peer | undefined {
    const r = this.db.prepare('SELECT * FROM peers WHERE fingerprint = ?').get(fingerprint) as
      PeerRow | undefined;
    return r && toPeer(r);
  }

  /** Stores a peer (a second pairing with the same certificate updates its addresses). */
  put(p: Omit<Peer, 'pairedAt'>): Peer {
    const pairedAt = now();
    this.db
      .prepare(
        `INSERT INTO peers (name, certificate, fingerprint, link_address, api_url, paired_at) VALUES (?, ?, ?, ?, ?, ?)
         ON CONFLICT (name) DO UPDATE SET certificate = excluded.certificate, fingerprint = excluded.fingerprint,
           link_address = excluded.link_address, api_url = excluded.api_url, paired_at = excluded.paired_at`,
      )
      .run(p.name, p.certificate, p.fingerprint, p.link ?? null, p.api ?? null, pairedAt);
    return { ...p, pairedAt };
  }

  remove(name: string): void {
    this.db.prepare('DELETE FROM peers WHERE name = ?').run(name);
  }

  /** A fresh one-time token, valid for `ttlMs`; spent and expired ones older than a day are dropped. */
  createToken(ttlMs: number): { token: string; expiresAt: string } {
    const token = TOKEN_PREFIX + randomBytes(24).toString('base64url');
    const expiresAt = new Date(Date.now() + ttlMs).toISOString();
    const dayAgo = new Date(Date.now() - 86_400_000).toISOString();
    this.db.prepare('DELETE FROM pairing_tokens WHERE expires_at < ?').run(dayAgo);
    this.db
      .prepare('INSERT INTO pairing_tokens (hash, created_at, expires_at) VALUES (?, ?, ?)')
      .run(hash(token), now(), expiresAt);
    return { token, expiresAt };
  }

  /** Why `token` cannot be used now ('unknown', 'used', 'expired'), or undefined when it can. */
  tokenProblem(token: string): 'unknown' | 'used' | 'expired' | undefined {
    if (!token.startsWith(TOKEN_PREFIX)) return 'unknown';
    const r = this.db
      .prepare('SELECT expires_at, used_at FROM pairing_tokens WHERE hash = ?')
      .get(hash(token)) as { expires_at: string; used_at: string | null } | undefined;
    if (!r) return 'unknown';
    if (r.used_at) return 'used';
    if (r.expires_at <= now()) return 'expired';
    return undefined;
  }

  /** Spends the token: true once, for a valid token; false for any other. */
  consumeToken(token: string): boolean {
    const t = now();
    return (
      this.db
        .prepare(
          'UPDATE pairing_tokens SET used_at = ? WHERE hash = ? AND used_at IS NULL AND expires_at > ?',
        )
        .run(t, hash(token), t).changes === 1
    );
  }
}
