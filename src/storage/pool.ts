import {
  chmodSync,
  existsSync,
  fdatasync,
  mkdirSync,
  readFileSync,
  readdirSync,
  renameSync,
  rmSync,
  rmdirSync,
  statSync,
  statfsSync,
} from 'node:fs';
import { readdir, rm, stat, truncate } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { randomUUID } from 'node:crypto';
import { join } from 'node:path';
import { EOPNOTSUPP, nativeIo, type BlockDevice } from '../block/index.js';
import {
  HavenError,
  conflict,
  invalidArgument,
  logger,
  notFound,
  syncDirectory,
  writeFileAtomic,
} from '../common/index.js';
import {
  DEFAULT_CLUSTER_SIZE,
  FAMILY_FILES,
  TRIM_COMMIT_DIRTY_PAGES,
  VolumeFamily,
} from './family/family.js';
import { PAGE_SIZE, type MemberRecord } from './family/format.js';
import { MemberDevice } from './family/member-device.js';
import { POOL_MARKER } from './pool-path.js';

/**
 * Data writes stop while this much of the filesystem is still free: the tree pages of a commit,
 * a trim's above all (TRIM_COMMIT_DIRTY_PAGES), must still fit, or a full pool could never be
 * emptied again.
 */
const META_HEADROOM = 2 * TRIM_COMMIT_DIRTY_PAGES * PAGE_SIZE;

/** A family directory being removed (renamed first, so the pool forgets it at once). */
const TRASH_PREFIX = '.trash-';

const log = logger('storage');

/** What a pool advertises; policies match against these. */
export interface PoolCapabilities {
  thin: boolean;
  snapshots: boolean;
  clones: boolean;
  replication: boolean;
  encryption: boolean;
  /** Media tier, free text chosen by the operator: "fast", "standard", "archive", … */
  tier: string;
  /** The data is spread over the machines of a cluster (an RBD pool). */
  distributed?: boolean;
  /** Copies the storage keeps of every byte (an RBD pool: its Ceph pool's size). */
  replicas?: number;
}

export interface PoolConfig {
  name: string;
  id: string;
  tier: string;
  /** Upper bound on the data the pool may hold; unset: the filesystem's free space. */
  capacityBytes?: number;
  clusterSize: number;
  createdAt: string;
}

/** What `pool show` says of a pool whose provider is out of process (provider-pool.ts). */
export interface ProviderPoolInfo {
  url: string;
  apiVersion?: string;
  vendor?: string;
  health: { state: 'ok' | 'degraded' | 'failed'; message?: string };
  /** When the provider last answered `describe` (ISO time). */
  checkedAt?: string;
}

/** What `pool show` says of the Ceph side of an RBD pool (rbd/pool.ts). */
export interface CephPoolInfo {
  conf: string;
  pool: string;
  prefix: string;
  replicas?: number;
  health: { state: 'ok' | 'failed'; message?: string };
}

export interface PoolInfo {
  name: string;
  id: string;
  /** The directory; for a provider's pool, the provider's URL. */
  path: string;
  /** Set for a pool served by an out-of-process storage provider. */
  provider?: ProviderPoolInfo;
  /** Set for an RBD pool: the Ceph cluster and pool holding its volumes. */
  ceph?: CephPoolInfo;
  capabilities: PoolCapabilities;
  capacityBytes: number;
  allocatedBytes: number;
  freeBytes: number;
}

export interface VolumeInfo {
  name: string;
  id: string;
  pool: string;
  size: number;
  /** Bytes of data the volume maps (what it would take to copy it). */
  allocatedBytes: number;
  createdAt: string;
  /** For a clone: the snapshot it was made from, as "volume@snapshot". */
  origin?: string;
  labels: Record<string, string>;
}

export interface SnapshotInfo {
  name: string;
  id: string;
  volume: string;
  size: number;
  createdAt: string;
}

const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

export function checkName(kind: string, name: string): void {
  if (!NAME.test(name))
    throw invalidArgument(
      `${kind} name "${name}" is not valid: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit`,
    );
}

/**
 * A storage pool: a directory holding volume families (a volume with its snapshots and clones).
 * Volume names are unique in a pool; a snapshot is named "volume@snapshot".
 */
export class Pool {
  readonly kind = 'file';
  private readonly families = new Map<string, VolumeFamily>();

  /**
   * Which family holds each volume name, and the names each family holds: every call names a
   * volume, and a scan of every family per lookup made a site of 1,000 volumes quadratic.
   * Rebuilt for a family after each change of its members (reindex).
   */
  private readonly familyOfVolume = new Map<string, VolumeFamily>();

