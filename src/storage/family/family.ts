import {
  closeSync,
  existsSync,
  fchmodSync,
  fdatasync,
  fdatasyncSync,
  fstatSync,
  mkdirSync,
  openSync,
  read,
  readSync,
  writeSync,
  writevSync,
} from 'node:fs';
import { randomUUID } from 'node:crypto';
import { promisify } from 'node:util';
import { join } from 'node:path';
import { HavenError, conflict, fromSystemError, invalidArgument, notFound } from '../../common/index.js';
import { BitSet } from './bitset.js';
import { ReadLeases } from './read-leases.js';
import {
  FANOUT,
  MAX_GENERATION,
  MAX_POINTER,
  PAGE_SIZE,
  SUPERBLOCK_SIZE,
  decodePage,
  decodeSuperblock,
  depthFor,
  encodePage,
  encodeSuperblock,
  entryBirth,
  entryPointer,
  pageOffset,
  setEntry,
  type MemberRecord,
  type Superblock,
} from './format.js';
import { SPANS, TreeNode } from './tree.js';
import { JOURNAL_FILE, MapJournal, currentBootId, type JournalRecord } from './journal.js';
import { checkRange } from '../../block/index.js';

const fdatasyncAsync = promisify(fdatasync);
const readAsyncFd = (fd: number, buf: Uint8Array, at: number, len: number, pos: number) =>
  new Promise<number>((resolve, reject) =>
    read(fd, buf, at, len, pos, (err, n) => (err ? reject(err) : resolve(n))),
  );

export const DEFAULT_CLUSTER_SIZE = 64 * 1024;
/** The files of a family's directory (all Haven's: a pool's delete removes these and nothing else). */
export const FAMILY_FILES = ['data', 'meta', JOURNAL_FILE];
/** A VM's disk is for the storage service's user alone, wherever its pool is. */
const FILE_MODE = 0o600;
/** Largest volume: 2^53 bytes would be exact, but 4 PiB keeps every intermediate product exact too. */
export const MAX_VOLUME_SIZE = 2 ** 52;
/** Commit on our own once this many tree pages are dirty, so memory between flushes stays bounded. */
const AUTO_COMMIT_DIRTY_PAGES = 8192;
/** ... and once the mapping journal holds this many changes (2 MiB of it). */
const AUTO_COMMIT_JOURNAL_RECORDS = 65536;
/**
 * A trim commits sooner: its space comes back only at a commit, and on a full filesystem the
 * tree pages it dirties must fit in the headroom the pool keeps for metadata (see Pool).
 */
export const TRIM_COMMIT_DIRTY_PAGES = 512;
/** ... and its journal stays within 512 KiB of that headroom. */
const TRIM_COMMIT_JOURNAL_RECORDS = 16384;

export interface FamilyOptions {
  clusterSize?: number;
  /** Called before a data cluster is allocated; throws NO_SPACE when the pool is full. */
  reserve?: (clusters: number) => void;
  /** Called when data clusters are given back. */
  release?: (clusters: number) => void;
  /**
   * Punches a hole in the data file, giving the range's space back to the filesystem (the native
   * addon's fallocate, when present; otherwise space is only reused). Called only for clusters
   * that no member references and no durable superblock names.
   */
  punchHole?: (fd: number, offset: number, length: number) => void;
  /** The boot the mapping journal must come from to be replayed (default: the kernel's; tests). */
  bootId?: string;
}

/** Counts of work done, for tests that show an operation's cost does not grow with size. */
export interface FamilyStats {
  pagesRead: number;
  pagesWritten: number;
  superblocksWritten: number;
  clustersCopied: number;
}

interface Member {
  record: MemberRecord;
  root: TreeNode | undefined;
}

/**
 * A volume family: a volume with its snapshots and clones, in one `data` and one `meta` file.
 * See docs/decisions/0003-volume-format.md for the format and its invariants. All I/O is
 * synchronous (page-cache speed, no promise per request); the caller is single-threaded.
 */
export class VolumeFamily {
  readonly clusterSize: number;
  readonly stats: FamilyStats = { pagesRead: 0, pagesWritten: 0, superblocksWritten: 0, clustersCopied: 0 };
  private sb: Superblock;
  private readonly members = new Map<string, Member>();
  private readonly nodeCache = new Map<number, TreeNode>();
  private readonly usedPages = new BitSet();
  private readonly usedClusters = new BitSet();
  private freePages: number[] = [];
  private freeClusters: number[] = [];
  private pendingPages: number[] = [];
  private pendingClusters: number[] = [];
  /** Clusters freed while reads off the event loop may still read them (readAsync). */
  private readonly leases = new ReadLeases<number>();
  private dirtyPages = 0;
  /** Mapping changes since the last commit, kept where a killed process cannot lose them. */
  private journal: MapJournal | undefined;
  /** Member id -> its index in the superblock, which names members in the journal. */
  private memberIndex = new Map<string, number>();
  private readonly scratch: Buffer;
  private readonly pageBuf = Buffer.alloc(PAGE_SIZE);
  private closed = false;

