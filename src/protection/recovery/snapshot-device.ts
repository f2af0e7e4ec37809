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
  DIGEST_BYTES,
  ZERO_DIGEST,
  type ChunkCodec,
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
 * and fetched ahead of a sequential reader. Zero chunks cost nothing and report as holes. The
 * repository is only ever read. Memory is the cache, whatever the disk size.
 */
export class SnapshotDevice implements BlockDevice {
  readonly readOnly = true;
  readonly flushCoversAll = true;
  readonly blockSizes = DEFAULT_BLOCK_SIZES;
  readonly chunkSize: number;
  private readonly decoded = new Map<number, Buffer>(); // chunk → plaintext, in LRU order
  private readonly loading = new Map<number, Promise<Buffer>>();
  private readonly free: Buffer[] = [];
  private readonly cacheChunks: number;
  private readonly readAhead: number;
  private lastChunk = -2;

  private constructor(
    private readonly repo: Repository,
    readonly snapshot: SnapshotManifest,
    readonly disk: number,
    private readonly digests: Buffer,
    readonly size: number,
    private readonly codec: ChunkCodec,
    opts: SnapshotDeviceOptions,
  ) {
    this.chunkSize = snapshot.disks[disk]!.chunkSize;
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
    const idx = await repo.readIndex(snapshot, disk);
    return new SnapshotDevice(repo, snapshot, disk, idx.digests, idx.size, repo.codec(), opts);
  }

  async read(buf: Uint8Array, offset: number): Promise<void> {
    checkRange(offset, buf.length, this.size, `backup ${this.snapshot.id}`);
    const out = Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength);
    const cs = this.chunkSize;
    let done = 0;
    while (done < out.length) {
      const at = offset + done;
      const c = Math.floor(at / cs);
      const within = at - c * cs;
      const n = Math.min(out.length - done, Math.min(cs, this.size - c * cs) - within);
      if (this.isZero(c)) out.fill(0, done, done + n);
      else (await this.chunk(c)).copy(out, done, within, within + n);
      done += n;
    }
    const last = Math.floor((offset + out.length - 1) / cs);
    if (Math.floor(offset / cs) <= this.lastChunk + 1) this.prefetch(last + 1);
    this.lastChunk = last;
  }

  blockStatus(offset: number, length: number): Extent[] {
    checkRange(offset, length, this.size, `backup ${this.snapshot.id}`);
    const cs = this.chunkSize;
    const end = Math.min(this.size, offset + length);
    const out: Extent[] = [];
    for (let at = offset; at < end;) {
      const c = Math.floor(at / cs);
      const next = Math.min(end, (c + 1) * cs);
      const flags = this.isZero(c) ? EXTENT_ZERO | EXTENT_HOLE : 0;
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

  private digest(c: number): Buffer {
    return this.digests.subarray(c * DIGEST_BYTES, (c + 1) * DIGEST_BYTES);
  }

  private isZero(c: number): boolean {
    return this.digest(c).equals(ZERO_DIGEST);
  }

  private prefetch(from: number): void {
    const count = Math.ceil(this.size / this.chunkSize);
    for (let c = from; c < Math.min(count, from + this.readAhead); c++)
      if (!this.isZero(c) && !this.decoded.has(c)) this.chunk(c).catch(() => undefined); // a reader will see the error
  }

  /** The plaintext of chunk `c`, from the cache or fetched and checked. */
  private chunk(c: number): Promise<Buffer> {
    const hit = this.decoded.get(c);
    if (hit) {
      this.decoded.delete(c);
      this.decoded.set(c, hit); // most recently used
      return Promise.resolve(hit);
    }
    let p = this.loading.get(c);
    if (!p) {
      p = this.fetch(c).finally(() => this.loading.delete(c));
      this.loading.set(c, p);
    }
    return p;
  }

  private async fetch(c: number): Promise<Buffer> {
    const digest = Buffer.from(this.digest(c));
    let plain: Buffer;
    try {
      const stored = await this.repo.getChunk(digest);
      plain = this.take();
      const n = this.codec.decodeInto(stored, digest, plain);
      if (n !== Math.min(this.chunkSize, this.size - c * this.chunkSize))
        throw new HavenError('CORRUPT', `chunk has ${n} bytes`);
    } catch (err) {
      throw new HavenError(
        'CORRUPT',
        `backup ${this.snapshot.id} ${this.snapshot.disks[this.disk]!.name}: the data at offset ${c * this.chunkSize} is damaged: ${errorMessage(err)}`,
      );
    }
    this.decoded.set(c, plain);
    while (this.decoded.size > this.cacheChunks) {
      const [old, buf] = this.decoded.entries().next().value as [number, Buffer];
      this.decoded.delete(old);
      this.free.push(buf);
    }
    return plain;
  }

  /** A chunk-sized buffer: one evicted from the cache, or a new one while the cache fills. */
  private take(): Buffer {
    return this.free.pop() ?? Buffer.allocUnsafe(this.chunkSize);
  }
}