  private readonly volumesOfFamily = new Map<VolumeFamily, string[]>();
  private allocated = 0;
  private fsFreeCache = { at: 0, bytes: 0 };

  private constructor(
    readonly path: string,
    readonly config: PoolConfig,
  ) {}

  static create(
    path: string,
    opts: { name: string; tier?: string; capacityBytes?: number; clusterSize?: number },
  ): Pool {
    checkName('pool', opts.name);
    if (
      opts.capacityBytes !== undefined &&
      (!Number.isSafeInteger(opts.capacityBytes) || opts.capacityBytes <= 0)
    )
      throw invalidArgument(`pool capacity ${opts.capacityBytes} must be a positive number of bytes`);
    if (existsSync(join(path, 'pool.json'))) throw conflict(`a pool already exists at ${path}`);
    // Only this process's user may read the volumes' data, wherever the pool is.
    mkdirSync(path, { recursive: true, mode: 0o700 });
    chmodSync(path, 0o700);
    const id = randomUUID();
    // The marker comes first: whatever a crash leaves here is recognisably Haven's.
    writeFileAtomic(join(path, POOL_MARKER), JSON.stringify({ id, name: opts.name }) + '\n');
    mkdirSync(join(path, 'families'), { recursive: true, mode: 0o700 });
    const config: PoolConfig = {
      name: opts.name,
      id,
      tier: opts.tier ?? 'standard',
      clusterSize: opts.clusterSize ?? DEFAULT_CLUSTER_SIZE,
      createdAt: new Date().toISOString(),
      ...(opts.capacityBytes !== undefined ? { capacityBytes: opts.capacityBytes } : {}),
    };
    writeFileAtomic(join(path, 'pool.json'), JSON.stringify(config, null, 2));
    return Pool.open(path);
  }

  static open(path: string): Pool {
    let config: PoolConfig;
    try {
      config = JSON.parse(readFileSync(join(path, 'pool.json'), 'utf8')) as PoolConfig;
    } catch (err) {
      throw new HavenError(
        'NOT_FOUND',
        `no pool at ${path} (pool.json unreadable: ${(err as Error).message})`,
      );
    }
    const pool = new Pool(path, config);
    // Pools made before the marker existed get it now (delete and create rely on it).
    if (!existsSync(join(path, POOL_MARKER)))
      writeFileAtomic(join(path, POOL_MARKER), JSON.stringify({ id: config.id, name: config.name }) + '\n');
    for (const id of readdirSync(join(path, 'families'))) {
      const dir = join(path, 'families', id);
      if (id.startsWith(TRASH_PREFIX)) {
        rmSync(dir, { recursive: true, force: true }); // a deletion a crash interrupted
        continue;
      }
      try {
        const fam = VolumeFamily.open(dir, pool.familyOptions());
        if (fam.memberCount === 0) {
          fam.close();
          rmSync(dir, { recursive: true, force: true });
          continue;
        }
        pool.families.set(id, fam);
        pool.reindex(fam);
        pool.allocated += fam.allocatedBytes();
      } catch (err) {
        // A creation interrupted before its first superblock holds no data: remove it. Anything
        // else is kept for an operator to look at, never deleted silently.
        const data = join(dir, 'data');
        if (!existsSync(data) || statSync(data).size === 0) rmSync(dir, { recursive: true, force: true });
        else log.error({ dir, err: (err as Error).message }, 'volume family cannot be opened; left in place');
      }
    }
    return pool;
  }

  /** The allocation unit of its volumes. */
  get clusterSize(): number {
    return this.config.clusterSize;
  }

  get name(): string {
    return this.config.name;
  }

  info(): PoolInfo {
    const fsFree = this.fsFree(true);
    const capacity = this.config.capacityBytes ?? this.allocated + fsFree;
    return {
      name: this.config.name,
      id: this.config.id,
      path: this.path,
      capabilities: {
        thin: true,
        snapshots: true,
        clones: true,
        replication: false,
        encryption: false,
        tier: this.config.tier,
      },
      capacityBytes: capacity,
      allocatedBytes: this.allocated,
      freeBytes: Math.max(0, Math.min(capacity - this.allocated, fsFree)),
    };
  }

  // ---- volumes ---------------------------------------------------------------------------

  createVolume(name: string, size: number, labels: Record<string, string> = {}): VolumeInfo {
    checkName('volume', name);
    if (this.findVolume(name)) throw conflict(`volume ${name} already exists in pool ${this.name}`);
    const id = randomUUID();
    const fam = VolumeFamily.create(
      join(this.path, 'families', id),
      { name, size, labels },
      this.familyOptions(),
    );
    this.families.set(id, fam);
    this.reindex(fam);
    return this.volumeInfo(fam, fam.find(name)!);
  }