  private constructor(
    readonly dir: string,
    private readonly dataFd: number,
    private readonly metaFd: number,
    sb: Superblock,
    private readonly opts: FamilyOptions,
  ) {
    this.sb = sb;
    this.clusterSize = sb.clusterSize;
    this.scratch = Buffer.alloc(sb.clusterSize);
    for (const record of sb.members) this.members.set(record.id, { record, root: undefined });
  }

  /** Creates a new family in `dir` with one empty volume. */
  static create(
    dir: string,
    volume: { name: string; size: number; labels?: Record<string, string> },
    opts: FamilyOptions = {},
  ): VolumeFamily {
    const clusterSize = opts.clusterSize ?? DEFAULT_CLUSTER_SIZE;
    if (
      !Number.isInteger(clusterSize) ||
      clusterSize < 4096 ||
      clusterSize > 4 * 1024 * 1024 ||
      (clusterSize & (clusterSize - 1)) !== 0
    )
      throw invalidArgument(`cluster size ${clusterSize} must be a power of two from 4 KiB to 4 MiB`);
    checkSize(volume.size);
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    if (existsSync(join(dir, 'meta'))) throw conflict(`a volume family already exists in ${dir}`);
    const sb: Superblock = {
      version: 1,
      seq: 0,
      clusterSize,
      nextGen: 2,
      pageHighWater: 1,
      clusterHighWater: 1,
      members: [newRecord(volume.name, 'volume', volume.size, 1, clusterSize, volume.labels)],
    };
    const dataFd = openSync(join(dir, 'data'), 'w+', FILE_MODE);
    const metaFd = openSync(join(dir, 'meta'), 'w+', FILE_MODE);
    const fam = new VolumeFamily(dir, dataFd, metaFd, sb, opts);
    fam.writeSuperblock();
    fam.openJournal();
    return fam;
  }

  /** Opens an existing family, from the newer of its two valid superblocks. */
  static open(dir: string, opts: FamilyOptions = {}): VolumeFamily {
    let dataFd: number, metaFd: number;
    try {
      dataFd = openSync(join(dir, 'data'), 'r+');
      metaFd = openSync(join(dir, 'meta'), 'r+');
    } catch (err) {
      throw fromSystemError(err, `opening volume family ${dir}`);
    }
    // Families made before 0600 was the rule (readable by every local user) are closed now.
    for (const fd of [dataFd, metaFd]) if (fstatSync(fd).mode & 0o077) fchmodSync(fd, FILE_MODE);
    const slots = [0, 1].map((slot) => {
      const buf = Buffer.alloc(SUPERBLOCK_SIZE);
      readSync(metaFd, buf, 0, SUPERBLOCK_SIZE, slot * SUPERBLOCK_SIZE);
      return decodeSuperblock(buf);
    });
    const sb = slots.filter((s): s is Superblock => !!s).sort((a, b) => b.seq - a.seq)[0];
    if (!sb) {
      closeSync(dataFd);
      closeSync(metaFd);
      throw new HavenError('CORRUPT', `volume family ${dir} has no valid superblock`);
    }
    const fam = new VolumeFamily(dir, dataFd, metaFd, sb, opts);
    // A service killed since the last commit: its acknowledged mapping changes are made durable
    // before anything else (the punch of free clusters below would destroy their data).
    const replay = MapJournal.replayable(dir, sb.seq, opts.bootId ?? currentBootId());
    fam.rebuildFreeSpace(replay);
    fam.openJournal();
    return fam;
  }

  // ---- members ---------------------------------------------------------------------------

  list(): MemberRecord[] {
    return [...this.members.values()].map((m) => ({ ...m.record }));
  }

  /** The volume (not snapshot) of this name, copying no other record: pools look names up often. */
  volumeNamed(name: string): MemberRecord | undefined {
    for (const m of this.members.values())
      if (m.record.kind === 'volume' && m.record.name === name) return { ...m.record };
    return undefined;
  }

  /** Names of the volumes (not snapshots) of this family. */
  volumeNames(): string[] {
    const out: string[] = [];
    for (const m of this.members.values()) if (m.record.kind === 'volume') out.push(m.record.name);
    return out;
  }

  /** The snapshot of this name taken of volume `volumeId`. */
  snapshotNamed(volumeId: string, name: string): MemberRecord | undefined {
    for (const m of this.members.values())
      if (m.record.kind === 'snapshot' && m.record.parent === volumeId && m.record.name === name)
        return { ...m.record };
    return undefined;
  }

  find(nameOrId: string): MemberRecord | undefined {
    for (const m of this.members.values())
      if (m.record.id === nameOrId || m.record.name === nameOrId) return { ...m.record };
    return undefined;
  }

  private member(id: string): Member {
    const m = this.members.get(id);
    if (!m) throw notFound(`no volume or snapshot with id ${id} in ${this.dir}`);
    return m;
  }

  /** Bytes of data clusters this family holds (shared clusters counted once). */
  allocatedBytes(): number {
    return (this.usedClusters.count() - this.pendingClusters.length - this.leases.holding) * this.clusterSize;
  }

  /** Bytes of data a member maps (its own view, shared clusters included). */
  mappedBytes(id: string): number {
    let clusters = 0;
    this.walk(this.member(id), (node) => {
      if (node.level !== 0) return;
      for (let i = 0; i < FANOUT; i++) if (entryPointer(node.entries, i) !== 0) clusters++;
    });
    return clusters * this.clusterSize;
  }

