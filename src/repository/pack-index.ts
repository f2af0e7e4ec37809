import { createCipheriv, createDecipheriv, createHash, randomBytes } from 'node:crypto';
import { HavenError } from '../common/errors.js';
import { DIGEST_BYTES } from './format.js';

/**
 * Pack files of an object-store repository (docs/decisions/0024-s3-pack-files.md). The chunks a
 * session writes are appended, as stored (header and payload, exactly the bytes a chunk object
 * would hold), into pack objects `packs/<2 hex>/<32 hex>`; an index object `index/<32 hex>` names
 * packs and where each chunk is in them. An index object is written only after every pack it names
 * is stored, so an index never names a pack that is not there.
 *
 * Index object, version 1:
 *   0  magic "HVPI"          4 bytes
 *   4  version (1)           u8, then 3 reserved bytes
 *   8  pack count            u32 LE, then a reserved u32
 *  16  per pack: its id (16 bytes), written at (u64 LE, ms), retained until when written (u64 LE,
 *      ms; 0: none), chunk count (u32 LE), reserved u32 — 40 bytes — then per chunk: its digest
 *      (32 bytes), offset (u32 LE) and stored length (u32 LE) in the pack
 *  end SHA-256 of everything before (32 bytes)
 *
 * In an encrypted repository the index object is that, sealed (sealPackIndex): "HVPE", version (1)
 * u8 and 3 reserved bytes, a 12-byte nonce, the AES-256-GCM ciphertext, its 16-byte tag; the
 * additional data is the object's key, so an index object moved under another name fails. The key
 * is the repository's metadata key (keys.ts): nothing of the chunks' digests, sizes or count, nor
 * of which pack holds what, is readable in the bucket without the passphrase (restic encrypts its
 * index for the same reason). Plain index objects (written before, or unencrypted repositories)
 * still read.
 */
export const PACK_INDEX_MAGIC = Buffer.from('HVPI');
export const SEALED_INDEX_MAGIC = Buffer.from('HVPE');
const SEALED_HEADER = 8;
const NONCE = 12;
const TAG = 16;
const HEADER = 16;
const PACK_HEADER = 40;
const ENTRY = DIGEST_BYTES + 8;

export interface PackEntry {
  /** The chunk's digest, hex. */
  hex: string;
  offset: number;
  length: number;
}

export interface PackRecord {
  /** 32 hex digits. */
  id: string;
  writtenAt: number;
  /** Object Lock retain-until set when it was written (a lower bound: it may have been extended). */
  retainUntil: number;
  /** By offset. */
  entries: PackEntry[];
}

export const newPackId = (): string => randomBytes(16).toString('hex');
export const packKey = (id: string): string => `packs/${id.slice(0, 2)}/${id}`;
export const packIdOf = (key: string): string => key.slice(key.lastIndexOf('/') + 1);
export const indexKey = (id: string): string => `index/${id}`;

export function encodePackIndex(packs: readonly PackRecord[]): Buffer {
  const size = HEADER + packs.reduce((n, p) => n + PACK_HEADER + p.entries.length * ENTRY, 0) + 32;
  const out = Buffer.alloc(size);
  PACK_INDEX_MAGIC.copy(out, 0);
  out.writeUInt8(1, 4);
  out.writeUInt32LE(packs.length, 8);
  let at = HEADER;
  for (const p of packs) {
    out.write(p.id, at, 16, 'hex');
    out.writeBigUInt64LE(BigInt(p.writtenAt), at + 16);
    out.writeBigUInt64LE(BigInt(p.retainUntil), at + 24);
    out.writeUInt32LE(p.entries.length, at + 32);
    at += PACK_HEADER;
    for (const e of p.entries) {
      out.write(e.hex, at, DIGEST_BYTES, 'hex');
      out.writeUInt32LE(e.offset, at + DIGEST_BYTES);
      out.writeUInt32LE(e.length, at + DIGEST_BYTES + 4);
      at += ENTRY;
    }
  }
  createHash('sha256').update(out.subarray(0, at)).digest().copy(out, at);
  return out;
}