  listVolumes(): VolumeInfo[] {
    const out: VolumeInfo[] = [];
    for (const fam of this.families.values())
      for (const m of fam.list()) if (m.kind === 'volume') out.push(this.volumeInfo(fam, m));
    return out.sort((a, b) => a.name.localeCompare(b.name));
  }

  hasVolume(name: string): boolean {
    return this.findVolume(name) !== undefined;
  }

  volume(name: string): VolumeInfo {
    const { family, record } = this.requireVolume(name);
    return this.volumeInfo(family, record);
  }

  /** A volume's labels (cheaper than volume(), which counts its mapped bytes). */
  volumeLabels(name: string): Record<string, string> {
    return this.requireVolume(name).record.labels ?? {};
  }

  /** Sets (or, with undefined, removes) one label of a volume, durably. */
  setVolumeLabel(name: string, key: string, value: string | undefined): void {
    const { family, record } = this.requireVolume(name);
    family.setLabel(record.id, key, value);
  }

  resizeVolume(name: string, size: number): VolumeInfo {
    const { family, record } = this.requireVolume(name);
    family.resize(record.id, size);
    return this.volumeInfo(family, family.find(record.id)!);
  }

  renameVolume(name: string, to: string): VolumeInfo {
    checkName('volume', to);
    if (this.findVolume(to)) throw conflict(`volume ${to} already exists in pool ${this.name}`);
    const { family, record } = this.requireVolume(name);
    family.rename(record.id, to);
    this.reindex(family);
    return this.volumeInfo(family, family.find(record.id)!);
  }

  /**
   * Deletes a volume that is alone in its family (a moved volume's source) without blocking: the
   * family leaves the pool at once (its directory renamed away, durably), and its files are
   * removed on the thread pool — freeing a large file can take long with online discard.
   */
  async dropVolume(name: string): Promise<void> {
    const { family } = this.requireVolume(name);
    if (family.memberCount !== 1) return this.deleteVolume(name);
    const id = this.keyOf(family);
    family.close();
    this.families.delete(id);
    this.unindex(family);
    this.allocated -= family.allocatedBytes();
    const trash = join(this.path, 'families', `${TRASH_PREFIX}${id}`);
    renameSync(family.dir, trash);
    syncDirectory(join(this.path, 'families'));
    for (const f of await readdir(trash, { withFileTypes: true }))
      if (f.isFile()) await freeGradually(join(trash, f.name));
    await rm(trash, { recursive: true, force: true });
  }

  deleteVolume(name: string): void {
    const { family, record } = this.requireVolume(name);
    family.delete(record.id);
    this.reindex(family);
    this.dropEmptyFamily(family);
  }

  // ---- snapshots and clones --------------------------------------------------------------

  snapshot(volume: string, snapshot: string): SnapshotInfo {
    checkName('snapshot', snapshot);
    const { family, record } = this.requireVolume(volume);
    if (this.findSnapshot(family, record, snapshot))
      throw conflict(`volume ${volume} already has a snapshot ${snapshot}`);
    const snap = family.snapshot(record.id, snapshot);
    return { name: snap.name, id: snap.id, volume, size: snap.size, createdAt: snap.createdAt };
  }

  listSnapshots(volume: string): SnapshotInfo[] {
    const { family, record } = this.requireVolume(volume);
    return family
      .list()
      .filter((m) => m.kind === 'snapshot' && m.parent === record.id)
      .map((m) => ({ name: m.name, id: m.id, volume, size: m.size, createdAt: m.createdAt }));
  }

  deleteSnapshot(volume: string, snapshot: string): void {
    const { family, snap } = this.requireSnapshot(volume, snapshot);
    family.delete(snap.id);
  }

  revert(volume: string, snapshot: string): void {
    const { family, record, snap } = this.requireSnapshot(volume, snapshot);
    family.revert(record.id, snap.id);
  }

  clone(volume: string, snapshot: string, name: string, labels: Record<string, string> = {}): VolumeInfo {
    checkName('volume', name);
    if (this.findVolume(name)) throw conflict(`volume ${name} already exists in pool ${this.name}`);
    const { family, snap } = this.requireSnapshot(volume, snapshot);
    const made = family.clone(snap.id, name, labels);
    this.reindex(family);
    return this.volumeInfo(family, made);
  }