  /**
   * Takes a snapshot of a volume: the snapshot shares the volume's tree and the volume moves to a
   * new generation. Work and memory do not depend on the volume's size (see stats).
   */
  snapshot(volumeId: string, name: string): MemberRecord {
    const m = this.member(volumeId);
    if (m.record.kind !== 'volume')
      throw invalidArgument(`${m.record.name} is a snapshot; snapshots are taken of volumes`);
    this.commit(); // everything written before the snapshot is in it, durably
    const root = m.root ?? this.loadRoot(m);
    const snap = newRecord(name, 'snapshot', m.record.size, m.record.writeGen, this.clusterSize, undefined);
    Object.assign(snap, {
      rootPage: m.record.rootPage,
      rootBirth: m.record.rootBirth,
      depth: m.record.depth,
      parent: m.record.id,
    });
    this.members.set(snap.id, { record: snap, root });
    m.record.writeGen = this.nextGeneration();
    this.commit();
    return { ...snap };
  }

  /** A new writable volume sharing a snapshot's data. */
  clone(snapshotId: string, name: string, labels?: Record<string, string>): MemberRecord {
    const s = this.member(snapshotId);
    if (s.record.kind !== 'snapshot')
      throw invalidArgument(`${s.record.name} is not a snapshot; clones are made from snapshots`);
    const rec = newRecord(name, 'volume', s.record.size, this.nextGeneration(), this.clusterSize, labels);
    Object.assign(rec, {
      rootPage: s.record.rootPage,
      rootBirth: s.record.rootBirth,
      depth: s.record.depth,
      parent: s.record.id,
    });
    this.members.set(rec.id, { record: rec, root: s.root ?? this.loadRoot(s) });
    this.commit();
    return { ...rec };
  }

  /** Gives a member a new name (durably). */
  rename(id: string, name: string): void {
    this.member(id).record.name = name;
    this.commit();
  }

  /** Sets (or, with undefined, removes) one label of a member. */
  setLabel(id: string, key: string, value: string | undefined): void {
    const rec = this.member(id).record;
    const labels = { ...rec.labels };
    if (value === undefined) delete labels[key];
    else labels[key] = value;
    rec.labels = labels;
    this.commit();
  }

  /** Makes a volume's content that of one of its snapshots again. */
  revert(volumeId: string, snapshotId: string): void {
    const v = this.member(volumeId);
    const s = this.member(snapshotId);
    if (v.record.kind !== 'volume') throw invalidArgument(`${v.record.name} is not a volume`);
    if (s.record.kind !== 'snapshot' || s.record.parent !== v.record.id)
      throw invalidArgument(`${s.record.name} is not a snapshot of ${v.record.name}`);
    v.root = s.root ?? this.loadRoot(s);
    Object.assign(v.record, {
      rootPage: s.record.rootPage,
      rootBirth: s.record.rootBirth,
      depth: s.record.depth,
      size: s.record.size,
    });
    v.record.writeGen = this.nextGeneration();
    this.collectGarbage();
    this.commit();
  }

  /** Grows a volume. Shrinking is refused: it would silently drop data. */
  resize(volumeId: string, size: number): void {
    const v = this.member(volumeId);
    if (v.record.kind !== 'volume')
      throw invalidArgument(`${v.record.name} is a snapshot; snapshots cannot be resized`);
    checkSize(size);
    if (size < v.record.size)
      throw invalidArgument(
        `volume ${v.record.name} is ${v.record.size} bytes; shrinking to ${size} is not supported`,
      );
    const depth = depthFor(Math.ceil(size / this.clusterSize));
    if (depth > v.record.depth) {
      let root = v.root ?? this.loadRoot(v);
      for (let level = v.record.depth; level < depth; level++) {
        const up = new TreeNode(level, v.record.writeGen);
        up.dirty = true;
        if (root) up.children![0] = root;
        root = up;
      }
      v.root = root;
      v.record.depth = depth;
    }
    v.record.size = size;
    this.commit();
  }

  /** Deletes a member; refuses while others depend on it. */
  delete(id: string): void {
    const m = this.member(id);
    for (const other of this.members.values())
      if (other.record.parent === id)
        throw conflict(
          other.record.kind === 'snapshot'
            ? `volume ${m.record.name} has snapshot ${other.record.name}; delete its snapshots first`
            : `snapshot ${m.record.name} is the origin of clone ${other.record.name}; delete the clone first`,
        );
    this.members.delete(id);
    this.collectGarbage();
    this.commit();
  }

  get memberCount(): number {
    return this.members.size;
  }

  // ---- data path -------------------------------------------------------------------------

  read(id: string, buf: Uint8Array, offset: number): void {
    this.mapRead(id, buf, offset, (at, len, pos) => this.preadFully(buf, at, len, pos));
  }

