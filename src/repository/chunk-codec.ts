import { Compressor, Decompressor } from 'zstd-napi';
import { HavenError } from '../common/index.js';
import { CHUNK_HEADER, FLAG_ENCRYPTED, FLAG_ZSTD, chunkKey, readChunk, writeChunkHeader } from './format.js';
import { chunkDigest, decrypt, encrypt, type RepositoryKeys } from './keys.js';

/** zstd level 3: about 3× faster than 9 for a few percent of size on disk images. */
const LEVEL = 3;

/**
 * Turns chunks into stored objects and back, with one zstd context each way (reused: no
 * per-chunk setup). One codec per thread.
 */
export class ChunkCodec {
  private readonly compressor = new Compressor();
  private readonly decompressor = new Decompressor();

  constructor(private readonly keys: RepositoryKeys | undefined) {
    this.compressor.setParameters({ compressionLevel: LEVEL });
  }

  digest(plain: Uint8Array): Buffer {
    return chunkDigest(plain, this.keys);
  }

  /** The stored form of a chunk: compressed when that saves space, encrypted when keyed. */
  encode(plain: Uint8Array, digest: Buffer): Buffer {
    const compressed = this.compressor.compress(plain);
    let flags = 0;
    let payload: Uint8Array = plain;
    if (compressed.length < plain.length) {
      payload = compressed;
      flags |= FLAG_ZSTD;
    }
    if (this.keys) {
      payload = encrypt(this.keys, digest, payload);
      flags |= FLAG_ENCRYPTED;
    }
    const out = Buffer.allocUnsafe(CHUNK_HEADER + payload.length);
    writeChunkHeader(out, flags, plain.length, payload);
    out.set(payload, CHUNK_HEADER);
    return out;
  }

  /** The plaintext of a stored chunk, checked against its digest; errors name the chunk. */
  decode(stored: Buffer, digest: Buffer): Buffer {
    const what = `chunk ${chunkKey(digest)}`;
    const h = readChunk(stored, what);
    let payload = h.payload;
    if (h.flags & FLAG_ENCRYPTED) {
      if (!this.keys) throw new HavenError('CORRUPT', `${what} is encrypted in an unencrypted repository`);
      payload = decrypt(this.keys, digest, payload, what);
    } else if (this.keys)
      throw new HavenError('CORRUPT', `${what} is not encrypted in an encrypted repository`);
    let plain: Buffer;
    try {
      plain = h.flags & FLAG_ZSTD ? this.decompressor.decompress(payload) : payload;
    } catch (err) {
      throw new HavenError('CORRUPT', `${what}: cannot decompress: ${(err as Error).message}`);
    }
    if (plain.length !== h.plainLength)
      throw new HavenError('CORRUPT', `${what}: ${plain.length} bytes where ${h.plainLength} were stored`);
    if (!this.digest(plain).equals(digest))
      throw new HavenError('CORRUPT', `${what}: content does not match its digest`);
    return plain;
  }
}
