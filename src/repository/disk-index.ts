import { createHash } from 'node:crypto';
import { HavenError } from '../common/index.js';
import {
  DIGEST_BYTES,
  GRANULE,
  INDEX_MAGIC,
  INDEX_V1,
  INDEX_V2,
  PAGE_GRANULES,
  PAGE_HEADER,
  PAGE_MAGIC,
  ROOT_ENTRY,
  ROOT_HEADER,
  ZERO_DIGEST,
  readIndex,
} from './format.js';

/**
 * One disk of a snapshot as the readers see it (restore, mount, verify, gc, instant recovery,
 * the parent of an incremental), whatever the index's format version:
 *
 * - the disk is cut into granules of 64 KiB; each granule names the chunk that holds it and
 *   which 64 KiB part of that chunk it is (a chunk of a full backup holds 4 granules at 256 KiB;
 *   a chunk an incremental stored for a scattered change holds just the granules that changed);
 * - granules are grouped in pages of 256 (16 MiB of disk), and the index object of the snapshot
 *   (the root) lists the pages by digest: pages are stored as chunks, so an incremental writes
 *   only the pages its change touched and refers to the parent's others (format version 2);
 * - an index of version 1 (one digest per chunk, flat) reads through the same view.
 *
 * Pages are read when first needed and a few are kept: memory does not grow with the disk.
 */
export class DiskIndex {
  readonly granules: number;
  readonly pages: number;
  private readonly cache = new Map<number, Page>();

  private constructor(
    readonly what: string,
    readonly size: number,
    /** The largest chunk: the repository's chunk size when the snapshot was taken. */
    readonly chunkSize: number,
    readonly version: number,
    /** Version 2: the root (page digests and data counts); version 1: the flat digests. */
    private readonly body: Buffer,
    private readonly fetchPage: (digest: Buffer) => Promise<Buffer>,
  ) {
    this.granules = Math.ceil(size / GRANULE);
    this.pages = Math.ceil(this.granules / PAGE_GRANULES);
  }

  /**
   * Parses an index object (checked against the hash its manifest recorded by the caller).
   * `getPage` reads and decodes a stored page (a chunk) by digest.
   */
  static parse(data: Buffer, what: string, getPage: (digest: Buffer) => Promise<Buffer>): DiskIndex {
    if (data.length < 8 || !data.subarray(0, 4).equals(INDEX_MAGIC))
      throw new HavenError('CORRUPT', `${what}: not a Haven index`);
    const version = data.readUInt8(4);
    if (version === INDEX_V1) {
      const v1 = readIndex(data, what);
      if (v1.chunkSize % GRANULE)
        throw new HavenError('CORRUPT', `${what}: chunk size ${v1.chunkSize} is not a multiple of 64 KiB`);
      return new DiskIndex(what, v1.size, v1.chunkSize, INDEX_V1, v1.digests, getPage);
    }
    if (version !== INDEX_V2)
      throw new HavenError(
        'UNSUPPORTED',
        `${what}: index format version ${version} is not supported (this Haven reads versions ${INDEX_V1} and ${INDEX_V2}; upgrade Haven to read it)`,
      );
    const root = readRoot(data, what);
    return new DiskIndex(what, root.size, root.chunkSize, INDEX_V2, root.entries, getPage);
  }

  /** Granules per chunk of the repository's size. */
  get chunkGranules(): number {
    return this.chunkSize / GRANULE;
  }

  /** Version 2: the stored page `p` (ZERO_DIGEST: every granule reads as zeroes, nothing stored). */
  pageDigest(p: number): Buffer | undefined {
    if (this.version !== INDEX_V2) return undefined;
    return this.body.subarray(p * ROOT_ENTRY, p * ROOT_ENTRY + DIGEST_BYTES);
  }

  /** The granules of page `p` that hold data (version 2: from the root, without reading the page). */
  async pageData(p: number): Promise<number> {
    if (this.version === INDEX_V2) return this.body.readUInt32LE(p * ROOT_ENTRY + DIGEST_BYTES);
    const pg = await this.page(p);
    let n = 0;
    for (let i = 0; i < pg.count; i++) if (!pg.digest(i).equals(ZERO_DIGEST)) n++;
    return n;
  }

  /** Granules that hold data, over the whole disk (version 2: the root alone is read). */
  async dataGranules(): Promise<number> {
    let n = 0;
    for (let p = 0; p < this.pages; p++) n += await this.pageData(p);
    return n;
  }