  /**
   * read() with the data file read on libuv's thread pool, off the event loop (a backup reading a
   * snapshot from a cold disk would otherwise hold the guests' I/O for each read). The mapping is
   * looked up now; clusters freed before the read ends are not reused until it has (ReadLeases).
   */
  async readAsync(id: string, buf: Uint8Array, offset: number): Promise<void> {
    const runs: number[] = [];
    this.mapRead(id, buf, offset, (at, len, pos) => runs.push(at, len, pos));
    if (!runs.length) return;
    const lease = this.leases.begin();
    try {
      const reads: Promise<void>[] = [];
      for (let i = 0; i < runs.length; i += 3)
        reads.push(this.preadAsync(buf, runs[i]!, runs[i + 1]!, runs[i + 2]!));
      await Promise.all(reads);
    } finally {
      const freed = this.leases.end(lease);
      if (this.closed) {
        if (this.leases.reads === 0) closeSync(this.dataFd);
      } else if (freed.length) {
        this.letGo(freed);
        this.freeClusters.sort((a, b) => b - a); // as commit() leaves it: lowest numbers first
      }
    }
  }

  /** Walks a read of `buf.length` bytes at `offset`: holes zero-filled here, each run of data given to `data`. */
  private mapRead(
    id: string,
    buf: Uint8Array,
    offset: number,
    data: (at: number, len: number, pos: number) => void,
  ): void {
    const m = this.member(id);
    this.checkRange(m, offset, buf.length);
    const cs = this.clusterSize;
    let done = 0;
    while (done < buf.length) {
      const pos = offset + done;
      const cluster = Math.floor(pos / cs);
      const within = pos - cluster * cs;
      const ptr = this.lookup(m, cluster);
      let len = Math.min(cs - within, buf.length - done);
      if (ptr === 0) {
        // Coalesce unallocated clusters into one fill.
        let next = cluster + 1;
        while (done + len < buf.length && this.lookup(m, next) === 0) {
          len = Math.min(len + cs, buf.length - done);
          next++;
        }
        buf.fill(0, done, done + len);
      } else {
        // Coalesce physically contiguous clusters into one read.
        let next = cluster + 1;
        while (done + len < buf.length && this.lookup(m, next) === ptr + (next - cluster)) {
          len = Math.min(len + cs, buf.length - done);
          next++;
        }
        data(done, len, ptr * cs + within);
      }
      done += len;
    }
  }

  write(id: string, data: Uint8Array | readonly Uint8Array[], offset: number): void {
    const m = this.writable(id);
    const parts = Array.isArray(data) ? (data as readonly Uint8Array[]) : [data as Uint8Array];
    let total = 0;
    for (const p of parts) total += p.length;
    this.checkRange(m, offset, total);
    const cursor = new PartsCursor(parts);
    try {
      this.writeClusters(m, cursor, offset, total);
    } finally {
      this.flushJournal();
    }
    this.maybeAutoCommit();
  }

  private writeClusters(m: Member, cursor: PartsCursor, offset: number, total: number): void {
    const cs = this.clusterSize;
    let done = 0;
    while (done < total) {
      const pos = offset + done;
      const cluster = Math.floor(pos / cs);
      const within = pos - cluster * cs;
      const len = Math.min(cs - within, total - done);
      const i = cluster % FANOUT;
      const owned = this.writableLeafIfOwned(m, cluster);
      if (owned) {
        // Owned by this member alone: in place, no metadata change. Coalesce the following owned,
        // physically contiguous clusters into one write.
        const ptr = entryPointer(owned.entries, i);
        let runLen = len;
        let next = cluster + 1;
        while (done + runLen < total) {
          const l2 = this.writableLeafIfOwned(m, next);
          if (!l2 || entryPointer(l2.entries, next % FANOUT) !== ptr + (next - cluster)) break;
          runLen = Math.min(runLen + cs, total - done);
          next++;
        }
        this.pwriteParts(cursor.take(runLen), ptr * cs + within);
        done += runLen;
        continue;
      }
      // Shared or unallocated: write a whole new cluster (copy on write).
      const leaf = this.writableLeaf(m, cluster);
      const ptr = entryPointer(leaf.entries, i);
      const fresh = this.allocateCluster();
      try {
        if (len === cs) {
          this.pwriteParts(cursor.take(len), fresh * cs);
        } else {
          if (ptr !== 0) {
            this.preadFully(this.scratch, 0, cs, ptr * cs);
            this.stats.clustersCopied++;
          } else this.scratch.fill(0);
          let at = within;
          for (const v of cursor.take(len)) {
            this.scratch.set(v, at);
            at += v.length;
          }
          this.pwriteParts([this.scratch], fresh * cs);
        }
      } catch (err) {
        this.unallocateCluster(fresh);
        throw err;
      }
      if (ptr !== 0) this.dropCluster(m, ptr, entryBirth(leaf.entries, i));
      setEntry(leaf.entries, i, fresh, m.record.writeGen);
      this.journalMapping(m, cluster, fresh, m.record.writeGen);
      done += len;
    }
  }

  /** Makes a range read as zeroes; whole clusters are unmapped (and their space freed when owned). */
  zero(id: string, offset: number, length: number, allocate = false): void {
    const m = this.writable(id);
    this.checkRange(m, offset, length);
    const cs = this.clusterSize;
    let done = 0;
    try {
      while (done < length) {
        const pos = offset + done;
        const cluster = Math.floor(pos / cs);
        const within = pos - cluster * cs;
        const len = Math.min(cs - within, length - done);
        const mapped = this.lookup(m, cluster) !== 0;
        if (len === cs && !allocate) {
          if (mapped) this.unmap(m, cluster);
        } else if (mapped || allocate) {
          this.write(id, zeroView(this.zeroes(), len), pos);
        }
        done += len;
      }
    } finally {
      this.flushJournal();
    }
    this.maybeAutoCommit(TRIM_COMMIT_DIRTY_PAGES, TRIM_COMMIT_JOURNAL_RECORDS);
  }

