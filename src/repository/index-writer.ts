import { Page, buildRoot, type DiskIndex } from './disk-index.js';
import { PAGE_GRANULES, ZERO_DIGEST, GRANULE } from './format.js';
import type { Repository } from './repository.js';

/** What the writer needs of a piece of the new snapshot: whole granules inside one page. */
export interface IndexPiece {
  granule: number;
  granules: number;
}

/**
 * Stores a page's plaintext as a chunk under `digest` (claimed if there): whether it was new, and
 * its stored bytes. A backup passes its chunk workers' (off the main thread); default: the
 * repository's putChunk, encoded here.
 */
export type PageStore = (plain: Buffer, digest: Buffer) => Promise<{ isNew: boolean; storedBytes: number }>;

/** Pages stored at once while finishing (a first incremental over a version-1 parent stores all). */
const STORE_PARALLEL = 16;

/**
 * Builds a disk's version-2 index (disk-index.ts) as a backup stores its pieces: a page is built
 * when its first piece arrives (from the parent's page, for an incremental), stored as a chunk as
 * soon as its last piece is in, and dropped; pages no piece touched are the parent's, referred to
 * by digest without being read (or zero pages, never stored). So an incremental reads and writes
 * the pages its change touched, and memory holds only the pages in flight.
 */
export class IndexWriter {
  /** Pages this index stored that the repository did not have, and their stored bytes. */
  newPages = 0;
  storedBytes = 0;
  /** Those pages' bytes before compression. */
  plainBytes = 0;
  private readonly granules: number;
  private readonly pages: number;
  private readonly pending = new Map<number, number>();
  private readonly building = new Map<number, Promise<Page>>();
  private readonly done = new Map<number, { digest: Buffer; data: number }>();
  private readonly stores: Promise<void>[] = [];
  private failure: unknown;
  private readonly codec;
  private readonly storePage: PageStore;

  constructor(
    repo: Repository,
    readonly size: number,
    readonly chunkSize: number,
    pieces: Iterable<IndexPiece>,
    /** The parent's index (an incremental), and the granules both have whole. */
    private readonly base?: DiskIndex,
    private readonly common = 0,
    storePage?: PageStore,
  ) {
    this.storePage =
      storePage ??
      (async (plain, digest) => {
        const stored = this.codec.encode(plain, digest);
        return { isNew: await repo.putChunk(digest, stored), storedBytes: stored.length };
      });
    this.granules = Math.ceil(size / GRANULE);
    this.pages = Math.ceil(this.granules / PAGE_GRANULES);
    this.codec = repo.codec();
    for (const p of pieces) {
      const page = Math.floor(p.granule / PAGE_GRANULES);
      this.pending.set(page, (this.pending.get(page) ?? 0) + 1);
    }
  }

  /**
   * Builds the page `piece` falls in, ahead of storing it (the parent's page is read now): call it
   * before taking the resources the piece is stored with, since reading a page may need them.
   */
  async prepare(piece: IndexPiece): Promise<void> {
    await this.pageFor(Math.floor(piece.granule / PAGE_GRANULES));
  }

  /** Records a stored piece (ZERO_DIGEST: it reads as zeroes): granule i of it is part i of the chunk. */
  async set(piece: IndexPiece, digest: Buffer): Promise<void> {
    const p = Math.floor(piece.granule / PAGE_GRANULES);
    const pg = await this.pageFor(p);
    const zero = digest.equals(ZERO_DIGEST);
    for (let i = 0; i < piece.granules; i++)
      pg.set(piece.granule + i - p * PAGE_GRANULES, digest, zero ? 0 : i);
    const left = this.pending.get(p)! - 1;
    this.pending.set(p, left);
    if (left === 0) this.stores.push(this.store(p, pg));
  }

  /** Stores what is left and returns the root (the index object of the snapshot's disk). */
  async finish(): Promise<{ data: Buffer; dataGranules: number }> {
    const todo: number[] = [];
    for (let p = 0; p < this.pages; p++) {
      if (this.done.has(p) || this.pending.has(p)) continue;
      const reused = this.reusable(p);
      if (reused)
        this.done.set(p, {
          digest: Buffer.from(this.base!.pageDigest(p)!),
          data: await this.base!.pageData(p),
        });
      else if (!this.base || p >= this.base.pages || p * PAGE_GRANULES >= this.common)
        this.done.set(p, { digest: ZERO_DIGEST, data: 0 });
      else todo.push(p); // the parent's page seen anew: a version-1 parent, or the edge of a resize
    }
    let next = 0;
    const worker = async () => {
      while (next < todo.length) {
        const p = todo[next++]!;
        await this.store(p, await this.pageFor(p));
      }
    };
    await Promise.all(Array.from({ length: STORE_PARALLEL }, worker));
    await Promise.all(this.stores);
    if (this.failure) throw this.failure;
    const entries = [];
    let dataGranules = 0;
    for (let p = 0; p < this.pages; p++) {
      const e = this.done.get(p);
      if (!e) throw new Error(`index page ${p} was never completed`);
      entries.push(e);
      dataGranules += e.data;
    }
    return { data: buildRoot(this.size, this.chunkSize, entries), dataGranules };
  }

  /** Whether page `p` is the parent's stored page, unchanged: both hold it whole. */
  private reusable(p: number): boolean {
    const b = this.base;
    if (!b || b.version < 2 || p >= b.pages) return false;
    const first = p * PAGE_GRANULES;
    const count = Math.min(PAGE_GRANULES, this.granules - first);
    return first + count <= this.common && count === Math.min(PAGE_GRANULES, b.granules - first);
  }

  private pageFor(p: number): Promise<Page> {
    let pg = this.building.get(p);
    if (!pg) {
      pg = this.build(p);
      this.building.set(p, pg);
    }
    return pg;
  }

  private async build(p: number): Promise<Page> {
    const first = p * PAGE_GRANULES;
    const count = Math.min(PAGE_GRANULES, this.granules - first);
    const out = Page.empty(count);
    if (this.base && p < this.base.pages && first < this.common) {
      const from = await this.base.page(p);
      for (let i = 0; i < Math.min(count, from.count, this.common - first); i++)
        out.set(i, from.digest(i), from.part(i));
    }
    return out;
  }

  private async store(p: number, pg: Page): Promise<void> {
    try {
      this.building.delete(p);
      const data = pg.dataCount();
      if (data === 0) {
        this.done.set(p, { digest: ZERO_DIGEST, data: 0 });
        return;
      }
      const plain = pg.serialise();
      const digest = this.codec.digest(plain);
      const r = await this.storePage(plain, digest);
      if (r.isNew) {
        this.newPages++;
        this.storedBytes += r.storedBytes;
        this.plainBytes += plain.length;
      }
      this.done.set(p, { digest, data });
    } catch (err) {
      this.failure ??= err;
    }
  }
}
