import { existsSync, mkdirSync, readFileSync, readdirSync, rmSync, rmdirSync } from 'node:fs';
import { randomUUID } from 'node:crypto';
import { join } from 'node:path';
import type { BlockDevice } from '../../block/index.js';
import {
  HavenError,
  conflict,
  errorMessage,
  invalidArgument,
  logger,
  notFound,
  writeFileAtomic,
} from '../../common/index.js';
import { MAX_VOLUME_SIZE } from '../family/family.js';
import { POOL_MARKER } from '../pool-path.js';
import { checkName, type CephPoolInfo, type PoolInfo, type SnapshotInfo, type VolumeInfo } from '../pool.js';
import { CephCluster } from './cluster.js';
import { RbdDevice } from './device.js';
import { RbdImage } from './image.js';
import { rbdError } from './native.js';

const log = logger('storage');

/** What `pool create --type rbd` records (pool.json of the pool's local directory). */
export interface RbdPoolConfig {
  type: 'rbd';
  name: string;
  id: string;
  tier: string;
  capacityBytes?: number;
  createdAt: string;
  ceph: {
    /** ceph.conf of the cluster (monitors, options); clients of the cluster need it too. */
    conf: string;
    /** The Ceph pool holding the images. */
    pool: string;
    /** Images are named PREFIX + volume; others in the Ceph pool are not the site's. */
    prefix: string;
  };
}

export interface RbdPoolOptions {
  name: string;
  conf: string;
  cephPool: string;
  prefix?: string;
  tier?: string;
  capacityBytes?: number;
}

const LABEL_PREFIX = 'haven.label.';
/** Listings re-read the Ceph pool's image directory at most this often. */
const LIST_TTL_MS = 2000;
/** A volume's allocated bytes (rbd_diff_iterate2 over the object map) are counted at most this often. */
const USAGE_TTL_MS = 5000;
const REPLICAS_TTL_MS = 30_000;
/** An unreachable cluster is tried again in the background this often. */
const RECONNECT_MS = 30_000;
/** Reported for instant recovery's copy granularity (not offered on RBD pools). */
const CLUSTER_SIZE = 64 * 1024;

/**
 * A pool whose volumes are RBD images in a Ceph pool, through librbd (native/haven_rbd.c).
 * Snapshots, clones (v2) and revert are Ceph's own operations (`rbd snap ls`, `rbd children`
 * show them); labels are image metadata (`haven.label.KEY`). The pool keeps a local directory
 * (pool.json and the volumes' dirty bitmaps); the data is in Ceph. Each volume has one open
 * image handle, shared by every device of it; snapshots open their own, read-only.
 *
 * Control operations are synchronous librbd calls (milliseconds against the cluster); the data
 * path, image removal of a move and block status are asynchronous. A cluster that cannot be
 * reached when the pool opens leaves the pool failed (no volumes listed, every operation refused
 * naming the reason) and is tried again in the background.
 */
export class RbdPool {
  readonly kind = 'rbd';
  readonly clusterSize = CLUSTER_SIZE;
  private cluster: CephCluster | undefined;
  private failure: string | undefined;
  private retry: NodeJS.Timeout | undefined;
  private readonly images = new Map<string, RbdImage>();
  private readonly labels = new Map<string, Record<string, string>>();
  private readonly usage = new Map<string, { at: number; bytes: number }>();
  private listed: { at: number; names: Set<string> } | undefined;
  private replicaCount: { at: number; n: number } | undefined;
  private closed = false;

  private constructor(
    readonly path: string,
    readonly config: RbdPoolConfig,
    cluster: CephCluster | undefined,
  ) {
    this.cluster = cluster;
  }