  /** Page `p` of the index: its granules' digests and parts. */
  async page(p: number): Promise<Page> {
    const hit = this.cache.get(p);
    if (hit) return hit;
    const first = p * PAGE_GRANULES;
    const count = Math.min(PAGE_GRANULES, this.granules - first);
    let pg: Page;
    if (this.version === INDEX_V1) pg = Page.fromFlat(this.body, this.chunkSize, first, count);
    else {
      const d = this.pageDigest(p)!;
      if (d.equals(ZERO_DIGEST)) pg = Page.empty(count);
      else {
        let plain: Buffer;
        try {
          plain = await this.fetchPage(Buffer.from(d));
        } catch (err) {
          throw new HavenError(
            (err as HavenError).code === 'NOT_FOUND' ? 'CORRUPT' : ((err as HavenError).code ?? 'CORRUPT'),
            `${this.what}: index page ${p} (offsets ${first * GRANULE} to ${(first + count) * GRANULE}) cannot be read: ${(err as Error).message}`,
          );
        }
        pg = Page.parse(plain, `${this.what} page ${p}`, count);
      }
    }
    this.cache.set(p, pg);
    if (this.cache.size > 64) this.cache.delete(this.cache.keys().next().value!);
    return pg;
  }

  /**
   * The disk as runs of bytes each taken from one stored chunk (or zero: digest ZERO_DIGEST),
   * in disk order, between `from` and `to` (bytes; whole granules). A run never leaves its chunk:
   * a full backup's chunk is one run, a partly changed one several.
   */
  async *runs(from = 0, to = this.size): AsyncGenerator<Run> {
    const g0 = Math.floor(from / GRANULE);
    const g1 = Math.ceil(Math.min(to, this.size) / GRANULE);
    let cur: Run | undefined;
    for (let g = g0; g < g1;) {
      const p = Math.floor(g / PAGE_GRANULES);
      const pg = await this.page(p);
      const end = Math.min(g1, (p + 1) * PAGE_GRANULES);
      for (; g < end; g++) {
        const i = g - p * PAGE_GRANULES;
        const digest = pg.digest(i);
        const part = pg.part(i);
        const offset = g * GRANULE;
        const length = Math.min(GRANULE, this.size - offset);
        const zero = digest.equals(ZERO_DIGEST);
        if (
          cur &&
          cur.offset + cur.length === offset &&
          cur.digest.equals(digest) &&
          (zero || cur.at + cur.length === part * GRANULE)
        ) {
          cur.length += length;
          continue;
        }
        if (cur) yield cur;
        cur = { offset, length, digest, at: zero ? 0 : part * GRANULE, zero };
      }
    }
    if (cur) yield cur;
  }

  /** The data chunks the disk uses, each once, in disk order, with the first offset that reads it. */
  async chunks(): Promise<{ digest: Buffer; offset: number }[]> {
    const seen = new Set<string>();
    const out: { digest: Buffer; offset: number }[] = [];
    for await (const r of this.runs()) {
      if (r.zero) continue;
      const k = r.digest.toString('latin1');
      if (seen.has(k)) continue;
      seen.add(k);
      out.push({ digest: Buffer.from(r.digest), offset: r.offset });
    }
    return out;
  }

  /** SHA-256 over the granules' chunk digests and parts in disk order: equal for equally stored disks. */
  async fingerprint(): Promise<string> {
    const h = createHash('sha256');
    for (let p = 0; p < this.pages; p++) {
      const pg = await this.page(p);
      h.update(pg.digests);
      h.update(pg.parts);
    }
    return h.digest('hex');
  }
}

export interface Run {
  /** Where on the disk. */
  offset: number;
  length: number;
  /** The chunk (ZERO_DIGEST: the run reads as zeroes). */
  digest: Buffer;
  /** Where in the chunk's plaintext the run starts. */
  at: number;
  zero: boolean;
}

/** One page of an index: up to 256 granules, each a chunk digest and a part (64 KiB units). */
export class Page {
  constructor(
    readonly count: number,
    readonly digests: Buffer,
    readonly parts: Buffer,
  ) {}

  static empty(count: number): Page {
    return new Page(count, Buffer.alloc(count * DIGEST_BYTES), Buffer.alloc(count));
  }

  /** A page seen through a version-1 index (a digest per chunk of `chunkSize`). */
  static fromFlat(flat: Buffer, chunkSize: number, first: number, count: number): Page {
    const k = chunkSize / GRANULE;
    const pg = Page.empty(count);
    for (let i = 0; i < count; i++) {
      const g = first + i;
      const c = Math.floor(g / k);
      flat.copy(pg.digests, i * DIGEST_BYTES, c * DIGEST_BYTES, (c + 1) * DIGEST_BYTES);
      pg.parts[i] = g - c * k;
    }
    return pg;
  }