  /** Allocation of a member's range, as block-status extents (flags 3: hole and zero; 0: data). */
  status(id: string, offset: number, length: number): { offset: number; length: number; flags: number }[] {
    const m = this.member(id);
    this.checkRange(m, offset, Math.min(length, 1));
    const end = Math.min(offset + length, m.record.size);
    const cs = this.clusterSize;
    const out: { offset: number; length: number; flags: number }[] = [];
    let pos = offset;
    while (pos < end && out.length < 1024) {
      const cluster = Math.floor(pos / cs);
      const flags = this.lookup(m, cluster) === 0 ? 3 : 0;
      const stop = Math.min((cluster + 1) * cs, end);
      const last = out[out.length - 1];
      if (last && last.flags === flags) last.length += stop - pos;
      else out.push({ offset: pos, length: stop - pos, flags });
      pos = stop;
    }
    return out;
  }

  // ---- durability ------------------------------------------------------------------------

  /**
   * Makes every completed write durable: data first, then changed tree pages into fresh pages,
   * then the superblock naming them. Frees what the previous superblock alone referenced.
   */
  /**
   * Writes the data written so far back to disk on the thread pool (fdatasync of the data file):
   * the next commit's own fdatasync, on the event loop, then has little left to wait for. Nothing
   * becomes durable by it alone — the tree naming the data is written only by commit.
   */
  async writeBack(): Promise<void> {
    if (this.closed) return;
    try {
      await fdatasyncAsync(this.dataFd);
    } catch {
      // Closed meanwhile, or the disk failed: the commit that matters reports it.
    }
  }

  commit(): void {
    if (this.closed) return;
    fdatasyncSync(this.dataFd);
    const seen = new Set<TreeNode>();
    for (const m of this.members.values()) {
      if (m.root?.dirty) this.writeNode(m.root, seen);
      if (m.root) {
        m.record.rootPage = m.root.page;
        m.record.rootBirth = m.root.birth;
      } else m.record.rootPage = 0;
    }
    if (seen.size > 0) fdatasyncSync(this.metaFd);
    this.writeSuperblock();
    this.dirtyPages = 0;
    // The new superblock holds every change the journal did: it starts again (before any punch).
    if (this.journal) this.openJournal();
    // The old superblock is gone: what only it referenced may be reused now.
    for (const p of this.pendingPages) {
      this.usedPages.delete(p);
      this.freePages.push(p);
    }
    // Only now: the superblock that stopped naming them is durable, and no member maps them (a
    // cluster a snapshot or clone still shares never gets here; see dropCluster) — and once no
    // read that began before this commit runs off the event loop (readAsync).
    const freed = this.leases.committed(this.pendingClusters);
    this.pendingPages = [];
    this.pendingClusters = [];
    this.letGo(freed);
    // Lowest numbers first, for locality.
    this.freePages.sort((a, b) => b - a);
    this.freeClusters.sort((a, b) => b - a);
  }

  close(): void {
    if (this.closed) return;
    this.commit();
    this.closed = true;
    // A read still running off the event loop keeps the data file open until it ends (a
    // descriptor number closed under it could be reused by another file).
    if (this.leases.reads === 0) closeSync(this.dataFd);
    closeSync(this.metaFd);
    this.journal?.close();
  }

  /** Closes without committing: what a crash would leave (for tests). */
  abandon(): void {
    this.closed = true;
    closeSync(this.dataFd);
    closeSync(this.metaFd);
    this.journal?.close();
  }

  /** The data file's descriptor, for readers that bypass the storage service (the san transport). */
  get dataFileDescriptor(): number {
    return this.dataFd;
  }

  // ---- internals: trees ------------------------------------------------------------------

  private writable(id: string): Member {
    const m = this.member(id);
    if (m.record.kind !== 'volume')
      throw new HavenError('READ_ONLY', `${m.record.name} is a snapshot and cannot be written`);
    return m;
  }

  private checkRange(m: Member, offset: number, length: number): void {
    checkRange(offset, length, m.record.size, m.record.name);
  }

  private loadRoot(m: Member): TreeNode | undefined {
    if (!m.root && m.record.rootPage !== 0) m.root = this.loadNode(m.record.rootPage);
    return m.root;
  }

  private loadNode(page: number): TreeNode {
    const cached = this.nodeCache.get(page);
    if (cached) return cached;
    readSync(this.metaFd, this.pageBuf, 0, PAGE_SIZE, pageOffset(page));
    this.stats.pagesRead++;
    const { level, birth, entries } = decodePage(this.pageBuf, page, this.dir);
    const node = new TreeNode(level, birth, entries);
    node.page = page;
    this.nodeCache.set(page, node);
    return node;
  }

  private child(node: TreeNode, i: number): TreeNode | undefined {
    const c = node.children![i];
    if (c) return c;
    const page = entryPointer(node.entries, i);
    if (page === 0) return undefined;
    const loaded = this.loadNode(page);
    node.children![i] = loaded;
    return loaded;
  }