  /**
   * Creates the pool's directory and records it, once the cluster answered and holds the Ceph
   * pool (connecting off the event loop, within the timeout).
   */
  static async create(path: string, opts: RbdPoolOptions & { timeoutSeconds?: number }): Promise<RbdPool> {
    checkName('pool', opts.name);
    if (!opts.conf) throw invalidArgument("an RBD pool needs the cluster's ceph.conf (--ceph-conf)");
    if (!opts.cephPool)
      throw invalidArgument('an RBD pool needs the Ceph pool that holds its images (--ceph-pool)');
    if (opts.prefix !== undefined && !/^[A-Za-z0-9._-]{0,32}$/.test(opts.prefix))
      throw invalidArgument(
        `image prefix "${opts.prefix}" is not valid: up to 32 letters, digits, '.', '_' or '-'`,
      );
    if (
      opts.capacityBytes !== undefined &&
      (!Number.isSafeInteger(opts.capacityBytes) || opts.capacityBytes <= 0)
    )
      throw invalidArgument(`pool capacity ${opts.capacityBytes} must be a positive number of bytes`);
    if (existsSync(join(path, 'pool.json'))) throw conflict(`a pool already exists at ${path}`);
    const cluster = await CephCluster.connect(opts.conf, {
      ...(opts.timeoutSeconds ? { timeoutSeconds: opts.timeoutSeconds } : {}),
    });
    try {
      cluster.ioctx(opts.cephPool);
      cluster.replicas(opts.cephPool);
    } catch (err) {
      cluster.close();
      throw err;
    }
    mkdirSync(path, { recursive: true, mode: 0o700 });
    const id = randomUUID();
    writeFileAtomic(join(path, POOL_MARKER), JSON.stringify({ id, name: opts.name }) + '\n');
    const config: RbdPoolConfig = {
      type: 'rbd',
      name: opts.name,
      id,
      tier: opts.tier ?? 'standard',
      createdAt: new Date().toISOString(),
      ...(opts.capacityBytes !== undefined ? { capacityBytes: opts.capacityBytes } : {}),
      ceph: { conf: opts.conf, pool: opts.cephPool, prefix: opts.prefix ?? '' },
    };
    writeFileAtomic(join(path, 'pool.json'), JSON.stringify(config, null, 2));
    return new RbdPool(path, config, cluster);
  }

  /**
   * Opens a recorded pool; a cluster that does not answer (within the timeout) leaves it failed,
   * not thrown. `connected`: the outcome of connecting to its cluster already (StorageService
   * connects every cluster of a site at once, off the event loop); absent: connects here.
   */
  static open(path: string, connected?: CephCluster | Error): RbdPool {
    let config: RbdPoolConfig;
    try {
      config = JSON.parse(readFileSync(join(path, 'pool.json'), 'utf8')) as RbdPoolConfig;
    } catch (err) {
      throw new HavenError('NOT_FOUND', `no pool at ${path} (pool.json unreadable: ${errorMessage(err)})`);
    }
    const pool = new RbdPool(path, config, undefined);
    try {
      if (connected instanceof Error) throw connected;
      const c = connected ?? CephCluster.connectSync(config.ceph.conf);
      pool.cluster = c;
      c.ioctx(config.ceph.pool);
    } catch (err) {
      pool.failed(err);
    }
    return pool;
  }

  /** The Ceph configuration file a recorded pool connects with; undefined when unreadable. */
  static confOf(path: string): string | undefined {
    try {
      return (JSON.parse(readFileSync(join(path, 'pool.json'), 'utf8')) as RbdPoolConfig).ceph.conf;
    } catch {
      return undefined;
    }
  }

  static isRbdPool(path: string): boolean {
    try {
      return (JSON.parse(readFileSync(join(path, 'pool.json'), 'utf8')) as { type?: string }).type === 'rbd';
    } catch {
      return false;
    }
  }

  get name(): string {
    return this.config.name;
  }

  info(): PoolInfo & { ceph: CephPoolInfo } {
    const c = this.config;
    let replicas: number | undefined;
    let allocated = 0;
    let available: number | undefined;
    if (!this.failure)
      try {
        replicas = this.replicas();
        for (const v of this.names()) allocated += this.allocatedOf(v);
        const st = this.conn().stat();
        // A cluster without a ceph-mgr reports no usage at all: then only --capacity says.
        if (st.totalBytes > 0) available = Math.floor(st.availableBytes / Math.max(1, replicas));
      } catch (err) {
        log.warn({ pool: c.name, err: errorMessage(err) }, 'asking Ceph about the pool failed');
      }
    const capacity = c.capacityBytes ?? (available !== undefined ? allocated + available : allocated);
    const free = Math.max(0, Math.min(capacity - allocated, available ?? capacity - allocated));
    return {
      name: c.name,
      id: c.id,
      path: this.path,
      capabilities: {
        thin: true,
        snapshots: true,
        clones: true,
        replication: false,
        encryption: false,
        tier: c.tier,
        distributed: true,
        ...(replicas !== undefined ? { replicas } : {}),
      },
      capacityBytes: capacity,
      allocatedBytes: allocated,
      freeBytes: this.failure ? 0 : free,
      ceph: {
        conf: c.ceph.conf,
        pool: c.ceph.pool,
        prefix: c.ceph.prefix,
        ...(replicas !== undefined ? { replicas } : {}),
        health: this.failure ? { state: 'failed', message: this.failure } : { state: 'ok' },
      },
    };
  }

