import { crc32 } from 'node:zlib';

/**
 * One record of a replication journal, on disk (little-endian):
 *
 *   0  magic 'HVRJ'       4  CRC-32 of bytes 8.. and the payload
 *   8  record length (header + payload)
 *  12  kind                13  flags (0)       14  volume number (u16)
 *  16  sequence (u64)      24  offset (u64)    32  length covered (u32)   36  payload length (u32)
 *  40  payload: the written bytes (write, resync), or UTF-8 JSON (checkpoint, mark)
 *
 * A torn tail (a crash mid-append) fails its CRC or its length: replay ends there.
 */
export const RECORD_HEADER = 40;
const MAGIC = 0x4a525648; // 'HVRJ' little-endian

export const RecordKind = {
  /** Bytes written to a volume. */
  write: 1,
  /** A range trimmed or zeroed. */
  zero: 2,
  /**
   * A range whose content is whatever the volume held when it was read (a scan: initial sync,
   * resync, repair), with those bytes; or without a payload: the range must be read again (a
   * change failed part-way).
   */
  resync: 3,
  /** A group-wide consistent point: everything before it. Payload: { time, name? }. */
  checkpoint: 4,
  /** Anything else the gateway records in order (e.g. a state change). Payload: JSON. */
  mark: 5,
} as const;
export type RecordKind = (typeof RecordKind)[keyof typeof RecordKind];
const KINDS = new Set<number>(Object.values(RecordKind));

export interface RecordHeader {
  kind: RecordKind;
  volume: number;
  seq: number;
  offset: number;
  /** Bytes of the volume the record covers. */
  length: number;
  payloadLength: number;
  /** Header and payload. */
  recordLength: number;
}

const U32 = 0x1_0000_0000;

function putU64(b: Buffer, at: number, v: number): void {
  b.writeUInt32LE(v % U32, at);
  b.writeUInt32LE(Math.floor(v / U32), at + 4);
}
const getU64 = (b: Buffer, at: number) => b.readUInt32LE(at) + b.readUInt32LE(at + 4) * U32;

/** Fills `header` (RECORD_HEADER bytes) for a record with `payload` parts; returns the record's length. */
export function encodeHeader(
  header: Buffer,
  h: Omit<RecordHeader, 'payloadLength' | 'recordLength'>,
  payload: readonly Uint8Array[],
): number {
  let payloadLength = 0;
  for (const p of payload) payloadLength += p.length;
  const recordLength = RECORD_HEADER + payloadLength;
  header.writeUInt32LE(MAGIC, 0);
  header.writeUInt32LE(recordLength, 8);
  header[12] = h.kind;
  header[13] = 0;
  header.writeUInt16LE(h.volume, 14);
  putU64(header, 16, h.seq);
  putU64(header, 24, h.offset);
  header.writeUInt32LE(h.length, 32);
  header.writeUInt32LE(payloadLength, 36);
  let crc = crc32(header.subarray(8, RECORD_HEADER));
  for (const p of payload) crc = crc32(p, crc);
  header.writeUInt32LE(crc, 4);
  return recordLength;
}

/**
 * The header at the start of `b`, or undefined where no record starts (a torn or never written
 * tail: wrong magic, or a length that cannot be). The CRC is checked separately (checkRecord),
 * once the payload is read.
 */
export function decodeHeader(b: Buffer): RecordHeader | undefined {
  if (b.length < RECORD_HEADER || b.readUInt32LE(0) !== MAGIC) return undefined;
  const recordLength = b.readUInt32LE(8);
  const payloadLength = b.readUInt32LE(36);
  const kind = b[12]!;
  if (recordLength !== RECORD_HEADER + payloadLength || !KINDS.has(kind)) return undefined;
  return {
    kind: kind as RecordKind,
    volume: b.readUInt16LE(14),
    seq: getU64(b, 16),
    offset: getU64(b, 24),
    length: b.readUInt32LE(32),
    payloadLength,
    recordLength,
  };
}

/** Whether a whole record (header and payload, contiguous in `b`) is intact. */
export function recordIntact(b: Buffer): boolean {
  return crc32(b.subarray(8)) === b.readUInt32LE(4);
}

/** A checkpoint's payload. */
export interface CheckpointInfo {
  /** When it was taken (ms since the epoch). */
  time: number;
  name?: string;
}
