import {
  createCipheriv,
  createDecipheriv,
  createHash,
  createHmac,
  hkdfSync,
  randomBytes,
  scrypt,
  type ScryptOptions,
} from 'node:crypto';
import { HavenError } from '../common/index.js';

const scryptAsync = (pass: string, salt: Buffer, length: number, opts: ScryptOptions) =>
  new Promise<Buffer>((resolve, reject) =>
    scrypt(pass, salt, length, opts, (err, key) => (err ? reject(err) : resolve(key))),
  );

/** How the repository's master key is kept: wrapped under a key derived from the passphrase. */
export interface EncryptionConfig {
  cipher: 'aes-256-gcm';
  kdf: { name: 'scrypt'; N: number; r: number; p: number; salt: string };
  /** The master key, AES-256-GCM under the passphrase key: base64 of nonce | ciphertext | tag. */
  wrappedKey: string;
}

/** The keys a repository works with once opened. */
export interface RepositoryKeys {
  /** Keys the chunk digests (HMAC-SHA-256), so digests reveal nothing about the data. */
  id: Buffer;
  /** Encrypts chunk payloads (AES-256-GCM). */
  data: Buffer;
  /** Encrypts what a backend keeps about the objects (an S3 bucket's pack index objects). */
  meta: Buffer;
}

/** What encoding and decoding chunks needs (all a chunk worker is given). */
export type ChunkKeys = Pick<RepositoryKeys, 'id' | 'data'>;

// scrypt with N=2^16, r=8: 64 MiB of memory and about a fifth of a second per try.
const KDF = { N: 1 << 16, r: 8, p: 1 };

/**
 * Keys derived in this process, so that a long-lived process (the site daemon, opening a repository
 * for every job) pays scrypt once per repository and passphrase, not once per open. Memory only,
 * never written; looked up by an HMAC under a key made at start-up (no fast hash of a passphrase
 * is kept); a few entries, the oldest dropped. A wrong passphrase is a different entry: it is
 * derived, and fails to unwrap, as before. scrypt runs on libuv's thread pool: its fifth of a
 * second never holds the daemon's event loop (the guests' NBD requests, the API); opens that come
 * while a key is being derived wait for that one derivation.
 */
const derived = new Map<string, Promise<Buffer>>();
const DERIVED_MAX = 16;
let lookupKey: Buffer | undefined;

function kek(passphrase: string, kdf: EncryptionConfig['kdf']): Promise<Buffer> {
  const pass = passphrase.normalize('NFC');
  lookupKey ??= randomBytes(32);
  const id = createHmac('sha256', lookupKey)
    .update(JSON.stringify([kdf.name, kdf.N, kdf.r, kdf.p, kdf.salt, pass]))
    .digest('base64');
  const hit = derived.get(id);
  if (hit) return hit;
  const key = scryptAsync(pass, Buffer.from(kdf.salt, 'base64'), 32, {
    N: kdf.N,
    r: kdf.r,
    p: kdf.p,
    maxmem: 256 * kdf.N * kdf.r + 1024 * 1024,
  });
  if (derived.size >= DERIVED_MAX) derived.delete(derived.keys().next().value!);
  derived.set(id, key);
  // A failed derivation (out of memory, say) is not remembered: the next open tries again.
  key.catch(() => derived.get(id) === key && derived.delete(id));
  return key;
}

function split(master: Buffer): RepositoryKeys {
  return {
    id: Buffer.from(hkdfSync('sha256', master, Buffer.alloc(0), 'haven chunk id', 32)),
    data: Buffer.from(hkdfSync('sha256', master, Buffer.alloc(0), 'haven chunk data', 32)),
    meta: Buffer.from(hkdfSync('sha256', master, Buffer.alloc(0), 'haven backend metadata', 32)),
  };
}

/** Makes a new master key wrapped under `passphrase`. */
export async function newEncryption(
  passphrase: string,
): Promise<{ config: EncryptionConfig; keys: RepositoryKeys }> {
  if (passphrase.length < 8)
    throw new HavenError('INVALID_ARGUMENT', 'the passphrase must have at least 8 characters');
  const master = randomBytes(32);
  const kdf = { name: 'scrypt' as const, ...KDF, salt: randomBytes(16).toString('base64') };
  const nonce = randomBytes(12);
  const c = createCipheriv('aes-256-gcm', await kek(passphrase, kdf), nonce);
  const wrapped = Buffer.concat([nonce, c.update(master), c.final(), c.getAuthTag()]);
  return {
    config: { cipher: 'aes-256-gcm', kdf, wrappedKey: wrapped.toString('base64') },
    keys: split(master),
  };
}

/** Unwraps the master key; a wrong passphrase is a clear error, never garbage keys. */
export async function openEncryption(config: EncryptionConfig, passphrase: string): Promise<RepositoryKeys> {
  const w = Buffer.from(config.wrappedKey, 'base64');
  const d = createDecipheriv('aes-256-gcm', await kek(passphrase, config.kdf), w.subarray(0, 12));
  d.setAuthTag(w.subarray(w.length - 16));
  try {
    return split(Buffer.concat([d.update(w.subarray(12, w.length - 16)), d.final()]));
  } catch {
    throw new HavenError('UNAUTHENTICATED', 'wrong passphrase for this repository');
  }
}

/** A chunk's address: SHA-256 of the plaintext, keyed (HMAC) in an encrypted repository. */
export function chunkDigest(data: Uint8Array, keys: ChunkKeys | undefined): Buffer {
  return keys
    ? createHmac('sha256', keys.id).update(data).digest()
    : createHash('sha256').update(data).digest();
}

export function encrypt(keys: ChunkKeys, digest: Buffer, data: Uint8Array): Buffer {
  return Buffer.concat(encryptParts(keys, digest, data));
}

/**
 * The encrypted payload as its parts (nonce, ciphertext, tag), to be stored one after the other:
 * joining them would copy the whole chunk once more.
 */
export function encryptParts(keys: ChunkKeys, digest: Buffer, data: Uint8Array): Buffer[] {
  const nonce = randomBytes(12);
  const c = createCipheriv('aes-256-gcm', keys.data, nonce);
  c.setAAD(digest); // a payload moved to another chunk's name fails authentication
  const body = c.update(data);
  const last = c.final(); // empty for GCM
  return last.length ? [nonce, body, last, c.getAuthTag()] : [nonce, body, c.getAuthTag()];
}

export function decrypt(keys: ChunkKeys, digest: Buffer, payload: Buffer, what: string): Buffer {
  const d = createDecipheriv('aes-256-gcm', keys.data, payload.subarray(0, 12));
  d.setAAD(digest);
  d.setAuthTag(payload.subarray(payload.length - 16));
  try {
    const body = d.update(payload.subarray(12, payload.length - 16));
    const last = d.final(); // empty for GCM: no second copy of the chunk to join them
    return last.length ? Buffer.concat([body, last]) : body;
  } catch {
    throw new HavenError('CORRUPT', `${what}: authentication failed (damaged, or not this repository's)`);
  }
}
