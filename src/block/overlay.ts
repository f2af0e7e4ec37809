import {
  closeSync,
  existsSync,
  fdatasyncSync,
  fstatSync,
  ftruncateSync,
  mkdirSync,
  openSync,
  readFileSync,
  rmSync,
  writeSync,
} from 'node:fs';
import { join } from 'node:path';
import { crc32 } from 'node:zlib';
import {
  HavenError,
  invalidArgument,
  isPromise,
  outOfRange,
  writeFileAtomic,
  type MaybePromise,
} from '../common/index.js';
import {
  DEFAULT_BLOCK_SIZES,
  checkRange,
  EXTENT_HOLE,
  EXTENT_ZERO,
  type BlockDevice,
  type Extent,
  type WriteFlags,
  type ZeroFlags,
} from './device.js';
import { openRawFile, type RawFileDevice } from './raw-file.js';

const BASE = 0;
const OVERLAY = 1;
const ZERO = 2;
const MAP_MAGIC = 0x50414d4f; // "OMAP"
const MAP_HEADER = 32;
const COMPACT_JOURNAL_BYTES = 4 * 1024 * 1024;

/**
 * A copy-on-write overlay ("differencing disk") over a read-only base device: writes go to the
 * overlay, reads fall through to the base wherever the overlay holds nothing. The base is never
 * written. Files in `dir`:
 *
 * - `data`: sparse, same offsets as the disk; holds the clusters the overlay owns.
 * - `map`: one byte per cluster (base / overlay / zero) with a header and CRC — rewritten whole
 *   only on compaction. Memory and disk: size / clusterSize bytes (16 MiB per TiB at 64 KiB).
 * - `journal`: the map changes since, appended one batch per flush: u32 count, count × (u32 hi,
 *   u32 lo cluster, u8 state), u32 CRC of the batch. A torn last batch (crash) is ignored.
 *
 * Durability: a flush (or FUA) syncs `data`, then appends and syncs the journal batch. A cluster
 * whose map change was not flushed reads after a crash as it did before that change — the guest
 * never got an acknowledgement for it — and never as anything else.
 */
export class OverlayDevice implements BlockDevice {
  readonly readOnly = false;
  readonly flushCoversAll = true;
  readonly blockSizes = DEFAULT_BLOCK_SIZES;
  readonly size: number;
  private readonly clusters: number;
  private readonly dirty = new Set<number>();
  private journalBytes: number;
  private readonly scratch: Buffer;
  /** Clusters whose base data is being fetched for copy on write (the base may be asynchronous). */
  private readonly cowInFlight = new Map<number, Promise<void>>();
  private closed = false;

  private constructor(
    readonly dir: string,
    private readonly base: BlockDevice,
    readonly clusterSize: number,
    private readonly map: Uint8Array,
    private readonly data: RawFileDevice,
    private readonly journalFd: number,
  ) {
    this.size = base.size;
    this.clusters = Math.ceil(this.size / clusterSize);
    this.journalBytes = fstatSync(journalFd).size;
    this.scratch = Buffer.alloc(clusterSize);
  }

  static create(dir: string, base: BlockDevice, opts: { clusterSize?: number } = {}): OverlayDevice {
    const cs = opts.clusterSize ?? 65536;
    if (!Number.isInteger(cs) || cs < 4096 || cs > 4 * 1024 * 1024 || (cs & (cs - 1)) !== 0)
      throw invalidArgument(`overlay cluster size ${cs} must be a power of two from 4 KiB to 4 MiB`);
    mkdirSync(dir, { recursive: true });
    if (existsSync(join(dir, 'map'))) throw new HavenError('CONFLICT', `an overlay already exists in ${dir}`);
    const data = join(dir, 'data');
    const fd = openSync(data, 'w');
    ftruncateSync(fd, base.size);
    closeSync(fd);
    const map = new Uint8Array(Math.ceil(base.size / cs));
    writeFileAtomic(join(dir, 'map'), encodeMap(map, cs, base.size));
    return OverlayDevice.open(dir, base);
  }

  static open(dir: string, base: BlockDevice): OverlayDevice {
    const { map, clusterSize, size } = decodeMap(readFileSync(join(dir, 'map')), dir);
    if (size !== base.size)
      throw invalidArgument(`overlay ${dir} was made over a base of ${size} bytes, not ${base.size}`);
    const journalPath = join(dir, 'journal');
    if (existsSync(journalPath)) replayJournal(readFileSync(journalPath), map);
    const journalFd = openSync(journalPath, 'a');
    // Synchronous data file: copy on write and map updates must follow each write at once.
    return new OverlayDevice(
      dir,
      base,
      clusterSize,
      map,
      openRawFile(join(dir, 'data'), { threadPool: false }),
      journalFd,
    );
  }