  static parse(plain: Buffer, what: string, count: number): Page {
    if (plain.length < PAGE_HEADER || !plain.subarray(0, 4).equals(PAGE_MAGIC))
      throw new HavenError('CORRUPT', `${what}: not a Haven index page`);
    const n = plain.readUInt32LE(8);
    if (n !== count || plain.length !== PAGE_HEADER + n * (DIGEST_BYTES + 1))
      throw new HavenError('CORRUPT', `${what}: ${n} granules where ${count} belong`);
    const digests = plain.subarray(PAGE_HEADER, PAGE_HEADER + n * DIGEST_BYTES);
    return new Page(n, digests, plain.subarray(PAGE_HEADER + n * DIGEST_BYTES));
  }

  /** A copy that may be changed (a page an incremental rewrites). */
  clone(): Page {
    return new Page(this.count, Buffer.from(this.digests), Buffer.from(this.parts));
  }

  digest(i: number): Buffer {
    return this.digests.subarray(i * DIGEST_BYTES, (i + 1) * DIGEST_BYTES);
  }

  part(i: number): number {
    return this.parts[i]!;
  }

  set(i: number, digest: Buffer, part: number): void {
    digest.copy(this.digests, i * DIGEST_BYTES);
    this.parts[i] = part;
  }

  /** Granules that hold data. */
  dataCount(): number {
    let n = 0;
    for (let i = 0; i < this.count; i++) if (!this.digest(i).equals(ZERO_DIGEST)) n++;
    return n;
  }

  /** The stored form's plaintext (encoded as a chunk by the writer). */
  serialise(): Buffer {
    const out = Buffer.alloc(PAGE_HEADER + this.count * (DIGEST_BYTES + 1));
    PAGE_MAGIC.copy(out, 0);
    out.writeUInt8(INDEX_V2, 4);
    out.writeUInt32LE(this.count, 8);
    this.digests.copy(out, PAGE_HEADER);
    this.parts.copy(out, PAGE_HEADER + this.count * DIGEST_BYTES);
    return out;
  }
}

/** Builds a version-2 root: the header, then each page's digest and data granule count. */
export function buildRoot(
  size: number,
  chunkSize: number,
  pages: { digest: Buffer; data: number }[],
): Buffer {
  const out = Buffer.alloc(ROOT_HEADER + pages.length * ROOT_ENTRY);
  INDEX_MAGIC.copy(out, 0);
  out.writeUInt8(INDEX_V2, 4);
  out.writeUInt32LE(chunkSize, 8);
  out.writeUInt32LE(GRANULE, 12);
  out.writeBigUInt64LE(BigInt(size), 16);
  out.writeBigUInt64LE(BigInt(pages.length), 24);
  out.writeUInt32LE(PAGE_GRANULES, 32);
  pages.forEach((p, i) => {
    p.digest.copy(out, ROOT_HEADER + i * ROOT_ENTRY);
    out.writeUInt32LE(p.data, ROOT_HEADER + i * ROOT_ENTRY + DIGEST_BYTES);
  });
  return out;
}

function readRoot(data: Buffer, what: string): { size: number; chunkSize: number; entries: Buffer } {
  if (data.length < ROOT_HEADER) throw new HavenError('CORRUPT', `${what}: index truncated`);
  const chunkSize = data.readUInt32LE(8);
  const granule = data.readUInt32LE(12);
  const size = Number(data.readBigUInt64LE(16));
  const pages = Number(data.readBigUInt64LE(24));
  const per = data.readUInt32LE(32);
  if (granule !== GRANULE || per !== PAGE_GRANULES)
    throw new HavenError(
      'UNSUPPORTED',
      `${what}: granules of ${granule} bytes in pages of ${per} are not supported (version 2 has ${GRANULE} in ${PAGE_GRANULES})`,
    );
  if (chunkSize % GRANULE || chunkSize / GRANULE > 256)
    throw new HavenError('CORRUPT', `${what}: chunk size ${chunkSize} does not fit its granules`);
  if (
    pages !== Math.ceil(Math.ceil(size / GRANULE) / PAGE_GRANULES) ||
    data.length !== ROOT_HEADER + pages * ROOT_ENTRY
  )
    throw new HavenError('CORRUPT', `${what}: index size does not match its header`);
  return { size, chunkSize, entries: data.subarray(ROOT_HEADER) };
}
