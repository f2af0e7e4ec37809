import { HavenError } from '../../common/index.js';
import * as P from '../protocol.js';

/** Encoders for what the server sends. Each returns one buffer holding the whole message. */

export function optionReply(option: number, type: number, data?: Buffer): Buffer {
  const len = data?.length ?? 0;
  const b = Buffer.allocUnsafe(20 + len);
  b.writeBigUInt64BE(P.OPTION_REPLY_MAGIC, 0);
  b.writeUInt32BE(option, 8);
  b.writeUInt32BE(type >>> 0, 12);
  b.writeUInt32BE(len, 16);
  data?.copy(b, 20);
  return b;
}

export function optionError(option: number, type: number, message: string): Buffer {
  return optionReply(option, type, Buffer.from(message.slice(0, P.MAX_STRING), 'utf8'));
}

/** NBD_REP_INFO payload for NBD_INFO_EXPORT. */
export function infoExport(size: number, flags: number): Buffer {
  const b = Buffer.allocUnsafe(12);
  b.writeUInt16BE(P.INFO_EXPORT, 0);
  b.writeBigUInt64BE(BigInt(size), 2);
  b.writeUInt16BE(flags, 10);
  return b;
}

export function infoBlockSize(min: number, preferred: number, max: number): Buffer {
  const b = Buffer.allocUnsafe(14);
  b.writeUInt16BE(P.INFO_BLOCK_SIZE, 0);
  b.writeUInt32BE(min, 2);
  b.writeUInt32BE(preferred, 6);
  b.writeUInt32BE(max, 10);
  return b;
}

export function infoString(type: number, s: string): Buffer {
  const str = Buffer.from(s, 'utf8');
  const b = Buffer.allocUnsafe(2 + str.length);
  b.writeUInt16BE(type, 0);
  str.copy(b, 2);
  return b;
}

export function metaContextReply(id: number, name: string): Buffer {
  const str = Buffer.from(name, 'utf8');
  const b = Buffer.allocUnsafe(4 + str.length);
  b.writeUInt32BE(id, 0);
  str.copy(b, 4);
  return b;
}

export const SIMPLE_HEADER = 16;
export const CHUNK_HEADER = 20;

export function writeSimpleHeader(b: Buffer, at: number, error: number, cookie: Buffer): void {
  b.writeUInt32BE(P.SIMPLE_REPLY_MAGIC, at);
  b.writeUInt32BE(error, at + 4);
  cookie.copy(b, at + 8, 0, 8);
}

export function writeChunkHeader(
  b: Buffer,
  at: number,
  flags: number,
  type: number,
  cookie: Buffer,
  length: number,
): void {
  b.writeUInt32BE(P.STRUCTURED_REPLY_MAGIC, at);
  b.writeUInt16BE(flags, at + 4);
  b.writeUInt16BE(type, at + 6);
  cookie.copy(b, at + 8, 0, 8);
  b.writeUInt32BE(length, at + 16);
}

export function simpleReply(error: number, cookie: Buffer): Buffer {
  const b = Buffer.allocUnsafe(SIMPLE_HEADER);
  writeSimpleHeader(b, 0, error, cookie);
  return b;
}

export function errorChunk(cookie: Buffer, error: number, message: string): Buffer {
  const msg = Buffer.from(message.slice(0, 512), 'utf8');
  const b = Buffer.allocUnsafe(CHUNK_HEADER + 6 + msg.length);
  writeChunkHeader(b, 0, P.REPLY_FLAG_DONE, P.REPLY_TYPE_ERROR, cookie, 6 + msg.length);
  b.writeUInt32BE(error, CHUNK_HEADER);
  b.writeUInt16BE(msg.length, CHUNK_HEADER + 4);
  msg.copy(b, CHUNK_HEADER + 6);
  return b;
}

/** The NBD error number for a failure of a device operation. */
export function errnoFor(err: unknown, isWrite: boolean): number {
  if (!(err instanceof HavenError)) return P.EIO;
  switch (err.code) {
    case 'READ_ONLY':
      return P.EPERM;
    case 'OUT_OF_RANGE':
      return isWrite ? P.ENOSPC : P.EINVAL;
    case 'INVALID_ARGUMENT':
      return P.EINVAL;
    case 'NO_SPACE':
      return P.ENOSPC;
    case 'UNSUPPORTED':
      return P.ENOTSUP;
    default:
      return P.EIO;
  }
}

/** Reads a 64-bit big-endian offset; undefined when it is not exactly representable (≥ 2^53). */
export function readOffset(b: Buffer, at: number): number | undefined {
  const hi = b.readUInt32BE(at);
  if (hi >= 0x200000) return undefined;
  return hi * 0x100000000 + b.readUInt32BE(at + 4);
}
