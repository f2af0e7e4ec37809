import { crc32 } from 'node:zlib';
import { HavenError } from '../common/index.js';

/**
 * The on-disk format of a Haven backup repository, version 1 (docs/repository-format.md).
 *
 * Chunk object (`chunks/<2 hex>/<64 hex digest>`):
 *   0  magic "HVCK"          4 bytes
 *   4  format version (1)    u8
 *   5  flags                 u8: bit 0 zstd-compressed, bit 1 AES-256-GCM encrypted
 *   6  reserved (0)          u16
 *   8  plaintext length      u32 LE
 *  12  payload length        u32 LE
 *  16  CRC-32 of the payload u32 LE (catches media damage without decrypting or decompressing)
 *  20  payload: the (compressed) data; when encrypted: 12-byte nonce, ciphertext, 16-byte tag
 *
 * Index (`snapshots/<id>/disk<N>.idx`), one per disk of a snapshot. Version 2 (written now; see
 * disk-index.ts and docs/decisions/0011-repository-incremental-index.md), the root of a tree of pages:
 *   0  magic "HVIX"          4 bytes
 *   4  index version (2)     u8, then 3 reserved bytes
 *   8  chunk size            u32 LE (the largest chunk; a full backup's chunks)
 *  12  granule size          u32 LE (65536)
 *  16  disk size in bytes    u64 LE
 *  24  page count            u64 LE (ceil(granules / 256))
 *  32  granules per page     u32 LE (256), then a reserved u32
 *  40  per page: its digest (32 bytes; all zero: every granule reads as zeroes, no page stored)
 *      and how many of its granules hold data (u32 LE)
 * Page (stored as a chunk, `chunks/…`, encoded like any chunk), plaintext:
 *   0  magic "HVPG", version (2) u8, 3 reserved, granule count u32 LE, reserved u32
 *  16  one 32-byte chunk digest per granule (all zero: reads as zeroes), then one byte per granule:
 *      which 64 KiB part of that chunk the granule is
 *
 * Index version 1 (read, no longer written): a flat list of one digest per chunk:
 *   0  magic "HVIX"          4 bytes
 *   4  format version (1)    u8, then 3 reserved bytes
 *   8  chunk size            u32 LE
 *  12  reserved              u32
 *  16  disk size in bytes    u64 LE
 *  24  chunk count           u64 LE (ceil(size / chunk size))
 *  32  one 32-byte digest per chunk, in disk order; all zero bytes: the chunk reads as zeroes
 */
export const FORMAT_VERSION = 1;
/**
 * The repository (config.json) version of a repository whose backend packs chunks (S3, decision
 * 0024): the logical format is version 1's, but a Haven that does not know packs must refuse it
 * rather than find its chunks missing. Local repositories stay version 1.
 */
export const PACKED_VERSION = 2;
export const INDEX_V1 = 1;
export const INDEX_V2 = 2;
/** The unit an index addresses (version 2): a change costs whole granules, not whole chunks. */
export const GRANULE = 64 * 1024;
export const PAGE_GRANULES = 256;
export const PAGE_MAGIC = Buffer.from('HVPG');
export const PAGE_HEADER = 16;
export const ROOT_HEADER = 40;
export const ROOT_ENTRY = 36;
export const CHUNK_MAGIC = Buffer.from('HVCK');
export const INDEX_MAGIC = Buffer.from('HVIX');
export const CHUNK_HEADER = 20;
export const INDEX_HEADER = 32;
export const DIGEST_BYTES = 32;
export const FLAG_ZSTD = 1;
export const FLAG_ENCRYPTED = 2;
export const ZERO_DIGEST = Buffer.alloc(DIGEST_BYTES);

export const MIN_CHUNK_SIZE = 64 * 1024;
export const MAX_CHUNK_SIZE = 16 * 1024 * 1024;
export const DEFAULT_CHUNK_SIZE = 256 * 1024;

/** Chunk files being written: "chunks/ab/.tmp-…", renamed into place when whole. */
export const TMP_PREFIX = '.tmp-';

export function isTemporaryKey(key: string): boolean {
  return key.startsWith(TMP_PREFIX, key.lastIndexOf('/') + 1);
}

export function chunkKey(digest: Buffer | string): string {
  const hex = typeof digest === 'string' ? digest : digest.toString('hex');
  return `chunks/${hex.slice(0, 2)}/${hex}`;
}