  // ---- volumes ---------------------------------------------------------------------------

  createVolume(name: string, size: number, labels: Record<string, string> = {}): VolumeInfo {
    checkName('volume', name);
    checkSize(size);
    if (this.hasVolume(name)) throw conflict(`volume ${name} already exists in pool ${this.name}`);
    const r = this.rbd().create(this.io(), this.imageName(name), size, 0);
    if (r === -17)
      throw conflict(`volume ${name} already exists in pool ${this.name} (RBD image ${this.spec(name)})`);
    if (r < 0) throw rbdError(this.rbd(), r, `pool ${this.name}: cannot create RBD image ${this.spec(name)}`);
    this.names().add(name);
    this.writeLabels(name, labels);
    return this.volume(name);
  }

  listVolumes(): VolumeInfo[] {
    if (this.failure) return [];
    return [...this.names(true)]
      .sort((a, b) => a.localeCompare(b))
      .flatMap((n) => {
        try {
          return [this.volume(n)];
        } catch (err) {
          log.warn({ pool: this.name, volume: n, err: errorMessage(err) }, 'RBD image cannot be opened');
          return [];
        }
      });
  }

  hasVolume(name: string): boolean {
    return !this.failure && this.names().has(name);
  }

  volume(name: string): VolumeInfo {
    const img = this.image(name);
    const p = img.parent();
    const pre = this.config.ceph.prefix;
    const origin =
      p && p.pool === this.config.ceph.pool && p.image.startsWith(pre)
        ? `${p.image.slice(pre.length)}@${p.snapshot}`
        : p
          ? `${p.pool}/${p.image}@${p.snapshot}`
          : undefined;
    return {
      name,
      id: img.id,
      pool: this.name,
      size: img.size,
      allocatedBytes: this.allocatedOf(name),
      createdAt: img.createdAt,
      labels: { ...this.volumeLabels(name) },
      ...(origin ? { origin } : {}),
    };
  }

  volumeLabels(name: string): Record<string, string> {
    let l = this.labels.get(name);
    if (!l) {
      l = {};
      for (const [k, v] of Object.entries(this.image(name).metadata()))
        if (k.startsWith(LABEL_PREFIX)) l[k.slice(LABEL_PREFIX.length)] = v;
      this.labels.set(name, l);
    }
    return l;
  }

  setVolumeLabel(name: string, key: string, value: string | undefined): void {
    this.image(name).setMetadata(LABEL_PREFIX + key, value);
    const l = { ...this.volumeLabels(name) };
    if (value === undefined) delete l[key];
    else l[key] = value;
    this.labels.set(name, l);
  }

  resizeVolume(name: string, size: number): VolumeInfo {
    checkSize(size);
    const img = this.image(name);
    if (size < img.size)
      throw invalidArgument(`volume ${name} is ${img.size} bytes; shrinking to ${size} is not supported`);
    img.resize(size);
    return this.volume(name);
  }

  renameVolume(name: string, to: string): VolumeInfo {
    checkName('volume', to);
    if (this.hasVolume(to)) throw conflict(`volume ${to} already exists in pool ${this.name}`);
    this.image(name);
    const r = this.rbd().rename(this.io(), this.imageName(name), this.imageName(to));
    if (r < 0)
      throw rbdError(
        this.rbd(),
        r,
        `pool ${this.name}: cannot rename ${this.spec(name)} to ${this.spec(to)}`,
      );
    for (const m of [this.images, this.labels, this.usage] as Map<string, unknown>[])
      if (m.has(name)) {
        m.set(to, m.get(name));
        m.delete(name);
      }
    const names = this.names();
    names.delete(name);
    names.add(to);
    return this.volume(to);
  }