  /**
   * A BlockDevice for "volume" or "volume@snapshot" (read-only). The device stays valid until
   * the pool closes; several may be open on one volume (they share one family, so a flush
   * through any of them covers all).
   */
  openDevice(target: string, opts: { readOnly?: boolean } = {}): BlockDevice & { id: string } {
    const at = target.indexOf('@');
    if (at >= 0) {
      const { family, snap } = this.requireSnapshot(target.slice(0, at), target.slice(at + 1));
      return new MemberDevice(family, snap.id, true);
    }
    const { family, record } = this.requireVolume(target);
    return new MemberDevice(family, record.id, opts.readOnly ?? false);
  }

  /** The family holding a volume, for the storage service's own operations (tap, bitmaps). */
  familyOf(volume: string): { family: VolumeFamily; id: string } {
    const { family, record } = this.requireVolume(volume);
    return { family, id: record.id };
  }

  /** A stable key of the volume (its family's id): its bitmaps' folder. */
  volumeKey(name: string): string {
    return this.familyOf(name).id;
  }

  /** Makes what a move copied to the volume so far durable, off the event loop (its data file's fdatasync). */
  copySync(name: string): () => Promise<void> {
    const fd = this.familyOf(name).family.dataFileDescriptor;
    return () => new Promise<void>((res, rej) => fdatasync(fd, (e) => (e ? rej(e) : res())));
  }

  flush(): void {
    for (const fam of this.families.values()) fam.commit();
  }

  close(): void {
    for (const fam of this.families.values()) fam.close();
    this.families.clear();
    this.familyOfVolume.clear();
    this.volumesOfFamily.clear();
  }

  /**
   * Removes a closed, empty pool from disk — only the files Haven made (its families' data and
   * meta, bitmaps, pool.json, the marker), each folder only once empty — and returns what is
   * left: anything else in the directory (the operator's, or a family that could not be opened)
   * stays where it is, and so does the directory.
   */
  removeFiles(): string[] {
    if (this.families.size) throw conflict(`pool ${this.name} is open or still holds volumes`);
    const p = this.path;
    const families = join(p, 'families');
    if (existsSync(families))
      for (const e of readdirSync(families))
        if (e.startsWith(TRASH_PREFIX)) removeKnown(join(families, e), (f) => FAMILY_FILES.includes(f));
    rmdirIfEmpty(families);
    const bitmaps = join(p, 'bitmaps');
    if (existsSync(bitmaps)) {
      for (const e of readdirSync(bitmaps, { withFileTypes: true }))
        if (e.isDirectory()) removeKnown(join(bitmaps, e.name), (f) => /\.bitmap(\.\d+\.tmp)?$/.test(f));
      removeKnown(bitmaps, (f) => f === '.in-use', false);
      rmdirIfEmpty(bitmaps);
    }
    removeKnown(p, (f) => f === 'pool.json' || /^\.pool\.json\.\d+\.tmp$/.test(f), false);
    if (markerId(p) === this.config.id) rmSync(join(p, POOL_MARKER));
    rmdirIfEmpty(p);
    return existsSync(p) ? readdirSync(p) : [];
  }

  // ---- internals -------------------------------------------------------------------------

  private familyOptions() {
    return {
      clusterSize: this.config.clusterSize,
      reserve: (clusters: number) => this.reserve(clusters * this.config.clusterSize),
      release: (clusters: number) => {
        this.allocated -= clusters * this.config.clusterSize;
        this.fsFreeCache.at = 0; // the holes punched gave the filesystem space back
      },
      ...(this.punch ? { punchHole: this.punch } : {}),
    };
  }

  /** Gives a freed range of a data file back to the filesystem; a failure costs space, never data. */
  private readonly punch = ((): ((fd: number, offset: number, length: number) => void) | undefined => {
    const io = nativeIo();
    if (!io) return undefined;
    let unsupported = false;
    return (fd, offset, length) => {
      if (unsupported) return;
      const r = io.fallocate(fd, 1, offset, length);
      if (r === -EOPNOTSUPP) {
        unsupported = true;
        log.warn(
          { pool: this.config.name, path: this.path },
          'the filesystem cannot punch holes: freed space is only reused',
        );
      } else if (r < 0)
        log.warn({ pool: this.config.name, offset, length, errno: -r }, 'punching a hole failed');
    };
  })();

  private reserve(bytes: number): void {
    const cap = this.config.capacityBytes;
    if (cap !== undefined && this.allocated + bytes > cap)
      throw new HavenError(
        'NO_SPACE',
        `pool ${this.name} is full (capacity ${cap} bytes, ${this.allocated} allocated)`,
      );
    if (this.fsFree(false) < bytes + META_HEADROOM)
      throw new HavenError(
        'NO_SPACE',
        `pool ${this.name} is full: its filesystem at ${this.path} has no space left`,
      );
    this.allocated += bytes;
    this.fsFreeCache.bytes -= bytes;
  }

