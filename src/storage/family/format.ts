import { crc32 } from 'node:zlib';
import { HavenError } from '../../common/index.js';

/**
 * On-disk layout of a volume family's `meta` file (see docs/decisions/0003-volume-format.md):
 *
 *   [superblock slot 0: SUPERBLOCK_SIZE][superblock slot 1: SUPERBLOCK_SIZE][page 0][page 1]…
 *
 * Tree page (PAGE_SIZE bytes): magic u32 | level u8 | 3 reserved | birth u32 | crc32 u32 |
 * FANOUT entries of 8 bytes (lo u32, hi u32). An entry's pointer is 40 bits (lo + low 8 bits of
 * hi); its birth generation the top 24 bits of hi. Pointer 0 means "nothing": no child page, or
 * an unallocated (zero) cluster. Page numbers and cluster numbers start at 1 for that reason.
 *
 * All integers are little-endian.
 */
export const PAGE_SIZE = 4096;
export const PAGE_HEADER = 16;
export const FANOUT = (PAGE_SIZE - PAGE_HEADER) / 8; // 510
export const PAGE_MAGIC = 0x444e5648; // "HVND"
export const SUPERBLOCK_SIZE = 256 * 1024;
export const SUPERBLOCK_MAGIC = 0x42535648; // "HVSB"
export const SUPERBLOCK_HEADER = 24;
export const FORMAT_VERSION = 1;
export const META_DATA_START = 2 * SUPERBLOCK_SIZE;
export const MAX_POINTER = 2 ** 40 - 1;
export const MAX_GENERATION = 2 ** 24 - 1;

export const pageOffset = (page: number) => META_DATA_START + (page - 1) * PAGE_SIZE;

export function entryPointer(entries: Uint32Array, i: number): number {
  return entries[2 * i]! + (entries[2 * i + 1]! & 0xff) * 0x100000000;
}

export function entryBirth(entries: Uint32Array, i: number): number {
  return entries[2 * i + 1]! >>> 8;
}

export function setEntry(entries: Uint32Array, i: number, pointer: number, birth: number): void {
  entries[2 * i] = pointer >>> 0;
  entries[2 * i + 1] = (Math.floor(pointer / 0x100000000) & 0xff) | (birth << 8);
}

/** Tree depth needed for `clusters` logical clusters (at least 1). */
export function depthFor(clusters: number): number {
  let depth = 1;
  let span = FANOUT;
  while (span < clusters) {
    span *= FANOUT;
    depth++;
  }
  return depth;
}

export function encodePage(buf: Buffer, level: number, birth: number, entries: Uint32Array): void {
  buf.writeUInt32LE(PAGE_MAGIC, 0);
  buf.writeUInt8(level, 4);
  buf.fill(0, 5, 8);
  buf.writeUInt32LE(birth, 8);
  Buffer.from(entries.buffer, entries.byteOffset, entries.byteLength).copy(buf, PAGE_HEADER);
  buf.writeUInt32LE(crc32(buf.subarray(PAGE_HEADER)), 12);
}

export function decodePage(
  buf: Buffer,
  page: number,
  what: string,
): { level: number; birth: number; entries: Uint32Array } {
  if (buf.readUInt32LE(0) !== PAGE_MAGIC || buf.readUInt32LE(12) !== crc32(buf.subarray(PAGE_HEADER)))
    throw new HavenError('CORRUPT', `${what}: metadata page ${page} is damaged (bad magic or checksum)`);
  const entries = new Uint32Array(FANOUT * 2);
  Buffer.from(entries.buffer).set(buf.subarray(PAGE_HEADER, PAGE_SIZE));
  return { level: buf.readUInt8(4), birth: buf.readUInt32LE(8), entries };
}

/** A member of a family: a writable volume, a read-only snapshot, or a clone (writable). */
export interface MemberRecord {
  id: string;
  name: string;
  kind: 'volume' | 'snapshot';
  size: number;
  /** Root page of the mapping tree (0: empty tree) and the root's birth generation. */
  rootPage: number;
  rootBirth: number;
  depth: number;
  /** Generation new allocations of this member are born in (writable members only). */
  writeGen: number;
  /** For a snapshot: the member it was taken of. For a clone: the snapshot it was made from. */
  parent?: string;
  createdAt: string;
  /** Free-form labels (e.g. which VM a volume belongs to). */
  labels?: Record<string, string>;
}

export interface Superblock {
  version: number;
  seq: number;
  clusterSize: number;
  /** Next generation to hand out. */
  nextGen: number;
  /** High-water marks: pages and clusters ever used are below these. */
  pageHighWater: number;
  clusterHighWater: number;
  members: MemberRecord[];
}

export function encodeSuperblock(sb: Superblock): Buffer {
  const json = Buffer.from(JSON.stringify(sb), 'utf8');
  if (json.length + SUPERBLOCK_HEADER > SUPERBLOCK_SIZE)
    throw new HavenError(
      'NO_SPACE',
      `volume family has too many members for its superblock (${sb.members.length})`,
    );
  const buf = Buffer.alloc(SUPERBLOCK_HEADER + json.length);
  buf.writeUInt32LE(SUPERBLOCK_MAGIC, 0);
  buf.writeUInt32LE(FORMAT_VERSION, 4);
  buf.writeUInt32LE(sb.seq % 0x100000000, 8);
  buf.writeUInt32LE(Math.floor(sb.seq / 0x100000000), 12);
  buf.writeUInt32LE(json.length, 16);
  buf.writeUInt32LE(crc32(json), 20);
  json.copy(buf, SUPERBLOCK_HEADER);
  return buf;
}

/** Returns the superblock in `buf`, or undefined when the slot is empty or torn. */
export function decodeSuperblock(buf: Buffer): Superblock | undefined {
  if (buf.length < SUPERBLOCK_HEADER || buf.readUInt32LE(0) !== SUPERBLOCK_MAGIC) return undefined;
  if (buf.readUInt32LE(4) !== FORMAT_VERSION) return undefined;
  const len = buf.readUInt32LE(16);
  if (len > SUPERBLOCK_SIZE - SUPERBLOCK_HEADER || SUPERBLOCK_HEADER + len > buf.length) return undefined;
  const json = buf.subarray(SUPERBLOCK_HEADER, SUPERBLOCK_HEADER + len);
  if (crc32(json) !== buf.readUInt32LE(20)) return undefined;
  return JSON.parse(json.toString('utf8')) as Superblock;
}