  /** Physical cluster of a logical cluster, 0 when unmapped. */
  private lookup(m: Member, cluster: number): number {
    let node = m.root ?? this.loadRoot(m);
    for (let level = m.record.depth - 1; node && level > 0; level--)
      node = this.child(node, Math.floor(cluster / SPANS[level]!) % FANOUT);
    return node ? entryPointer(node.entries, cluster % FANOUT) : 0;
  }

  /** The leaf for `cluster`, copied on write along its path so that `m` owns every node of it. */
  private writableLeaf(m: Member, cluster: number): TreeNode {
    const gen = m.record.writeGen;
    let node = m.root ?? this.loadRoot(m);
    if (!node) node = this.newNode(m.record.depth - 1, gen);
    else if (node.birth !== gen) node = this.cowNode(node, gen);
    else this.markDirty(node);
    m.root = node;
    for (let level = m.record.depth - 1; level > 0; level--) {
      const i = Math.floor(cluster / SPANS[level]!) % FANOUT;
      let c = this.child(node, i);
      if (!c) c = this.newNode(level - 1, gen);
      else if (c.birth !== gen) c = this.cowNode(c, gen);
      else this.markDirty(c);
      node.children![i] = c;
      setEntry(node.entries, i, c.page, gen);
      node = c;
    }
    return node;
  }

  /** The leaf for `cluster` if `m` already owns its whole path (no copying needed), else undefined. */
  private writableLeafIfOwned(m: Member, cluster: number): TreeNode | undefined {
    const gen = m.record.writeGen;
    let node = m.root;
    if (!node || node.birth !== gen) return undefined;
    for (let level = m.record.depth - 1; level > 0; level--) {
      const c = this.child(node, Math.floor(cluster / SPANS[level]!) % FANOUT);
      if (!c || c.birth !== gen) return undefined;
      node = c;
    }
    const i = cluster % FANOUT;
    return entryPointer(node.entries, i) !== 0 && entryBirth(node.entries, i) === gen ? node : undefined;
  }

  private newNode(level: number, gen: number): TreeNode {
    const n = new TreeNode(level, gen);
    n.dirty = true;
    this.dirtyPages++;
    return n;
  }

  private cowNode(node: TreeNode, gen: number): TreeNode {
    this.dirtyPages++;
    return node.copy(gen);
  }

  private markDirty(node: TreeNode): void {
    if (!node.dirty) {
      node.dirty = true;
      this.dirtyPages++;
    }
  }

  private unmap(m: Member, cluster: number): void {
    const leaf = this.writableLeaf(m, cluster);
    const i = cluster % FANOUT;
    const ptr = entryPointer(leaf.entries, i);
    if (ptr !== 0) this.dropCluster(m, ptr, entryBirth(leaf.entries, i));
    setEntry(leaf.entries, i, 0, 0);
    this.journalMapping(m, cluster, 0, 0);
  }

  /**
   * Before a request is answered: its mapping changes into the journal, so that they survive this
   * process. If the journal cannot take them (a full filesystem), a commit makes them durable.
   */
  private flushJournal(): void {
    try {
      this.journal?.flushBatch();
    } catch {
      this.commit();
    }
  }

  private journalMapping(m: Member, cluster: number, pointer: number, birth: number): void {
    const index = this.memberIndex.get(m.record.id);
    if (index === undefined || !this.journal)
      throw new HavenError('INTERNAL', `member ${m.record.id} has no journal index`);
    this.journal.add(index, cluster, pointer, birth);
  }

  /** (Re)starts the journal after the commit that made its changes durable. */
  private openJournal(): void {
    this.memberIndex = new Map([...this.members.keys()].map((id, i) => [id, i]));
    if (this.journal) this.journal.reset(this.sb.seq);
    else this.journal = MapJournal.open(this.dir, this.sb.seq, this.opts.bootId ?? currentBootId());
  }

  /** Writes a dirty subtree, children first, each node into a fresh page. */
  private writeNode(node: TreeNode, seen: Set<TreeNode>): void {
    if (seen.has(node)) return;
    seen.add(node);
    if (node.children)
      for (let i = 0; i < FANOUT; i++) {
        const c = node.children[i];
        if (!c) continue;
        if (c.dirty) this.writeNode(c, seen);
        setEntry(node.entries, i, c.page, c.birth);
      }
    if (node.page !== 0) {
      this.nodeCache.delete(node.page);
      this.pendingPages.push(node.page);
    }
    node.page = this.allocatePage();
    encodePage(this.pageBuf, node.level, node.birth, node.entries);
    writeFully(this.metaFd, this.pageBuf, pageOffset(node.page));
    this.stats.pagesWritten++;
    node.dirty = false;
    this.nodeCache.set(node.page, node);
  }

  private writeSuperblock(): void {
    this.sb = {
      ...this.sb,
      seq: this.sb.seq + 1,
      members: [...this.members.values()].map((m) => m.record),
    };
    const buf = encodeSuperblock(this.sb);
    writeFully(this.metaFd, buf, (this.sb.seq % 2) * SUPERBLOCK_SIZE);
    fdatasyncSync(this.metaFd);
    this.stats.superblocksWritten++;
  }