  /** Deletes a volume without blocking: its image handle closes once idle, its objects go on the thread pool. */
  async dropVolume(name: string): Promise<void> {
    this.refuseDependents(name);
    const img = this.image(name);
    this.forget(name);
    await img.close();
    const rbd = this.rbd();
    const r = await new Promise<number>((res) => rbd.removeAsync(this.io(), this.imageName(name), res));
    if (r < 0 && r !== -2)
      throw rbdError(rbd, r, `pool ${this.name}: cannot remove RBD image ${this.spec(name)}`);
  }

  deleteVolume(name: string): void {
    this.refuseDependents(name);
    this.image(name).closeNow();
    this.forget(name);
    const r = this.rbd().remove(this.io(), this.imageName(name));
    if (r < 0 && r !== -2)
      throw rbdError(this.rbd(), r, `pool ${this.name}: cannot remove RBD image ${this.spec(name)}`);
  }

  // ---- snapshots and clones (Ceph's own) ---------------------------------------------------

  snapshot(volume: string, snapshot: string): SnapshotInfo {
    checkName('snapshot', snapshot);
    const img = this.image(volume);
    if (img.snapshots().some((s) => s.name === snapshot))
      throw conflict(`volume ${volume} already has a snapshot ${snapshot}`);
    img.snapCreate(snapshot);
    return this.listSnapshots(volume).find((s) => s.name === snapshot)!;
  }

  listSnapshots(volume: string): SnapshotInfo[] {
    const img = this.image(volume);
    return img.snapshots().map((s) => ({
      name: s.name,
      id: `${img.id}.${s.id}`,
      volume,
      size: s.size,
      createdAt: s.createdAt,
    }));
  }

  deleteSnapshot(volume: string, snapshot: string): void {
    const img = this.requireSnapshot(volume, snapshot);
    const clones = this.clonesOf(volume, snapshot);
    if (clones.length)
      throw conflict(
        `snapshot ${volume}@${snapshot} is the origin of clone ${clones.join(', ')}; delete the clone first`,
      );
    img.snapRemove(snapshot);
  }

  /** Rolls the image back to the snapshot (librbd rewrites every object that changed since). */
  revert(volume: string, snapshot: string): void {
    this.requireSnapshot(volume, snapshot).snapRollback(snapshot);
    this.usage.delete(volume);
  }

  clone(volume: string, snapshot: string, name: string, labels: Record<string, string> = {}): VolumeInfo {
    checkName('volume', name);
    if (this.hasVolume(name)) throw conflict(`volume ${name} already exists in pool ${this.name}`);
    this.requireSnapshot(volume, snapshot);
    const io = this.io();
    const r = this.rbd().clone(io, this.imageName(volume), snapshot, io, this.imageName(name));
    if (r < 0)
      throw rbdError(
        this.rbd(),
        r,
        `pool ${this.name}: cannot clone ${this.spec(volume)}@${snapshot} to ${this.spec(name)}`,
      );
    this.names().add(name);
    // librbd copies the parent's image metadata into the clone: a clone has the labels it is given
    // and none of its origin's (a replica's label would hide a clone of its checkpoint).
    for (const k of Object.keys(this.volumeLabels(name)))
      if (!(k in labels)) this.setVolumeLabel(name, k, undefined);
    this.writeLabels(name, labels);
    return this.volume(name);
  }

  /** The volumes cloned from a snapshot (`rbd children`). */
  clonesOf(volume: string, snapshot: string): string[] {
    const snap = RbdImage.open(this.rbd(), this.io(), this.imageName(volume), { snapshot });
    try {
      const pre = this.config.ceph.prefix;
      return snap
        .children()
        .map((c) =>
          c.pool === this.config.ceph.pool && c.image.startsWith(pre)
            ? c.image.slice(pre.length)
            : `${c.pool}/${c.image}`,
        );
    } finally {
      snap.closeNow();
    }
  }

  // ---- data path ---------------------------------------------------------------------------