  /** Clusters the overlay owns (data or zeroes), i.e. what a commit would write. */
  allocatedClusters(): number {
    let n = 0;
    for (const s of this.map) if (s !== BASE) n++;
    return n;
  }

  read(buf: Uint8Array, offset: number): MaybePromise<void> {
    this.check(offset, buf.length);
    const pending: Promise<void>[] = [];
    this.runs(offset, buf.length, (state, pos, len) => {
      const view = buf.subarray(pos - offset, pos - offset + len);
      if (state === ZERO) view.fill(0);
      else if (state === OVERLAY) {
        const r = this.data.read(view, pos);
        if (isPromise(r)) pending.push(r);
      } else {
        const r = this.base.read(view, pos);
        if (isPromise(r)) pending.push(r);
      }
    });
    if (pending.length) return Promise.all(pending).then(() => undefined);
  }

  write(data: Uint8Array | readonly Uint8Array[], offset: number, flags?: WriteFlags): MaybePromise<void> {
    const buf = Array.isArray(data) ? Buffer.concat(data as readonly Uint8Array[]) : (data as Uint8Array);
    this.check(offset, buf.length);
    const cs = this.clusterSize;
    const first = Math.floor(offset / cs);
    const last = Math.floor((offset + buf.length - 1) / cs);
    // A write to a cluster whose copy-on-write is under way waits for it, then starts over.
    const waits: Promise<void>[] = [];
    for (let c = first; c <= last && buf.length > 0; c++) {
      const w = this.cowInFlight.get(c);
      if (w) waits.push(w);
    }
    if (waits.length) return Promise.all(waits).then(() => this.write(buf, offset, flags));
    // Partial writes over base clusters need the base's data first (copy on write).
    const cow: number[] = [];
    for (let c = first; c <= last && buf.length > 0; c++) {
      const start = Math.max(offset, c * cs);
      const end = Math.min(offset + buf.length, (c + 1) * cs, this.size);
      const whole = start === c * cs && end === Math.min((c + 1) * cs, this.size);
      if (this.map[c] === BASE && !whole) cow.push(c);
    }
    const finish = () => {
      this.writeClusters(buf, offset);
      if (flags?.fua) this.flush();
    };
    // Synchronously while the base answers synchronously; from the first promise on, the rest
    // of the copy runs asynchronously with its own buffer, its clusters marked in flight.
    for (let i = 0; i < cow.length; i++) {
      const c = cow[i]!;
      const len = Math.min(cs, this.size - c * cs);
      const r = this.base.read(this.scratch.subarray(0, len), c * cs);
      if (!isPromise(r)) {
        this.copyUp(c, this.scratch.subarray(0, len));
        continue;
      }
      const rest = cow.slice(i);
      const own = Buffer.alloc(cs);
      const run = (async () => {
        for (const [j, cc] of rest.entries()) {
          const l = Math.min(cs, this.size - cc * cs);
          if (j === 0) {
            // The first read went into the shared scratch buffer: re-read into our own.
            await r;
          }
          await this.base.read(own.subarray(0, l), cc * cs);
          this.copyUp(cc, own.subarray(0, l));
        }
        finish();
      })();
      const done = run.catch(() => undefined);
      // Every cluster of this write is in flight, so a later overlapping write lands after it.
      for (let cc = first; cc <= last; cc++) this.cowInFlight.set(cc, done);
      void done.then(() => {
        for (let cc = first; cc <= last; cc++)
          if (this.cowInFlight.get(cc) === done) this.cowInFlight.delete(cc);
      });
      return run;
    }
    finish();
  }

  /** Puts a base cluster's data into the overlay (the first step of copy on write). */
  private copyUp(c: number, data: Uint8Array): void {
    if (this.map[c] !== BASE) return;
    this.data.write(data, c * this.clusterSize);
    this.setState(c, OVERLAY);
  }