  private nextGeneration(): number {
    const g = this.sb.nextGen++;
    if (g > MAX_GENERATION)
      throw new HavenError('NO_SPACE', `volume family ${this.dir} has used all its generations`);
    return g;
  }

  /**
   * A member stops referencing a cluster. Born in its own generation, or with no other member in
   * the family, nobody else can reference it: free it (after commit). Otherwise another member
   * may still hold it; count it, and sweep once such clusters add up.
   */
  private dropCluster(m: Member, ptr: number, birth: number): void {
    if (birth === m.record.writeGen || this.members.size === 1) this.pendingClusters.push(ptr);
    else this.maybeOrphaned++;
  }

  private maybeOrphaned = 0;

  private maybeAutoCommit(
    dirtyLimit = AUTO_COMMIT_DIRTY_PAGES,
    journalLimit = AUTO_COMMIT_JOURNAL_RECORDS,
  ): void {
    if (this.maybeOrphaned > 1024 && this.maybeOrphaned * 16 > this.sb.clusterHighWater) {
      this.maybeOrphaned = 0;
      this.collectGarbage();
    }
    if (this.dirtyPages >= dirtyLimit || (this.journal?.records ?? 0) >= journalLimit) this.commit();
  }

  // ---- internals: space ------------------------------------------------------------------

  private allocatePage(): number {
    const p = this.freePages.pop() ?? this.sb.pageHighWater++;
    this.usedPages.add(p);
    return p;
  }

  private allocateCluster(): number {
    this.opts.reserve?.(1);
    const c = this.freeClusters.pop() ?? this.sb.clusterHighWater++;
    if (c > MAX_POINTER)
      throw new HavenError('NO_SPACE', `volume family ${this.dir} has no cluster numbers left`);
    this.usedClusters.add(c);
    return c;
  }

  private unallocateCluster(c: number): void {
    this.usedClusters.delete(c);
    this.freeClusters.push(c);
    this.opts.release?.(1);
  }

  private walk(m: Member, visit: (node: TreeNode) => void, seen = new Set<TreeNode>()): void {
    const rec = (node: TreeNode) => {
      if (seen.has(node)) return;
      seen.add(node);
      visit(node);
      if (node.level > 0)
        for (let i = 0; i < FANOUT; i++) {
          const c = this.child(node, i);
          if (c) rec(c);
        }
    };
    const root = m.root ?? this.loadRoot(m);
    if (root) rec(root);
  }

  /** Marks what every member references; whatever else was in use becomes free after the next commit. */
  private collectGarbage(): void {
    this.maybeOrphaned = 0;
    const pages = new BitSet();
    const clusters = new BitSet();
    const seen = new Set<TreeNode>();
    for (const m of this.members.values())
      this.walk(
        m,
        (node) => {
          if (node.page !== 0) pages.add(node.page);
          if (node.level === 0)
            for (let i = 0; i < FANOUT; i++) {
              const p = entryPointer(node.entries, i);
              if (p !== 0) clusters.add(p);
            }
        },
        seen,
      );
    const pendingP = new Set(this.pendingPages);
    const pendingC = this.leases.heldSet();
    for (const c of this.pendingClusters) pendingC.add(c);
    this.usedPages.forEach((p) => {
      if (!pages.has(p) && !pendingP.has(p)) this.pendingPages.push(p);
    });
    this.usedClusters.forEach((c) => {
      if (!clusters.has(c) && !pendingC.has(c)) this.pendingClusters.push(c);
    });
  }

  /** Punches the given free clusters, each run of consecutive ones in one call. */
  private punchRuns(clusters: number[]): void {
    const punch = this.opts.punchHole;
    if (!punch || clusters.length === 0) return;
    const sorted = Float64Array.from(clusters).sort();
    const cs = this.clusterSize;
    let start = sorted[0]!;
    let prev = start;
    for (let i = 1; i <= sorted.length; i++) {
      const c = sorted[i];
      if (c === prev + 1) {
        prev = c;
        continue;
      }
      punch(this.dataFd, start * cs, (prev - start + 1) * cs);
      if (c !== undefined) start = prev = c;
    }
  }

  /**
   * At open: everything below the high-water marks that no tree references is free, once the
   * journal's mapping changes (a killed service's acknowledged writes) are replayed and committed.
   */
  private rebuildFreeSpace(replay: JournalRecord[]): void {
    const seen = new Set<TreeNode>();
    for (const m of this.members.values())
      this.walk(
        m,
        (node) => {
          this.usedPages.add(node.page);
          if (node.level === 0)
            for (let i = 0; i < FANOUT; i++) {
              const p = entryPointer(node.entries, i);
              if (p !== 0) this.usedClusters.add(p);
            }
        },
        seen,
      );
    const replayed = this.replay(replay);
    for (let p = this.sb.pageHighWater - 1; p >= 1; p--) if (!this.usedPages.has(p)) this.freePages.push(p);
    for (let c = this.sb.clusterHighWater - 1; c >= 1; c--)
      if (!this.usedClusters.has(c)) this.freeClusters.push(c);
    if (replayed) this.commit();
    // Free clusters still holding blocks: a crash came between a commit and its punches, or an
    // older version never punched. Give them back now (cheap to ask: the file's block count).
    // (A MiB of slack: the filesystem's own blocks for the file's extent tree count there too.)
    if (fstatSync(this.dataFd).blocks * 512 > this.usedClusters.count() * this.clusterSize + 1024 * 1024)
      this.punchRuns(this.freeClusters);
  }