/** Writes a chunk's header for a payload given whole or in parts (stored one after the other). */
export function writeChunkHeader(
  out: Buffer,
  flags: number,
  plainLength: number,
  payload: Uint8Array | readonly Uint8Array[],
): void {
  const parts = payload instanceof Uint8Array ? [payload] : payload;
  let length = 0;
  let crc = 0;
  for (const p of parts) {
    length += p.length;
    crc = crc32(p, crc);
  }
  CHUNK_MAGIC.copy(out, 0);
  out.writeUInt8(FORMAT_VERSION, 4);
  out.writeUInt8(flags, 5);
  out.writeUInt16LE(0, 6);
  out.writeUInt32LE(plainLength, 8);
  out.writeUInt32LE(length, 12);
  out.writeUInt32LE(crc, 16);
}

export interface ChunkHeader {
  flags: number;
  plainLength: number;
  payload: Buffer;
}

/**
 * Parses the header (the first CHUNK_HEADER bytes) of a stored chunk of `storedLength` bytes, so
 * that a reader can take the payload into a buffer of its own (e.g. straight into its target).
 */
export function readChunkHeader(
  header: Buffer,
  storedLength: number,
  what: string,
): { flags: number; plainLength: number; payloadLength: number; crc: number } {
  if (
    storedLength < CHUNK_HEADER ||
    header.length < CHUNK_HEADER ||
    !header.subarray(0, 4).equals(CHUNK_MAGIC)
  )
    throw new HavenError('CORRUPT', `${what}: not a Haven chunk (bad magic or truncated)`);
  const version = header.readUInt8(4);
  if (version !== FORMAT_VERSION)
    throw new HavenError('UNSUPPORTED', `${what}: chunk format version ${version} is not supported`);
  const payloadLength = header.readUInt32LE(12);
  if (storedLength !== CHUNK_HEADER + payloadLength)
    throw new HavenError(
      'CORRUPT',
      `${what}: truncated (${storedLength - CHUNK_HEADER} of ${payloadLength} payload bytes)`,
    );
  return {
    flags: header.readUInt8(5),
    plainLength: header.readUInt32LE(8),
    payloadLength,
    crc: header.readUInt32LE(16),
  };
}

/**
 * Parses a stored chunk and checks its CRC; `what` names it in errors. Readers that check the
 * plaintext against its digest anyway (a stronger check) may skip the CRC.
 */
export function readChunk(stored: Buffer, what: string, opts: { crc?: boolean } = {}): ChunkHeader {
  const h = readChunkHeader(stored, stored.length, what);
  const payload = stored.subarray(CHUNK_HEADER);
  if (opts.crc !== false && crc32(payload) !== h.crc)
    throw new HavenError('CORRUPT', `${what}: checksum mismatch`);
  return { flags: h.flags, plainLength: h.plainLength, payload };
}

export interface IndexHeader {
  chunkSize: number;
  size: number;
  count: number;
}

export function indexBytes(h: IndexHeader): number {
  return INDEX_HEADER + h.count * DIGEST_BYTES;
}

export function writeIndexHeader(out: Buffer, h: IndexHeader): void {
  INDEX_MAGIC.copy(out, 0);
  out.writeUInt8(FORMAT_VERSION, 4);
  out.fill(0, 5, 8);
  out.writeUInt32LE(h.chunkSize, 8);
  out.writeUInt32LE(0, 12);
  out.writeBigUInt64LE(BigInt(h.size), 16);
  out.writeBigUInt64LE(BigInt(h.count), 24);
}

export function readIndex(data: Buffer, what: string): IndexHeader & { digests: Buffer } {
  if (data.length < INDEX_HEADER || !data.subarray(0, 4).equals(INDEX_MAGIC))
    throw new HavenError('CORRUPT', `${what}: not a Haven index`);
  if (data.readUInt8(4) !== INDEX_V1)
    throw new HavenError(
      'UNSUPPORTED',
      `${what}: index format version ${data.readUInt8(4)} is not supported`,
    );
  const chunkSize = data.readUInt32LE(8);
  const size = Number(data.readBigUInt64LE(16));
  const count = Number(data.readBigUInt64LE(24));
  if (count !== Math.ceil(size / chunkSize) || data.length !== indexBytes({ chunkSize, size, count }))
    throw new HavenError('CORRUPT', `${what}: index size does not match its header`);
  return { chunkSize, size, count, digests: data.subarray(INDEX_HEADER) };
}

export function checkChunkSize(n: number): void {
  if (!Number.isInteger(n) || n < MIN_CHUNK_SIZE || n > MAX_CHUNK_SIZE || (n & (n - 1)) !== 0)
    throw new HavenError(
      'INVALID_ARGUMENT',
      `chunk size ${n} must be a power of two from ${MIN_CHUNK_SIZE} to ${MAX_CHUNK_SIZE} bytes`,
    );
}
