import { readFileSync } from 'node:fs';
import { crc32 } from 'node:zlib';
import { HavenError, invalidArgument, writeFileAtomic } from '../common/index.js';
import type { BitmapView, Extent } from './device.js';

const MAGIC = 0x4d425648; // "HVBM"
const VERSION = 1;
const HEADER = 28; // magic, version, granularity, flags, size (u64), name length (u16), pad (u16)
const MAX_EXTENTS = 1024;
const FLAG_ENABLED = 1;
const FLAG_INCONSISTENT = 2;

/**
 * A named dirty bitmap (changed-block tracking): one bit per `granularity` bytes of a disk,
 * set when anything in that range is written. Memory: size / granularity / 8 bytes — 2 MiB per
 * TiB at 64 KiB granularity, 32 MiB per TiB at 4 KiB.
 *
 * `inconsistent` means the bitmap may have missed writes (it was in use when its owner crashed):
 * it must not be trusted, and the next backup reads everything.
 */
export class DirtyBitmap implements BitmapView {
  enabled: boolean;
  inconsistent = false;
  private words: Uint32Array;
  private readonly shift: number;

  constructor(
    readonly name: string,
    private sizeBytes: number,
    readonly granularity = 65536,
    opts: { enabled?: boolean } = {},
  ) {
    if (
      !Number.isInteger(granularity) ||
      granularity < 512 ||
      granularity > 2 ** 30 ||
      (granularity & (granularity - 1)) !== 0
    )
      throw invalidArgument(
        `bitmap granularity ${granularity} must be a power of two from 512 bytes to 1 GiB`,
      );
    if (!Number.isSafeInteger(sizeBytes) || sizeBytes < 0)
      throw invalidArgument(`bitmap size ${sizeBytes} is not valid`);
    if (!name || Buffer.byteLength(name) > 1023)
      throw invalidArgument('a bitmap needs a name of 1 to 1023 bytes');
    this.shift = Math.log2(granularity);
    this.words = new Uint32Array(Math.ceil(this.bits / 32));
    this.enabled = opts.enabled ?? true;
  }

  get size(): number {
    return this.sizeBytes;
  }

  private get bits(): number {
    return Math.ceil(this.sizeBytes / this.granularity);
  }

  /** Marks every granule touched by [offset, offset+length) — unless the bitmap is disabled. */
  markDirty(offset: number, length: number): void {
    if (!this.enabled || length <= 0) return;
    this.setRange(offset, length);
  }

  /** Marks a range whatever the enabled flag says (merging, growing). */
  private setRange(offset: number, length: number): void {
    const first = Math.floor(offset / this.granularity);
    const last = Math.min(Math.floor((offset + length - 1) / this.granularity), this.bits - 1);
    let b = first;
    while (b <= last) {
      const w = b >>> 5;
      const bit = b & 31;
      if (bit === 0 && last - b >= 31) {
        this.words[w] = 0xffffffff;
        b += 32;
      } else {
        this.words[w]! |= 1 << bit;
        b++;
      }
    }
  }

  isDirty(offset: number): boolean {
    const b = Math.floor(offset / this.granularity);
    return (this.words[b >>> 5]! & (1 << (b & 31))) !== 0;
  }

  clear(): void {
    this.words.fill(0);
    this.inconsistent = false;
  }

  /** Adds another bitmap's dirty ranges (same size and granularity) to this one. */
  merge(other: DirtyBitmap): void {
    if (other.granularity !== this.granularity || other.size !== this.size)
      throw invalidArgument(
        `cannot merge bitmap ${other.name} (${other.size} bytes at ${other.granularity}) into ${this.name} (${this.size} bytes at ${this.granularity})`,
      );
    for (let i = 0; i < this.words.length; i++) this.words[i]! |= other.words[i]!;
    this.inconsistent ||= other.inconsistent;
  }

  /** Grows with the disk; the new part counts as dirty (a backup must read it). */
  resize(size: number): void {
    if (size < this.sizeBytes) throw invalidArgument(`bitmap ${this.name} cannot shrink`);
    const old = this.sizeBytes;
    this.sizeBytes = size;
    const words = new Uint32Array(Math.ceil(this.bits / 32));
    words.set(this.words);
    this.words = words;
    if (size > old) this.setRange(old, size - old);
  }

  copy(name: string): DirtyBitmap {
    const c = new DirtyBitmap(name, this.sizeBytes, this.granularity, { enabled: this.enabled });
    c.words.set(this.words);
    c.inconsistent = this.inconsistent;
    return c;
  }