  /** Applies journal records as the killed service did; returns how many were applied. */
  private replay(records: JournalRecord[]): number {
    const ids = [...this.members.keys()];
    let n = 0;
    for (const r of records) {
      const m = this.members.get(ids[r.member] ?? '');
      const clusters = m ? Math.ceil(m.record.size / this.clusterSize) : 0;
      // Anything that does not fit this family ends the replay (the journal is only ever appended).
      if (!m || m.record.kind !== 'volume' || !(r.cluster < clusters) || r.pointer > MAX_POINTER) break;
      if (r.pointer !== 0 && r.birth !== m.record.writeGen) break;
      const leaf = this.writableLeaf(m, r.cluster);
      const i = r.cluster % FANOUT;
      const old = entryPointer(leaf.entries, i);
      if (old !== 0 && old !== r.pointer) this.dropCluster(m, old, entryBirth(leaf.entries, i));
      setEntry(leaf.entries, i, r.pointer, r.birth);
      if (r.pointer !== 0) {
        this.usedClusters.add(r.pointer);
        if (r.pointer >= this.sb.clusterHighWater) this.sb.clusterHighWater = r.pointer + 1;
      }
      n++;
    }
    return n;
  }

  private zeroBuf: Buffer | undefined;
  private zeroes(): Buffer {
    return (this.zeroBuf ??= Buffer.alloc(this.clusterSize));
  }

  /** Clusters free for reuse now: off the used set, onto the free list (unsorted), their blocks punched. */
  private letGo(clusters: number[]): void {
    if (!clusters.length) return;
    for (const c of clusters) {
      this.usedClusters.delete(c);
      this.freeClusters.push(c);
    }
    this.punchRuns(clusters);
    this.opts.release?.(clusters.length);
  }

  private async preadAsync(buf: Uint8Array, at: number, len: number, pos: number): Promise<void> {
    let done = 0;
    while (done < len) {
      const n = await readAsyncFd(this.dataFd, buf, at + done, len - done, pos + done);
      if (n === 0) {
        buf.fill(0, at + done, at + len);
        return;
      }
      done += n;
    }
  }

  private preadFully(buf: Uint8Array, at: number, len: number, pos: number): void {
    let done = 0;
    while (done < len) {
      const n = readSync(this.dataFd, buf, at + done, len - done, pos + done);
      if (n === 0) {
        // Beyond the end of the sparse data file: zeroes.
        buf.fill(0, at + done, at + len);
        return;
      }
      done += n;
    }
  }

  private pwriteParts(parts: Uint8Array[], pos: number): void {
    try {
      let total = 0;
      for (const p of parts) total += p.length;
      let n =
        parts.length === 1
          ? writeSync(this.dataFd, parts[0]!, 0, parts[0]!.length, pos)
          : writevSync(this.dataFd, parts, pos);
      while (n < total) {
        // Short write (rare): finish it byte-exactly.
        const rest = new PartsCursor(parts);
        rest.take(n);
        const remaining = rest.take(total - n);
        n += writevSync(this.dataFd, remaining, pos + n);
      }
    } catch (err) {
      throw fromSystemError(err, `writing volume data in ${this.dir}`);
    }
  }
}

function writeFully(fd: number, buf: Buffer, pos: number): void {
  let done = 0;
  while (done < buf.length) done += writeSync(fd, buf, done, buf.length - done, pos + done);
}

function zeroView(zeroes: Buffer, len: number): Uint8Array {
  return zeroes.subarray(0, len);
}

function checkSize(size: number): void {
  if (!Number.isSafeInteger(size) || size <= 0 || size % 512 !== 0 || size > MAX_VOLUME_SIZE)
    throw invalidArgument(
      `volume size ${size} must be a positive multiple of 512 bytes, at most ${MAX_VOLUME_SIZE} (4 PiB)`,
    );
}

function newRecord(
  name: string,
  kind: MemberRecord['kind'],
  size: number,
  writeGen: number,
  clusterSize: number,
  labels: Record<string, string> | undefined,
): MemberRecord {
  return {
    id: randomUUID(),
    name,
    kind,
    size,
    rootPage: 0,
    rootBirth: 0,
    depth: depthFor(Math.ceil(size / clusterSize)),
    writeGen,
    createdAt: new Date().toISOString(),
    ...(labels ? { labels } : {}),
  };
}

/** Hands out consecutive sub-views of a list of buffers without copying. */
class PartsCursor {
  private i = 0;
  private at = 0;
  constructor(private readonly parts: readonly Uint8Array[]) {}

  take(len: number): Uint8Array[] {
    const out: Uint8Array[] = [];
    while (len > 0) {
      const p = this.parts[this.i]!;
      const n = Math.min(len, p.length - this.at);
      out.push(n === p.length && this.at === 0 ? p : p.subarray(this.at, this.at + n));
      this.at += n;
      len -= n;
      if (this.at === p.length) {
        this.i++;
        this.at = 0;
      }
    }
    return out;
  }
}

export function fileSize(fd: number): number {
  return fstatSync(fd).size;
}