  /** "volume" (the volume's one image handle) or "volume@snapshot" (a handle of its own, read-only). */
  openDevice(target: string, opts: { readOnly?: boolean } = {}): BlockDevice {
    const at = target.indexOf('@');
    if (at >= 0) {
      const volume = target.slice(0, at);
      const snapshot = target.slice(at + 1);
      this.requireSnapshot(volume, snapshot);
      const img = RbdImage.open(this.rbd(), this.io(), this.imageName(volume), {
        snapshot,
        label: `snapshot ${snapshot} of ${volume} (RBD ${this.spec(volume)}@${snapshot})`,
      });
      return new RbdDevice(img, { owned: true });
    }
    return new RbdDevice(this.image(target), opts);
  }

  /**
   * The extents that differ between two snapshots of a volume, from Ceph (rbd_diff_iterate2 from
   * `fromSnapshot` to `toSnapshot`, off the event loop): written and discarded extents alike,
   * merged, exact to the byte (not whole objects). What a backup reads when the volume's dirty
   * bitmaps cannot be trusted but the previous backup's snapshot is still on the image.
   */
  async changedExtents(
    volume: string,
    fromSnapshot: string,
    toSnapshot: string,
  ): Promise<{ offset: number; length: number }[]> {
    this.requireSnapshot(volume, fromSnapshot);
    this.requireSnapshot(volume, toSnapshot);
    const img = RbdImage.open(this.rbd(), this.io(), this.imageName(volume), {
      snapshot: toSnapshot,
      label: `snapshot ${toSnapshot} of ${volume} (RBD ${this.spec(volume)}@${toSnapshot})`,
    });
    try {
      const out: { offset: number; length: number }[] = [];
      for (const e of await img.diff(0, img.size, { fromSnapshot })) {
        const last = out[out.length - 1];
        if (last && last.offset + last.length === e.offset) last.length += e.length;
        else out.push({ offset: e.offset, length: e.length });
      }
      return out;
    } finally {
      await img.close();
    }
  }

  /** The image's RBD handle, for the data path of backups (changed extents from Ceph). */
  imageOf(volume: string): RbdImage {
    return this.image(volume);
  }

  /** A stable key of the volume (the image's id): its bitmaps' folder. */
  volumeKey(name: string): string {
    return this.image(name).id;
  }

  /** Makes what a move copied so far durable (every completed write already is: this confirms it). */
  copySync(name: string): () => Promise<void> {
    const img = this.image(name);
    return async () => {
      await img.flush();
    };
  }

  /** Nothing to commit: every completed write is on the OSDs. */
  flush(): void {}