  flush(): void {
    this.data.flush();
    if (this.dirty.size === 0) return;
    const n = this.dirty.size;
    const batch = Buffer.alloc(4 + n * 9 + 4);
    batch.writeUInt32LE(n, 0);
    let at = 4;
    for (const c of this.dirty) {
      batch.writeUInt32LE(Math.floor(c / 0x100000000), at);
      batch.writeUInt32LE(c >>> 0, at + 4);
      batch[at + 8] = this.map[c]!;
      at += 9;
    }
    batch.writeUInt32LE(crc32(batch.subarray(0, at)), at);
    let done = 0;
    while (done < batch.length) done += writeSync(this.journalFd, batch, done);
    fdatasyncSync(this.journalFd);
    this.journalBytes += batch.length;
    this.dirty.clear();
    if (this.journalBytes > COMPACT_JOURNAL_BYTES) this.compact();
  }

  trim(offset: number, length: number, flags?: WriteFlags): MaybePromise<void> {
    return this.writeZeroes(offset, length, flags);
  }

  writeZeroes(offset: number, length: number, flags?: ZeroFlags): MaybePromise<void> {
    this.check(offset, length);
    if (length === 0) return;
    const cs = this.clusterSize;
    let pos = offset;
    const partial: [number, number][] = [];
    while (pos < offset + length) {
      const c = Math.floor(pos / cs);
      const end = Math.min((c + 1) * cs, offset + length, this.size);
      if (pos === c * cs && end === Math.min((c + 1) * cs, this.size) && !this.cowInFlight.has(c)) {
        if (this.map[c] === OVERLAY) this.data.writeZeroes(c * cs, end - pos); // give the space back
        this.setState(c, ZERO);
      } else partial.push([pos, end - pos]);
      pos = end;
    }
    const writes = partial.map(([p, l]) => this.write(Buffer.alloc(l), p));
    const after = () => {
      if (flags?.fua) this.flush();
    };
    if (writes.some(isPromise)) return Promise.all(writes).then(after);
    after();
  }

  blockStatus(offset: number, length: number): MaybePromise<Extent[]> {
    this.check(offset, Math.min(length, 1));
    const cs = this.clusterSize;
    const end = Math.min(offset + length, this.size);
    const c0 = Math.floor(offset / cs);
    const state = this.map[c0]!;
    let c = c0 + 1;
    while (c * cs < end && this.map[c] === state) c++;
    const runEnd = Math.min(c * cs, end);
    if (state === BASE) return this.base.blockStatus(offset, runEnd - offset);
    return [{ offset, length: runEnd - offset, flags: state === ZERO ? EXTENT_HOLE | EXTENT_ZERO : 0 }];
  }

  /**
   * Merges the overlay into `target` (the base's writable counterpart, or any device of the same
   * size): every cluster the overlay owns is written (or zeroed), then the target is flushed and
   * what was written is read back and compared.
   */
  async commit(
    target: BlockDevice,
    opts: { onProgress?: (done: number, total: number) => void } = {},
  ): Promise<void> {
    if (target.size < this.size)
      throw outOfRange(`commit target holds ${target.size} bytes, the overlay ${this.size}`);
    await Promise.all(this.cowInFlight.values());
    const cs = this.clusterSize;
    const total = this.allocatedClusters();
    const buf = Buffer.alloc(cs);
    const back = Buffer.alloc(cs);
    let done = 0;
    for (let c = 0; c < this.clusters; c++) {
      const state = this.map[c];
      if (state === BASE) continue;
      const start = c * cs;
      const len = Math.min(cs, this.size - start);
      if (state === ZERO) await target.writeZeroes(start, len);
      else {
        await this.data.read(buf.subarray(0, len), start);
        await target.write(buf.subarray(0, len), start);
      }
      opts.onProgress?.(++done, total);
    }
    await target.flush();
    for (let c = 0; c < this.clusters; c++) {
      const state = this.map[c];
      if (state === BASE) continue;
      const start = c * cs;
      const len = Math.min(cs, this.size - start);
      await target.read(back.subarray(0, len), start);
      if (state === ZERO) buf.fill(0, 0, len);
      else await this.data.read(buf.subarray(0, len), start);
      if (!back.subarray(0, len).equals(buf.subarray(0, len)))
        throw new HavenError(
          'CORRUPT',
          `commit verification failed: the target differs from the overlay at offset ${start}`,
        );
    }
  }

  /** Closes the overlay and deletes its files: every change is dropped. */
  discard(): void {
    this.closeFiles();
    rmSync(this.dir, { recursive: true, force: true });
  }

  close(): void {
    if (this.closed) return;
    this.flush();
    this.closeFiles();
  }

