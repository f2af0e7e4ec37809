import { createRequire } from 'node:module';
import type * as Zstd from 'zstd-napi/binding.js';
import { HavenError } from '../common/index.js';
import { CHUNK_HEADER, FLAG_ENCRYPTED, FLAG_ZSTD, chunkKey, readChunk, writeChunkHeader } from './format.js';
import { chunkDigest, decrypt, encryptParts, type ChunkKeys } from './keys.js';

// zstd-napi's low-level binding: (de)compression into buffers we own, no allocation per chunk.
const zstd = createRequire(import.meta.url)('zstd-napi/binding') as typeof Zstd;

/** zstd level 3: about 3× faster than 9 for a few percent of size on disk images. */
const LEVEL = 3;

/**
 * Turns chunks into stored objects and back, with one zstd context each way and one scratch
 * buffer, reused for every chunk (no per-chunk setup or allocation). One codec per thread.
 */
export class ChunkCodec {
  private readonly cctx = new zstd.CCtx();
  private readonly dctx = new zstd.DCtx();
  private scratch = Buffer.alloc(0);
  private readonly header = Buffer.alloc(CHUNK_HEADER);

  constructor(private readonly keys: ChunkKeys | undefined) {
    this.cctx.setParameter(zstd.CParameter.compressionLevel, LEVEL);
  }

  digest(plain: Uint8Array): Buffer {
    return chunkDigest(plain, this.keys);
  }

  /** The stored form of a chunk: compressed when that saves space, encrypted when keyed. */
  encode(plain: Uint8Array, digest: Buffer): Buffer {
    return Buffer.concat(this.encodeParts(plain, digest));
  }

  /**
   * The stored form as its parts (header first), to be written one after the other without
   * joining them. Views of this codec's buffers, valid until its next call.
   */
  encodeParts(plain: Uint8Array, digest: Buffer): Uint8Array[] {
    const bound = zstd.compressBound(plain.length);
    if (this.scratch.length < bound) this.scratch = Buffer.alloc(bound);
    const n = this.cctx.compress2(this.scratch, plain);
    let flags = 0;
    let payload: Uint8Array[] = [plain];
    if (n < plain.length) {
      payload = [this.scratch.subarray(0, n)];
      flags |= FLAG_ZSTD;
    }
    if (this.keys) {
      payload = encryptParts(this.keys, digest, payload[0]!);
      flags |= FLAG_ENCRYPTED;
    }
    writeChunkHeader(this.header, flags, plain.length, payload);
    return [this.header, ...payload];
  }

  /** The plaintext of a stored chunk, checked against its digest; errors name the chunk. */
  decode(stored: Buffer, digest: Buffer): Buffer {
    const h = readChunk(stored, `chunk ${chunkKey(digest)}`);
    const out = Buffer.allocUnsafe(h.plainLength);
    this.decodeInto(stored, digest, out);
    return out;
  }

  /**
   * Decodes a stored chunk into `out` (at least its plain length), checked against its digest;
   * returns the plain length. Nothing else is allocated for an unencrypted chunk.
   */
  decodeInto(stored: Buffer, digest: Buffer, out: Buffer): number {
    // No CRC: the digest check below covers every byte (and the GCM tag when encrypted).
    const h = readChunk(stored, `chunk ${chunkKey(digest)}`, { crc: false });
    return this.decodePayloadInto(h.flags, h.plainLength, h.payload, digest, out);
  }

  /**
   * Decodes a chunk's payload (its header parsed apart, see readChunkHeader) into `out`, checked
   * against its digest; returns the plain length. A payload stored as it is may already be where
   * it belongs: a view of the start of `out`, then it is checked in place, not copied.
   */
  decodePayloadInto(
    flags: number,
    plainLength: number,
    payload: Buffer,
    digest: Buffer,
    out: Buffer,
  ): number {
    const what = `chunk ${chunkKey(digest)}`;
    if (plainLength > out.length)
      throw new HavenError('CORRUPT', `${what}: ${plainLength} bytes is more than a chunk holds`);
    if (flags & FLAG_ENCRYPTED) {
      if (!this.keys) throw new HavenError('CORRUPT', `${what} is encrypted in an unencrypted repository`);
      payload = decrypt(this.keys, digest, payload, what);
    } else if (this.keys)
      throw new HavenError('CORRUPT', `${what} is not encrypted in an encrypted repository`);
    let n: number;
    if (flags & FLAG_ZSTD) {
      try {
        n = this.dctx.decompress(out.subarray(0, plainLength), payload);
      } catch (err) {
        throw new HavenError('CORRUPT', `${what}: cannot decompress: ${(err as Error).message}`);
      }
    } else if (payload.length > plainLength) n = -1;
    else if (payload.buffer === out.buffer && payload.byteOffset === out.byteOffset) n = payload.length;
    else n = payload.copy(out);
    if (n !== plainLength)
      throw new HavenError('CORRUPT', `${what}: ${n} bytes where ${plainLength} were stored`);
    if (!this.digest(out.subarray(0, n)).equals(digest))
      throw new HavenError('CORRUPT', `${what}: content does not match its digest`);
    return n;
  }
}