  close(): void {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.retry);
    const waits: Promise<void>[] = [];
    for (const img of this.images.values())
      try {
        img.closeNow();
      } catch {
        waits.push(img.close().catch(() => undefined));
      }
    this.images.clear();
    const c = this.cluster;
    this.cluster = undefined;
    if (!c) return;
    if (waits.length) void Promise.all(waits).then(() => c.close());
    else c.close();
  }

  /** Removes the pool's local files (pool.json, marker, bitmaps); the Ceph pool is the operator's. */
  removeFiles(): string[] {
    if (this.images.size && !this.closed) throw conflict(`pool ${this.name} is open`);
    const p = this.path;
    const bitmaps = join(p, 'bitmaps');
    if (existsSync(bitmaps)) {
      for (const e of readdirSync(bitmaps, { withFileTypes: true }))
        if (e.isDirectory()) {
          const d = join(bitmaps, e.name);
          for (const f of readdirSync(d)) if (/\.bitmap(\.\d+\.tmp)?$/.test(f)) rmSync(join(d, f));
          rmdirIfEmpty(d);
        }
      rmSync(join(bitmaps, '.in-use'), { force: true });
      rmdirIfEmpty(bitmaps);
    }
    rmSync(join(p, 'pool.json'), { force: true });
    rmSync(join(p, POOL_MARKER), { force: true });
    rmdirIfEmpty(p);
    return existsSync(p) ? readdirSync(p) : [];
  }

  // ---- internals -------------------------------------------------------------------------

  private failed(err: unknown): void {
    this.failure = `the Ceph cluster cannot be reached: ${errorMessage(err)}`;
    this.cluster?.close();
    this.cluster = undefined;
    log.error(
      { pool: this.name, conf: this.config.ceph.conf, err: errorMessage(err) },
      'RBD pool unavailable',
    );
    this.retry ??= setInterval(() => void this.reconnect(), RECONNECT_MS);
    this.retry.unref();
  }

  private async reconnect(): Promise<void> {
    try {
      const c = await CephCluster.connect(this.config.ceph.conf);
      c.ioctx(this.config.ceph.pool);
      if (this.closed) return c.close();
      this.cluster = c;
      this.failure = undefined;
      clearInterval(this.retry);
      this.retry = undefined;
      log.info({ pool: this.name }, 'RBD pool reachable again');
    } catch (err) {
      this.failure = `the Ceph cluster cannot be reached: ${errorMessage(err)}`;
    }
  }

  private conn(): CephCluster {
    if (!this.cluster)
      throw new HavenError(
        'IO',
        `pool ${this.name}: ${this.failure ?? 'the pool is closed'} (${this.config.ceph.conf})`,
      );
    return this.cluster;
  }

  private rbd() {
    return this.conn().rbd;
  }

  private io() {
    return this.conn().ioctx(this.config.ceph.pool);
  }

  private imageName(volume: string): string {
    return this.config.ceph.prefix + volume;
  }

  private spec(volume: string): string {
    return `${this.config.ceph.pool}/${this.imageName(volume)}`;
  }

  /** The site's volumes among the Ceph pool's images (re-read at most every LIST_TTL_MS, or now). */
  private names(fresh = false): Set<string> {
    const now = Date.now();
    if (!this.listed || fresh || now - this.listed.at > LIST_TTL_MS) {
      const rbd = this.rbd();
      const all = rbd.list(this.io());
      if (typeof all === 'number')
        throw rbdError(rbd, all, `pool ${this.name}: list RBD images of ${this.config.ceph.pool}`);
      const pre = this.config.ceph.prefix;
      const names = new Set<string>();
      for (const [img] of all)
        if (img.startsWith(pre) && /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/.test(img.slice(pre.length)))
          names.add(img.slice(pre.length));
      this.listed = { at: now, names };
    }
    return this.listed.names;
  }

  private image(volume: string): RbdImage {
    let img = this.images.get(volume);
    if (img && !img.isClosed) return img;
    if (!this.names().has(volume) && !this.names(true).has(volume))
      throw notFound(`no volume ${volume} in pool ${this.name}`);
    img = RbdImage.open(this.rbd(), this.io(), this.imageName(volume), {
      label: `volume ${volume} (RBD ${this.spec(volume)})`,
    });
    this.images.set(volume, img);
    return img;
  }

  private requireSnapshot(volume: string, snapshot: string): RbdImage {
    const img = this.image(volume);
    if (!img.snapshots().some((s) => s.name === snapshot))
      throw notFound(`volume ${volume} has no snapshot ${snapshot}`);
    return img;
  }

  private refuseDependents(name: string): void {
    const snaps = this.image(name).snapshots();
    if (snaps.length)
      throw conflict(`volume ${name} has snapshot ${snaps[0]!.name}; delete its snapshots first`);
  }

  private forget(name: string): void {
    this.images.delete(name);
    this.labels.delete(name);
    this.usage.delete(name);
    this.listed?.names.delete(name);
  }

  private writeLabels(name: string, labels: Record<string, string>): void {
    for (const [k, v] of Object.entries(labels)) this.setVolumeLabel(name, k, v);
  }

  private allocatedOf(name: string): number {
    const now = Date.now();
    const u = this.usage.get(name);
    if (u && now - u.at < USAGE_TTL_MS) return u.bytes;
    const bytes = this.image(name).allocatedBytes();
    this.usage.set(name, { at: now, bytes });
    return bytes;
  }

  private replicas(): number {
    const now = Date.now();
    if (!this.replicaCount || now - this.replicaCount.at > REPLICAS_TTL_MS)
      this.replicaCount = { at: now, n: this.conn().replicas(this.config.ceph.pool) };
    return this.replicaCount.n;
  }
}

function checkSize(size: number): void {
  if (!Number.isSafeInteger(size) || size <= 0 || size % 512 !== 0 || size > MAX_VOLUME_SIZE)
    throw invalidArgument(
      `volume size ${size} must be a positive multiple of 512 bytes, at most ${MAX_VOLUME_SIZE} (4 PiB)`,
    );
}

function rmdirIfEmpty(dir: string): void {
  if (existsSync(dir) && readdirSync(dir).length === 0) rmdirSync(dir);
}