export function decodePackIndex(data: Buffer, what: string): PackRecord[] {
  const bad = (why: string) => new HavenError('CORRUPT', `${what}: ${why}`);
  if (data.length < HEADER + 32 || !data.subarray(0, 4).equals(PACK_INDEX_MAGIC))
    throw bad('not a pack index');
  if (data.readUInt8(4) !== 1) throw bad(`pack index version ${data.readUInt8(4)} is not known`);
  const body = data.subarray(0, data.length - 32);
  if (
    !createHash('sha256')
      .update(body)
      .digest()
      .equals(data.subarray(data.length - 32))
  )
    throw bad('its checksum does not match (damaged)');
  const count = data.readUInt32LE(8);
  const out: PackRecord[] = [];
  let at = HEADER;
  for (let i = 0; i < count; i++) {
    if (at + PACK_HEADER > body.length) throw bad('truncated');
    const n = data.readUInt32LE(at + 32);
    const p: PackRecord = {
      id: data.toString('hex', at, at + 16),
      writtenAt: Number(data.readBigUInt64LE(at + 16)),
      retainUntil: Number(data.readBigUInt64LE(at + 24)),
      entries: [],
    };
    at += PACK_HEADER;
    if (at + n * ENTRY > body.length) throw bad('truncated');
    for (let j = 0; j < n; j++, at += ENTRY)
      p.entries.push({
        hex: data.toString('hex', at, at + DIGEST_BYTES),
        offset: data.readUInt32LE(at + DIGEST_BYTES),
        length: data.readUInt32LE(at + DIGEST_BYTES + 4),
      });
    out.push(p);
  }
  if (at !== body.length) throw bad('trailing bytes');
  return out;
}

/** An index object as stored: sealed under `key` when the repository is encrypted (see above). */
export function sealPackIndex(plain: Buffer, key: Buffer | undefined, objectKey: string): Buffer {
  if (!key) return plain;
  const nonce = randomBytes(NONCE);
  const c = createCipheriv('aes-256-gcm', key, nonce);
  c.setAAD(Buffer.from(objectKey, 'utf8'));
  const header = Buffer.alloc(SEALED_HEADER);
  SEALED_INDEX_MAGIC.copy(header, 0);
  header.writeUInt8(1, 4);
  const body = c.update(plain);
  c.final(); // nothing more for GCM
  return Buffer.concat([header, nonce, body, c.getAuthTag()]);
}

/** Reads an index object as stored (sealed or plain); a sealed one needs the repository's key. */
export function openPackIndex(
  data: Buffer,
  key: Buffer | undefined,
  objectKey: string,
  what: string,
): PackRecord[] {
  if (data.length < 4 || !data.subarray(0, 4).equals(SEALED_INDEX_MAGIC)) return decodePackIndex(data, what);
  const bad = (why: string) => new HavenError('CORRUPT', `${what}: ${why}`);
  if (!key) throw bad('it is encrypted, and this repository is opened without a key');
  if (data.length < SEALED_HEADER + NONCE + TAG) throw bad('truncated');
  if (data.readUInt8(4) !== 1) throw bad(`sealed pack index version ${data.readUInt8(4)} is not known`);
  const d = createDecipheriv('aes-256-gcm', key, data.subarray(SEALED_HEADER, SEALED_HEADER + NONCE));
  d.setAAD(Buffer.from(objectKey, 'utf8'));
  d.setAuthTag(data.subarray(data.length - TAG));
  let plain: Buffer;
  try {
    plain = d.update(data.subarray(SEALED_HEADER + NONCE, data.length - TAG));
    d.final();
  } catch {
    throw bad("authentication failed (damaged, moved, or not this repository's)");
  }
  return decodePackIndex(plain, what);
}