  /** Free bytes of the pool's filesystem, asked of the kernel at most once a second. */
  private fsFree(fresh: boolean): number {
    const now = Date.now();
    if (fresh || now - this.fsFreeCache.at > 1000) {
      const s = statfsSync(this.path);
      this.fsFreeCache = { at: now, bytes: s.bavail * s.bsize };
    }
    return this.fsFreeCache.bytes;
  }

  private findVolume(name: string): { family: VolumeFamily; record: MemberRecord } | undefined {
    const family = this.familyOfVolume.get(name);
    const record = family?.volumeNamed(name);
    return record ? { family: family!, record } : undefined;
  }

  /** Brings the name index up to date with a family's members (after any change to them). */
  private reindex(family: VolumeFamily): void {
    this.unindex(family);
    const names = family.volumeNames();
    for (const n of names) this.familyOfVolume.set(n, family);
    this.volumesOfFamily.set(family, names);
  }

  private unindex(family: VolumeFamily): void {
    for (const n of this.volumesOfFamily.get(family) ?? [])
      if (this.familyOfVolume.get(n) === family) this.familyOfVolume.delete(n);
    this.volumesOfFamily.delete(family);
  }

  private requireVolume(name: string): { family: VolumeFamily; record: MemberRecord } {
    const v = this.findVolume(name);
    if (!v) throw notFound(`no volume ${name} in pool ${this.name}`);
    return v;
  }

  private findSnapshot(family: VolumeFamily, volume: MemberRecord, name: string): MemberRecord | undefined {
    return family.snapshotNamed(volume.id, name);
  }

  private requireSnapshot(volume: string, snapshot: string) {
    const { family, record } = this.requireVolume(volume);
    const snap = this.findSnapshot(family, record, snapshot);
    if (!snap) throw notFound(`volume ${volume} has no snapshot ${snapshot}`);
    return { family, record, snap };
  }

  private volumeInfo(family: VolumeFamily, m: MemberRecord): VolumeInfo {
    const parent = m.parent ? family.find(m.parent) : undefined;
    const origin =
      parent?.kind === 'snapshot' ? `${family.find(parent.parent!)?.name ?? '?'}@${parent.name}` : undefined;
    return {
      name: m.name,
      id: m.id,
      pool: this.name,
      size: m.size,
      allocatedBytes: family.mappedBytes(m.id),
      createdAt: m.createdAt,
      labels: m.labels ?? {},
      ...(origin ? { origin } : {}),
    };
  }

  private dropEmptyFamily(family: VolumeFamily): void {
    if (family.memberCount > 0) return;
    family.close();
    this.families.delete(this.keyOf(family));
    this.unindex(family);
    rmSync(family.dir, { recursive: true, force: true });
  }

  /** The key (and folder name) of a family of this pool. */
  private keyOf(family: VolumeFamily): string {
    for (const [id, f] of this.families) if (f === family) return id;
    throw new HavenError('INTERNAL', `a volume family of pool ${this.name} is not in it`);
  }
}

/** Removes the files of `dir` that `mine` names, then `dir` itself when it is empty (and `andDir`). */
function removeKnown(dir: string, mine: (file: string) => boolean, andDir = true): void {
  if (!existsSync(dir)) return;
  for (const e of readdirSync(dir, { withFileTypes: true }))
    if (e.isFile() && mine(e.name)) rmSync(join(dir, e.name));
  if (andDir) rmdirIfEmpty(dir);
}

function rmdirIfEmpty(dir: string): void {
  if (existsSync(dir) && readdirSync(dir).length === 0) rmdirSync(dir);
}

function markerId(dir: string): string | undefined {
  try {
    return (JSON.parse(readFileSync(join(dir, POOL_MARKER), 'utf8')) as { id?: string }).id;
  } catch {
    return undefined;
  }
}

/** 8 MiB: at 32 MiB a guest writing during a moved source's removal lost ~10% of its rate (decision 0010). */
const FREE_STEP = 8 * 1024 * 1024;
const FREE_PAUSE_MS = 10;

/**
 * Shrinks a file to nothing a slice at a time, from its end: freeing gigabytes at once (with
 * online discard, a burst of discards) stalls the disk for everyone's I/O, the VMs' included.
 */
async function freeGradually(path: string): Promise<void> {
  let end = (await stat(path)).size;
  while (end > FREE_STEP) {
    end -= FREE_STEP;
    await truncate(path, end);
    await sleep(FREE_PAUSE_MS);
  }
}