  /** Dirty byte ranges in order, merged (the last may extend past the size to a granule end: clipped). */
  *dirtyExtents(): Generator<{ offset: number; length: number }> {
    let runStart = -1;
    const words = this.words;
    const bits = this.bits;
    for (let w = 0; w < words.length; w++) {
      const word = words[w]!;
      if (word === 0 && runStart < 0) continue;
      if (word === 0xffffffff && runStart >= 0) continue;
      for (let bit = 0; bit < 32; bit++) {
        const b = w * 32 + bit;
        if (b >= bits) break;
        const set = (word & (1 << bit)) !== 0;
        if (set && runStart < 0) runStart = b;
        else if (!set && runStart >= 0) {
          yield this.range(runStart, b);
          runStart = -1;
        }
      }
    }
    if (runStart >= 0) yield this.range(runStart, bits);
  }

  dirtyBytes(): number {
    let n = 0;
    for (const e of this.dirtyExtents()) n += e.length;
    return n;
  }

  /** BitmapView: extents from `offset`, flags 1 dirty / 0 clean, within `length`. */
  status(offset: number, length: number): Extent[] {
    const end = Math.min(offset + length, this.sizeBytes);
    const out: Extent[] = [];
    let pos = offset;
    while (pos < end && out.length < MAX_EXTENTS) {
      const b = Math.floor(pos / this.granularity);
      const dirty = (this.words[b >>> 5]! & (1 << (b & 31))) !== 0;
      let next = b + 1;
      // Skip whole words of the same state quickly.
      while (next * this.granularity < end) {
        const w = next >>> 5;
        if ((next & 31) === 0 && this.words[w] === (dirty ? 0xffffffff : 0)) {
          next += 32;
          continue;
        }
        if (((this.words[w]! & (1 << (next & 31))) !== 0) !== dirty) break;
        next++;
      }
      const stop = Math.min(next * this.granularity, end);
      out.push({ offset: pos, length: stop - pos, flags: dirty ? 1 : 0 });
      pos = stop;
    }
    return out;
  }

  private range(fromBit: number, toBit: number): { offset: number; length: number } {
    const offset = fromBit * this.granularity;
    return { offset, length: Math.min(toBit * this.granularity, this.sizeBytes) - offset };
  }

  // ---- persistence -----------------------------------------------------------------------

  serialize(): Buffer {
    const name = Buffer.from(this.name, 'utf8');
    const body = Buffer.from(this.words.buffer, this.words.byteOffset, this.words.byteLength);
    const buf = Buffer.alloc(HEADER + name.length + body.length + 4);
    buf.writeUInt32LE(MAGIC, 0);
    buf.writeUInt32LE(VERSION, 4);
    buf.writeUInt32LE(this.granularity, 8);
    buf.writeUInt32LE((this.enabled ? FLAG_ENABLED : 0) | (this.inconsistent ? FLAG_INCONSISTENT : 0), 12);
    buf.writeBigUInt64LE(BigInt(this.sizeBytes), 16);
    buf.writeUInt16LE(name.length, 24);
    name.copy(buf, HEADER);
    body.copy(buf, HEADER + name.length);
    buf.writeUInt32LE(crc32(buf.subarray(0, buf.length - 4)), buf.length - 4);
    return buf;
  }

  static deserialize(buf: Buffer, what = 'bitmap'): DirtyBitmap {
    const bad = (why: string) => new HavenError('CORRUPT', `${what} is damaged: ${why}`);
    if (buf.length < HEADER + 4) throw bad('too short');
    if (buf.readUInt32LE(0) !== MAGIC) throw bad('bad magic');
    if (buf.readUInt32LE(4) !== VERSION) throw bad(`unknown version ${buf.readUInt32LE(4)}`);
    if (crc32(buf.subarray(0, buf.length - 4)) !== buf.readUInt32LE(buf.length - 4))
      throw bad('checksum mismatch');
    const granularity = buf.readUInt32LE(8);
    const flags = buf.readUInt32LE(12);
    const size = Number(buf.readBigUInt64LE(16));
    const nameLen = buf.readUInt16LE(24);
    const name = buf.toString('utf8', HEADER, HEADER + nameLen);
    const bm = new DirtyBitmap(name, size, granularity, { enabled: (flags & FLAG_ENABLED) !== 0 });
    const body = buf.subarray(HEADER + nameLen, buf.length - 4);
    if (body.length !== bm.words.byteLength)
      throw bad(`holds ${body.length} bytes of bits, expected ${bm.words.byteLength}`);
    Buffer.from(bm.words.buffer).set(body);
    bm.inconsistent = (flags & FLAG_INCONSISTENT) !== 0;
    return bm;
  }

  save(path: string): void {
    writeFileAtomic(path, this.serialize());
  }

  static load(path: string): DirtyBitmap {
    return DirtyBitmap.deserialize(readFileSync(path), `bitmap file ${path}`);
  }
}
