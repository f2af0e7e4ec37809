import {
  DEFAULT_BLOCK_SIZES,
  EXTENT_HOLE,
  EXTENT_ZERO,
  checkRange,
  type BlockDevice,
  type Extent,
} from '../../block/index.js';
import { HavenError, errorMessage } from '../../common/index.js';
import {
  GRANULE,
  PAGE_GRANULES,
  ZERO_DIGEST,
  type ChunkCodec,
  type DiskIndex,
  type Repository,
  type SnapshotManifest,
} from '../../repository/index.js';

export interface SnapshotDeviceOptions {
  /** Decoded chunks kept in memory (default 64: 16 MiB at 256 KiB chunks). */
  cacheChunks?: number;
  /** Chunks fetched ahead of a sequential reader (default 4). */
  readAhead?: number;
}

/**
 * One disk of a backup as a read-only block device, reading chunks straight from the repository:
 * each checked against its digest when it is fetched, kept in a small cache of decoded chunks,
 * and fetched ahead of a sequential reader. Zero granules cost nothing and report as holes. The
 * repository is only ever read. Memory is the cache (and a few index pages), whatever the disk size.
 */
export class SnapshotDevice implements BlockDevice {
  readonly readOnly = true;
  readonly flushCoversAll = true;
  readonly blockSizes = DEFAULT_BLOCK_SIZES;
  readonly chunkSize: number;
  readonly size: number;
  private readonly decoded = new Map<string, Buffer>(); // chunk digest → plaintext, in LRU order
  private readonly loading = new Map<string, Promise<Buffer>>();
  private readonly free: Buffer[] = [];
  private readonly cacheChunks: number;
  private readonly readAhead: number;
  private lastGranule = -2;

  private constructor(
    private readonly repo: Repository,
    readonly snapshot: SnapshotManifest,
    readonly disk: number,
    private readonly index: DiskIndex,
    private readonly codec: ChunkCodec,
    opts: SnapshotDeviceOptions,
  ) {
    this.chunkSize = index.chunkSize;
    this.size = index.size;
    this.cacheChunks = Math.max(2, opts.cacheChunks ?? 64);
    this.readAhead = Math.max(0, opts.readAhead ?? 4);
  }

  static async open(
    repo: Repository,
    snapshot: SnapshotManifest,
    disk = 0,
    opts: SnapshotDeviceOptions = {},
  ): Promise<SnapshotDevice> {
    if (!snapshot.disks[disk])
      throw new HavenError('NOT_FOUND', `snapshot ${snapshot.id} has no disk ${disk}`);
    const idx = await repo.openIndex(snapshot, disk);
    return new SnapshotDevice(repo, snapshot, disk, idx, repo.codec(), opts);
  }

  async read(buf: Uint8Array, offset: number): Promise<void> {
    checkRange(offset, buf.length, this.size, `backup ${this.snapshot.id}`);
    const out = Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength);
    let done = 0;
    while (done < out.length) {
      const at = offset + done;
      const g = Math.floor(at / GRANULE);
      const within = at - g * GRANULE;
      const n = Math.min(out.length - done, Math.min(GRANULE, this.size - g * GRANULE) - within);
      const e = await this.entry(g);
      if (e.zero) out.fill(0, done, done + n);
      else {
        const from = e.part * GRANULE + within;
        const plain = await this.chunk(e.digest, g);
        if (plain.length < from + n) throw this.damaged(g, new Error(`chunk has ${plain.length} bytes`));
        plain.copy(out, done, from, from + n);
      }
      done += n;
    }
    const last = Math.floor((offset + out.length - 1) / GRANULE);
    if (Math.floor(offset / GRANULE) <= this.lastGranule + 1) this.prefetch(last + 1);
    this.lastGranule = last;
  }

  async blockStatus(offset: number, length: number): Promise<Extent[]> {
    checkRange(offset, length, this.size, `backup ${this.snapshot.id}`);
    const end = Math.min(this.size, offset + length);
    const out: Extent[] = [];
    for (let at = offset; at < end;) {
      const g = Math.floor(at / GRANULE);
      const next = Math.min(end, (g + 1) * GRANULE);
      const flags = (await this.entry(g)).zero ? EXTENT_ZERO | EXTENT_HOLE : 0;
      const prev = out[out.length - 1];
      if (prev && prev.flags === flags) prev.length += next - at;
      else out.push({ offset: at, length: next - at, flags });
      at = next;
    }
    return out;
  }

  write(): never {
    throw this.readOnlyError();
  }
  trim(): never {
    throw this.readOnlyError();
  }
  writeZeroes(): never {
    throw this.readOnlyError();
  }
  flush(): void {}
  close(): void {
    this.decoded.clear();
  }

  private readOnlyError(): HavenError {
    return new HavenError('READ_ONLY', `backup ${this.snapshot.id} is read-only`);
  }

  /** Granule `g`: the chunk that holds it and which part of it. */
  private async entry(g: number): Promise<{ zero: boolean; digest: Buffer; part: number }> {
    const p = Math.floor(g / PAGE_GRANULES);
    const pg = await this.index.page(p);
    const i = g - p * PAGE_GRANULES;
    const digest = pg.digest(i);
    return { zero: digest.equals(ZERO_DIGEST), digest, part: pg.part(i) };
  }

  private prefetch(from: number): void {
    const count = this.index.granules;
    for (let g = from; g < Math.min(count, from + this.readAhead * (this.chunkSize / GRANULE)); g++)
      void this.entry(g)
        .then((e) => {
          if (!e.zero) return this.chunk(e.digest, g);
        })
        .catch(() => undefined); // a reader will see the error
  }

  /** The plaintext of a chunk, from the cache or fetched and checked. */
  private chunk(digest: Buffer, g: number): Promise<Buffer> {
    const key = digest.toString('latin1');
    const hit = this.decoded.get(key);
    if (hit) {
      this.decoded.delete(key);
      this.decoded.set(key, hit); // most recently used
      return Promise.resolve(hit);
    }
    let p = this.loading.get(key);
    if (!p) {
      p = this.fetch(Buffer.from(digest), key, g).finally(() => this.loading.delete(key));
      this.loading.set(key, p);
    }
    return p;
  }

  private async fetch(digest: Buffer, key: string, g: number): Promise<Buffer> {
    let plain: Buffer;
    try {
      const stored = await this.repo.getChunk(digest);
      const buf = this.take();
      plain = buf.subarray(0, this.codec.decodeInto(stored, digest, buf));
    } catch (err) {
      throw this.damaged(g, err);
    }
    this.decoded.set(key, plain);
    while (this.decoded.size > this.cacheChunks) {
      const [old, buf] = this.decoded.entries().next().value as [string, Buffer];
      this.decoded.delete(old);
      this.free.push(Buffer.from(buf.buffer, buf.byteOffset, this.chunkSize));
    }
    return plain;
  }

  private damaged(g: number, err: unknown): HavenError {
    return new HavenError(
      'CORRUPT',
      `backup ${this.snapshot.id} ${this.snapshot.disks[this.disk]!.name}: the data at offset ${g * GRANULE} is damaged: ${errorMessage(err)}`,
    );
  }

  /** A chunk-sized buffer: one evicted from the cache, or a new one while the cache fills. */
  private take(): Buffer {
    return this.free.pop() ?? Buffer.allocUnsafe(this.chunkSize);
  }
}