  // ---- internals -------------------------------------------------------------------------

  private closeFiles(): void {
    if (this.closed) return;
    this.closed = true;
    this.data.close();
    closeSync(this.journalFd);
  }

  /** Writes whole or partial clusters that need nothing from the base. */
  private writeClusters(buf: Uint8Array, offset: number): void {
    const cs = this.clusterSize;
    let pos = offset;
    const end = offset + buf.length;
    while (pos < end) {
      const c = Math.floor(pos / cs);
      const stop = Math.min((c + 1) * cs, end);
      if (this.map[c] === ZERO && (pos !== c * cs || stop !== Math.min((c + 1) * cs, this.size))) {
        // A partial write into a zeroed cluster: the rest of the cluster must read as zeroes.
        this.data.writeZeroes(c * cs, Math.min(cs, this.size - c * cs), { noHole: false });
      }
      this.data.write(buf.subarray(pos - offset, stop - offset), pos);
      this.setState(c, OVERLAY);
      pos = stop;
    }
  }

  private setState(c: number, state: number): void {
    if (this.map[c] === state) return;
    this.map[c] = state;
    this.dirty.add(c);
  }

  /** Calls fn for each run of clusters in the same state, clipped to [offset, offset+length). */
  private runs(offset: number, length: number, fn: (state: number, pos: number, len: number) => void): void {
    const cs = this.clusterSize;
    const end = offset + length;
    let pos = offset;
    while (pos < end) {
      const c = Math.floor(pos / cs);
      const state = this.map[c]!;
      let next = c + 1;
      while (next * cs < end && this.map[next] === state) next++;
      const stop = Math.min(next * cs, end);
      fn(state, pos, stop - pos);
      pos = stop;
    }
  }

  private compact(): void {
    writeFileAtomic(join(this.dir, 'map'), encodeMap(this.map, this.clusterSize, this.size));
    ftruncateSync(this.journalFd, 0);
    fdatasyncSync(this.journalFd);
    this.journalBytes = 0;
  }

  private check(offset: number, length: number): void {
    if (this.closed) throw new HavenError('CONFLICT', `overlay ${this.dir} is closed`);
    checkRange(offset, length, this.size, 'the overlay');
  }
}

function encodeMap(map: Uint8Array, clusterSize: number, size: number): Buffer {
  const buf = Buffer.alloc(MAP_HEADER + map.length + 4);
  buf.writeUInt32LE(MAP_MAGIC, 0);
  buf.writeUInt32LE(1, 4);
  buf.writeUInt32LE(clusterSize, 8);
  buf.writeBigUInt64LE(BigInt(size), 16);
  Buffer.from(map.buffer, map.byteOffset, map.length).copy(buf, MAP_HEADER);
  buf.writeUInt32LE(crc32(buf.subarray(0, buf.length - 4)), buf.length - 4);
  return buf;
}

function decodeMap(buf: Buffer, dir: string): { map: Uint8Array; clusterSize: number; size: number } {
  const bad = (why: string) => new HavenError('CORRUPT', `overlay map in ${dir} is damaged: ${why}`);
  if (buf.length < MAP_HEADER + 4 || buf.readUInt32LE(0) !== MAP_MAGIC) throw bad('bad magic');
  if (crc32(buf.subarray(0, buf.length - 4)) !== buf.readUInt32LE(buf.length - 4))
    throw bad('checksum mismatch');
  const clusterSize = buf.readUInt32LE(8);
  const size = Number(buf.readBigUInt64LE(16));
  const map = new Uint8Array(buf.subarray(MAP_HEADER, buf.length - 4));
  if (map.length !== Math.ceil(size / clusterSize)) throw bad('map length does not match the size');
  return { map, clusterSize, size };
}

function replayJournal(buf: Buffer, map: Uint8Array): void {
  let at = 0;
  while (at + 4 <= buf.length) {
    const n = buf.readUInt32LE(at);
    const end = at + 4 + n * 9;
    if (end + 4 > buf.length || crc32(buf.subarray(at, end)) !== buf.readUInt32LE(end)) return; // torn: ignore the rest
    for (let p = at + 4; p < end; p += 9) {
      const c = buf.readUInt32LE(p) * 0x100000000 + buf.readUInt32LE(p + 4);
      const state = buf[p + 8]!;
      if (c < map.length && state <= ZERO) map[c] = state;
    }
    at = end + 4;
  }
}
