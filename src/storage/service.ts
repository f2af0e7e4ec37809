import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { setImmediate as yieldToIo } from 'node:timers/promises';
import { join, resolve } from 'node:path';
import type { BlockDevice } from '../block/index.js';
import {
  HavenError,
  conflict,
  invalidArgument,
  lockDirectory,
  logger,
  notFound,
  writeFileAtomic,
} from '../common/index.js';
import { Pool, checkName, type PoolInfo, type SnapshotInfo, type VolumeInfo } from './pool.js';
import type { OwnPool } from './own-pool.js';
import { RbdPool, type RbdPoolOptions } from './rbd/pool.js';
import { CephCluster } from './rbd/cluster.js';
import { checkPoolPath } from './pool-path.js';
import { localProvider, poolCapabilities, type CapabilitySet, type StorageProvider } from './provider.js';
import type { ProviderPool } from './provider-pool.js';
import { VolumeBitmaps, markBitmapsInUse, type BitmapInfo } from './bitmaps.js';
import { TapDevice } from './tap.js';
import { mirrorCopy, type MirrorCopy } from './mirror-copy.js';
import { BackedDevice } from './backed.js';
import type { BitmapView } from '../block/index.js';

const log = logger('storage');

interface PoolsFile {
  /** type: absent for Haven's own file pools. */
  pools: { name: string; path: string; type?: 'rbd' }[];
}

/**
 * The storage provider API of a site: pools with their capabilities, and the operations the
 * storage carries out itself (create, snapshot, clone, revert, delete). Volume names are unique
 * across the site, so a volume is named without its pool. Out of band from the data path: the
 * data path is `openDevice`, served over NBD by the storage service.
 */
/** A volume's copy on the target pool while it moves. */
export const MOVING_SUFFIX = '.moving';
/** A moved volume's source, being removed. */
const RETIRED_SUFFIX = '.retired';

/** A volume that exists only while a move runs (nobody's disk): exports and listings skip it. */
export function isMoveInternal(name: string): boolean {
  return name.endsWith(MOVING_SUFFIX) || name.endsWith(RETIRED_SUFFIX);
}
/**
 * The label of a volume made to run over a base (instant recovery; the value names the base):
 * what it has not written yet is only in the base, so until the base is absorbed the volume is
 * not served, moved or read without it — never zeroes in place of the data.
 */
export const BASE_LABEL = 'haven.base';
/** Backup checkpoints (the backup engine's epochs): dropped when a volume moves. */
const BACKUP_CHECKPOINT_PREFIX = 'haven-backup-';

export interface MoveResult {
  volume: string;
  from: string;
  to: string;
  /** With keepSource: the source's new name. */
  keptSource?: string;
  copiedBytes: number;
  /** Guest writes mirrored to the target during the copy. */
  mirroredBytes: number;
  /** How long I/O waited at the switch. */
  pauseMs: number;
  /** From the start until the volume ran from the new pool, its copy durable there. */
  copySeconds: number;
  /** The whole move, the source's removal included. */
  seconds: number;
}

export class StorageService {
  private readonly moving = new Set<string>();
  private readonly backings = new Map<string, { base: BlockDevice; backed: BackedDevice }>();
  private readonly pools = new Map<string, OwnPool>();
  /** Pools whose provider is another program (provider-pool.ts), registered by the site. */
  private readonly providerPools = new Map<string, ProviderPool>();
  /** The tap of each provider volume opened for writing (no dirty bitmaps: see docs/provider-api.md). */
  private readonly providerTaps = new Map<string, TapDevice>();
  /** The site's NBD address of a target, for local providers' `access`. */
  private localUri: ((target: string) => string) | undefined;
  private readonly lock: { release: () => void };
  /** Per pool: whether its bitmaps were in use when a service died, and the marker's release. */
  private readonly inUse = new Map<string, { crashed: boolean; release: () => void }>();
  /** Per volume, once opened: its tap (every writer's device) and its dirty bitmaps. */
  private readonly volumes = new Map<string, { tap: TapDevice; bitmaps: VolumeBitmaps }>();

  private constructor(
    readonly dataDir: string,
    connected: ReadonlyMap<string, CephCluster | Error> = new Map(),
  ) {
    mkdirSync(dataDir, { recursive: true, mode: 0o700 });
    this.lock = lockDirectory(dataDir);
    try {
      for (const { name, path, type } of readPoolsFile(this.dataDir).pools) {
        const pool: OwnPool = type === 'rbd' ? RbdPool.open(path, connected.get(path)) : Pool.open(path);
        this.pools.set(name, pool);
        const mark = markBitmapsInUse(pool.path);
        this.inUse.set(name, mark);
        // After a crash, record at once that this pool's bitmaps are not to be trusted.
        if (mark.crashed)
          for (const v of pool.listVolumes())
            if (!v.name.endsWith(MOVING_SUFFIX)) this.volumeState(v.name).bitmaps.save();
      }
      this.recoverMoves();
    } catch (err) {
      this.close();
      throw err;
    }
  }

  static open(dataDir: string): StorageService {
    return new StorageService(resolve(dataDir));
  }

  /**
   * The same, connecting to the Ceph clusters of the RBD pools first, all at once and off the
   * event loop: a site with unreachable clusters waits one connect timeout, not one per pool.
   */
  static async openAsync(
    dataDir: string,
    opts: { cephTimeoutSeconds?: number } = {},
  ): Promise<StorageService> {
    const dir = resolve(dataDir);
    const connected = new Map<string, CephCluster | Error>();
    await Promise.all(
      readPoolsFile(dir)
        .pools.filter((p) => p.type === 'rbd')
        .map(async ({ path }) => {
          const conf = RbdPool.confOf(path);
          if (conf === undefined) return; // open() names what is wrong with pool.json
          connected.set(
            path,
            await CephCluster.connect(conf, {
              ...(opts.cephTimeoutSeconds ? { timeoutSeconds: opts.cephTimeoutSeconds } : {}),
            }).catch((err: unknown) => (err instanceof Error ? err : new Error(String(err)))),
          );
        }),
    );
    try {
      return new StorageService(dir, connected);
    } catch (err) {
      for (const c of connected.values()) if (c instanceof CephCluster) c.close();
      throw err;
    }
  }

  // ---- pools -----------------------------------------------------------------------------

  createPool(name: string, opts: { path?: string; tier?: string; capacityBytes?: number } = {}): PoolInfo {
    checkName('pool', name);
    if (this.pools.has(name) || this.providerPools.has(name)) throw conflict(`pool ${name} already exists`);
    const path = checkPoolPath(opts.path ?? join(this.dataDir, 'pools', name), {
      dataDir: this.dataDir,
      otherPools: [...this.pools.values()].map((p) => p.path),
    });
    const pool = Pool.create(path, {
      name,
      ...(opts.tier ? { tier: opts.tier } : {}),
      ...(opts.capacityBytes ? { capacityBytes: opts.capacityBytes } : {}),
    });
    this.pools.set(name, pool);
    this.inUse.set(name, markBitmapsInUse(pool.path));
    this.writePoolsFile();
    return pool.info();
  }

  /**
   * Creates an RBD pool: its volumes are images in a Ceph pool (rbd/pool.ts). Connects to the
   * cluster off the event loop (bounded), and records the pool only once the cluster answered
   * and holds the Ceph pool.
   */
  async createRbdPool(
    name: string,
    opts: Omit<RbdPoolOptions, 'name'> & { path?: string; timeoutSeconds?: number },
  ): Promise<PoolInfo> {
    checkName('pool', name);
    if (this.pools.has(name) || this.providerPools.has(name)) throw conflict(`pool ${name} already exists`);
    const path = checkPoolPath(opts.path ?? join(this.dataDir, 'pools', name), {
      dataDir: this.dataDir,
      otherPools: [...this.pools.values()].map((p) => p.path),
    });
    const { path: _path, ...rest } = opts;
    void _path;
    const pool = await RbdPool.create(path, { name, ...rest });
    if (this.pools.has(name)) {
      pool.close();
      throw conflict(`pool ${name} already exists`);
    }
    this.pools.set(name, pool);
    this.inUse.set(name, markBitmapsInUse(pool.path));
    this.writePoolsFile();
    return pool.info();
  }

  listPools(): PoolInfo[] {
    return [...this.pools.values(), ...this.providerPools.values()]
      .map((p) => p.info())
      .sort((a, b) => a.name.localeCompare(b.name));
  }

  /** One of Haven's own pools; a provider pool is refused, naming it (use poolInfo to ask about any pool). */
  pool(name: string): OwnPool {
    const p = this.pools.get(name);
    if (!p) {
      const pp = this.providerPools.get(name);
      if (pp)
        throw conflict(
          `pool ${name} is served by the storage provider at ${pp.url}: this works on Haven's own pools only (volumes there are created, deleted and snapshotted through the provider)`,
        );
      throw notFound(`no pool ${name}`);
    }
    return p;
  }

  /** Any pool's description, Haven's own or a provider's. */
  poolInfo(name: string): PoolInfo {
    return this.providerPools.get(name)?.info() ?? this.pool(name).info();
  }

  /** The provider of a pool (storage provider contract, provider.ts). */
  provider(name: string): StorageProvider {
    const pp = this.providerPools.get(name);
    if (pp) return pp.provider;
    this.pool(name);
    return localProvider(this, name, this.localUri);
  }

  /** What a pool's provider advertises (without the operator's declarations); never waits on a provider. */
  capabilitiesOf(name: string): CapabilitySet {
    return this.providerPools.get(name)?.capabilities() ?? poolCapabilities(this.pool(name).info());
  }

  /** Where the site serves a target over NBD (for local providers' `access`). */
  setLocalAccess(uriOf: (target: string) => string): void {
    this.localUri = uriOf;
  }

  // ---- provider pools ----------------------------------------------------------------------

  /**
   * The provider pool a volume is on, if it is on one. A volume of Haven's own pools always wins:
   * one a provider lists later under the same name (made behind Haven's back) is not the site's.
   */
  providerPoolOf(volume: string): ProviderPool | undefined {
    if (this.providerPools.size === 0 || this.findPoolOf(volume)) return undefined;
    for (const p of this.providerPools.values()) if (p.hasVolume(volume)) return p;
    return undefined;
  }

  providerPool(name: string): ProviderPool | undefined {
    return this.providerPools.get(name);
  }

  /**
   * Adds a pool served by a provider (the site keeps the registration). Refused when its name is
   * taken, or a volume the provider holds has the name of another volume of the site.
   */
  addProviderPool(pool: ProviderPool): void {
    checkName('pool', pool.name);
    if (this.pools.has(pool.name) || this.providerPools.has(pool.name))
      throw conflict(`pool ${pool.name} already exists`);
    for (const v of pool.volumeNames())
      if (this.findPoolOf(v) || this.providerPoolOf(v))
        throw conflict(
          `the provider at ${pool.url} holds a volume ${v}, and this site has one of that name already`,
        );
    this.providerPools.set(pool.name, pool);
  }

  /** Forgets a provider pool that holds no volumes (its provider is not told: it is the operator's). */
  removeProviderPool(name: string): void {
    const pp = this.providerPools.get(name);
    if (!pp) throw notFound(`no provider pool ${name}`);
    const vols = this.listVolumes(name).map((v) => v.name);
    if (vols.length) throw conflict(`pool ${name} still holds ${vols.length} volume(s): ${vols.join(', ')}`);
    this.providerPools.delete(name);
  }

  /**
   * Creates a volume on any pool: Haven's own at once, a provider's through the contract. These
   * asynchronous operations work on both kinds; the synchronous createVolume, deleteVolume,
   * snapshot, deleteSnapshot and clone further down are for Haven's own pools only.
   */
  async provisionVolume(name: string, size: number, pool: string): Promise<VolumeInfo> {
    const pp = this.providerPools.get(pool);
    if (!pp) return this.createVolume(name, size, pool);
    checkName('volume', name);
    this.refuseTaken(name);
    if (!Number.isSafeInteger(size) || size <= 0)
      throw invalidArgument(`volume size ${size} must be a positive number of bytes`);
    return pp.createVolume(name, size);
  }

  /** Deletes a volume of any pool. */
  async removeVolume(name: string): Promise<void> {
    const pp = this.providerPoolOf(name);
    if (!pp) return this.deleteVolume(name);
    const tap = this.providerTaps.get(name);
    this.providerTaps.delete(name);
    await tap?.close();
    await pp.deleteVolume(name);
  }

  /**
   * A snapshot on any pool. On a provider's, every write completed through the site is flushed
   * to the provider first, so the provider's snapshot holds it (the contract's promise).
   */
  async takeSnapshot(volume: string, snapshot: string): Promise<SnapshotInfo> {
    const pp = this.providerPoolOf(volume);
    if (!pp) return this.snapshot(volume, snapshot);
    checkName('snapshot', snapshot);
    if (pp.listSnapshots(volume).some((s) => s.name === snapshot))
      throw conflict(`volume ${volume} already has a snapshot ${snapshot}`);
    await this.providerTaps.get(volume)?.flush();
    return pp.snapshot(volume, snapshot);
  }

  async removeSnapshot(volume: string, snapshot: string): Promise<void> {
    const pp = this.providerPoolOf(volume);
    if (!pp) return this.deleteSnapshot(volume, snapshot);
    if (!pp.listSnapshots(volume).some((s) => s.name === snapshot))
      throw notFound(`volume ${volume} has no snapshot ${snapshot}`);
    await pp.deleteSnapshot(volume, snapshot);
  }

  async cloneSnapshot(volume: string, snapshot: string, name: string): Promise<VolumeInfo> {
    const pp = this.providerPoolOf(volume);
    if (!pp) return this.clone(volume, snapshot, name);
    checkName('volume', name);
    this.refuseTaken(name);
    if (!pp.listSnapshots(volume).some((s) => s.name === snapshot))
      throw notFound(`volume ${volume} has no snapshot ${snapshot}`);
    return pp.clone(volume, snapshot, name);
  }

  /** Whether a volume of that name is at this site (in one of its pools or a provider's). */
  hasVolume(name: string): boolean {
    return this.findPoolOf(name) !== undefined || this.providerPoolOf(name) !== undefined;
  }

  private refuseTaken(name: string): void {
    if (this.hasVolume(name)) throw conflict(`volume ${name} already exists`);
  }

  /**
   * Deletes an empty pool: its own files go (see Pool.removeFiles), never anything else in its
   * directory; returns what was left there.
   */
  deletePool(name: string): { left: string[] } {
    const pool = this.pool(name);
    const vols = pool.listVolumes();
    if (vols.length)
      throw conflict(
        `pool ${name} still holds ${vols.length} volume(s): ${vols.map((v) => v.name).join(', ')}`,
      );
    pool.close();
    this.inUse.get(name)?.release();
    this.inUse.delete(name);
    this.pools.delete(name);
    this.writePoolsFile();
    const left = pool.removeFiles();
    if (left.length)
      log.warn(
        { pool: name, path: pool.path, left },
        'pool deleted; files Haven did not make are left in its directory',
      );
    return { left };
  }

  // ---- volumes ---------------------------------------------------------------------------

  createVolume(name: string, size: number, pool: string, labels?: Record<string, string>): VolumeInfo {
    this.refuseTaken(name);
    if (name.endsWith(MOVING_SUFFIX) || name.endsWith(RETIRED_SUFFIX))
      throw invalidArgument(
        `volume names ending in "${MOVING_SUFFIX}" or "${RETIRED_SUFFIX}" are reserved for volumes being moved`,
      );
    return this.pool(pool).createVolume(name, size, labels);
  }

  listVolumes(pool?: string): VolumeInfo[] {
    const pp = pool ? this.providerPools.get(pool) : undefined;
    const pools = pp
      ? [pp]
      : pool
        ? [this.pool(pool)]
        : [...this.pools.values(), ...this.providerPools.values()];
    return (
      pools
        .flatMap((p) => p.listVolumes())
        // A provider's volume named like one of Haven's own pools' is not the site's (providerPoolOf).
        .filter((v) => !this.providerPools.has(v.pool) || !this.findPoolOf(v.name))
        .sort((a, b) => a.name.localeCompare(b.name))
    );
  }

  /** A volume's labels (cheaper than volume(), which counts its mapped bytes). */
  volumeLabels(name: string): Record<string, string> {
    if (this.providerPoolOf(name)) return {};
    return this.poolOf(name).volumeLabels(name);
  }

  /** Sets (or, with undefined, removes) one label of a volume, durably. */
  setVolumeLabel(name: string, key: string, value: string | undefined): void {
    this.poolOf(name).setVolumeLabel(name, key, value);
  }

  volume(name: string): VolumeInfo {
    return this.providerPoolOf(name)?.volume(name) ?? this.poolOf(name).volume(name);
  }

  resizeVolume(name: string, size: number): VolumeInfo {
    const v = this.poolOf(name).resizeVolume(name, size);
    this.volumes.get(name)?.bitmaps.resize(size);
    return v;
  }

  deleteVolume(name: string): void {
    this.detachBase(name);
    const state = this.volumeState(name);
    this.poolOf(name).deleteVolume(name);
    state.bitmaps.destroy();
    this.volumes.delete(name);
  }

  snapshot(volume: string, snapshot: string): SnapshotInfo {
    // A snapshot taken during a move would be of the source, which the move then drops.
    if (this.moving.has(volume))
      throw conflict(
        `volume ${volume} is being moved to another pool (snapshots do not move): take snapshot ${snapshot} once the move has ended`,
      );
    return this.poolOf(volume).snapshot(volume, snapshot);
  }

  listSnapshots(volume: string): SnapshotInfo[] {
    return this.providerPoolOf(volume)?.listSnapshots(volume) ?? this.poolOf(volume).listSnapshots(volume);
  }

  deleteSnapshot(volume: string, snapshot: string): void {
    this.poolOf(volume).deleteSnapshot(volume, snapshot);
    this.volumeState(volume).bitmaps.dropSnapshot(snapshot);
  }

  /**
   * Takes a snapshot and ends the bitmap's epoch at it, atomically: the bitmap's changes so far
   * are kept as "bitmap@snapshot" (exported on the snapshot as qemu:dirty-bitmap:<bitmap>), and
   * the bitmap starts again empty. An incremental backup reads what the frozen bitmap marks.
   */
  checkpoint(
    volume: string,
    snapshot: string,
    bitmap: string,
  ): { snapshot: SnapshotInfo; frozen: BitmapInfo } {
    const state = this.volumeState(volume);
    state.bitmaps.get(bitmap); // fail before the snapshot if there is no such bitmap
    const snap = this.snapshot(volume, snapshot);
    return { snapshot: snap, frozen: state.bitmaps.freeze(bitmap, snapshot) };
  }

  /**
   * Undoes a checkpoint whose backup failed: the changes frozen at it go back into the live
   * bitmap (so the next backup reads them again), and the snapshot is deleted.
   */
  revokeCheckpoint(volume: string, snapshot: string, bitmap: string): void {
    const state = this.volumeState(volume);
    state.bitmaps.get(bitmap).merge(state.bitmaps.get(`${bitmap}@${snapshot}`));
    this.deleteSnapshot(volume, snapshot);
  }

  // ---- dirty bitmaps ---------------------------------------------------------------------

  addBitmap(volume: string, name: string, granularity?: number): BitmapInfo {
    return this.volumeState(volume).bitmaps.add(name, granularity);
  }

  listBitmaps(volume: string): BitmapInfo[] {
    if (this.providerPoolOf(volume)) return [];
    return this.volumeState(volume).bitmaps.list();
  }

  removeBitmap(volume: string, name: string): void {
    this.volumeState(volume).bitmaps.remove(name);
  }

  clearBitmap(volume: string, name: string): void {
    this.volumeState(volume).bitmaps.clear(name);
  }

  /** Bitmaps to offer over NBD on "volume" (live ones) or "volume@snapshot" (frozen at it). */
  bitmapViews(target: string): BitmapView[] {
    if (this.providerPoolOf(target.split('@')[0]!)) return [];
    const at = target.indexOf('@');
    if (at < 0) return this.volumeState(target).bitmaps.liveViews();
    return this.volumeState(target.slice(0, at)).bitmaps.frozenViews(target.slice(at + 1));
  }

  /**
   * Live storage migration: moves a volume to another pool while it is in use. Its allocated
   * data is copied under a temporary name on the target pool while every write is mirrored
   * there; the copy is committed; then, in one turn of the event loop (no request can fall in
   * between), the source steps aside, the target takes its name (committing what was mirrored
   * since) and its place behind the volume's tap — writers and NBD clients keep their handles
   * and see nothing but a short pause, which is measured. Snapshots do not move: a volume with
   * snapshots of its own is refused; backup checkpoints are dropped (the next backup reads
   * everything). Cancel or a failure before the switch leaves the source as it was and removes
   * the copy; a crash is settled when the storage opens next (see recoverMoves).
   */
  async moveVolume(
    name: string,
    toPool: string,
    opts: {
      keepSource?: boolean;
      signal?: AbortSignal;
      onProgress?: (done: number, total: number) => void;
    } = {},
  ): Promise<MoveResult> {
    const started = performance.now();
    const from = this.poolOf(name);
    const to = this.pool(toPool);
    if (from === to) throw invalidArgument(`volume ${name} is in pool ${toPool} already`);
    if (this.backings.has(name) || BASE_LABEL in from.volumeLabels(name))
      throw conflict(`volume ${name} runs from a backup: finalize its recovery before moving it`);
    if (this.moving.has(name)) throw conflict(`volume ${name} is being moved already`);
    const own = from.listSnapshots(name).filter((x) => !x.name.startsWith(BACKUP_CHECKPOINT_PREFIX));
    if (own.length)
      throw conflict(
        `volume ${name} has snapshots (${own.map((x) => x.name).join(', ')}); snapshots do not move: delete them first`,
      );
    const info = from.volume(name);
    const tmp = `${name}${MOVING_SUFFIX}`;
    if (to.hasVolume(tmp))
      throw conflict(`pool ${toPool} holds ${tmp} from an earlier move; restart the storage to settle it`);
    const retired = `${name}${RETIRED_SUFFIX}`;
    // Recovery tells a retired source by its name alone: never two of them.
    const stale = this.findPoolOf(retired);
    if (stale)
      throw conflict(
        `pool ${stale.name} holds ${retired} from an earlier move; restart the storage to settle it`,
      );
    this.moving.add(name);
    try {
      for (const x of from.listSnapshots(name)) this.deleteSnapshot(name, x.name);
      const state = this.volumeState(name);
      to.createVolume(tmp, info.size, info.labels);
      const target = to.openDevice(tmp);
      let copy: MirrorCopy | undefined;
      let switched: { aside: string; bitmaps: VolumeBitmaps } | undefined;
      try {
        // The copy goes to the disk bit by bit on the thread pool while I/O flows (and is still
        // mirrored): guest flushes never queue behind much of it, and the flush inside the switch
        // finds little left to write.
        const sync = to.copySync(tmp);
        copy = await mirrorCopy({
          tap: state.tap,
          source: from.openDevice(name),
          target,
          sync,
          ...(opts.signal ? { signal: opts.signal } : {}),
          ...(opts.onProgress ? { onProgress: opts.onProgress } : {}),
        });
        await sync();
        // Before the hold, in a turn of its own: the copy becomes durable, its mapping tree
        // included, so that the commit inside the hold covers only the writes mirrored since (most
        // of the pause was this tree: every page of a new volume is dirty until its first commit).
        copy.check();
        await target.flush();
        await yieldToIo(); // guest requests waiting for that commit go first
        opts.signal?.throwIfAborted();
        // The switch. Changes are held from here to the end (pool devices that complete
        // synchronously have none in flight; asynchronous ones, RBD, are waited for), so no change
        // can come in between. Two commits: the source steps aside as retired, then the copy takes
        // the name — that commit, which also makes everything mirrored since the one above durable,
        // is the moment the copy becomes the volume. A crash between them finds the retired source
        // beside the copy still under its temporary name, and the source comes back (see
        // recoverMoves).
        const t0 = performance.now();
        const release = await state.tap.hold();
        try {
          copy.check();
          if (target.size !== info.size)
            throw new HavenError('INTERNAL', `the copy of ${name} has the wrong size`);
          // A source kept under a name of its own is no retired source to come back: the copy is then
          // made durable first, and a crash after the source stepped aside gives the copy the name.
          const aside = opts.keepSource ? `${name}.moved-${Date.now().toString(36)}` : retired;
          if (opts.keepSource) await target.flush();
          from.renameVolume(name, aside);
          to.renameVolume(tmp, name);
          state.tap.replaceInner(target);
          copy.stop();
          const bitmaps = VolumeBitmaps.open(join(to.path, 'bitmaps', to.volumeKey(name)), info.size, false);
          for (const b of state.bitmaps.list()) bitmaps.add(b.name, b.granularity);
          bitmaps.markDirty(0, info.size); // their history stayed behind: everything counts as changed
          state.tap.removeTracker(state.bitmaps);
          state.tap.addTracker(bitmaps);
          this.volumes.set(name, { tap: state.tap, bitmaps });
          switched = { aside, bitmaps };
        } finally {
          release();
        }
        const { aside, bitmaps } = switched;
        const pauseMs = performance.now() - t0;
        const copySeconds = (performance.now() - started) / 1000;
        // After the switch, beside the I/O: the bitmaps' files, and the source's removal.
        mkdirSync(join(to.path, 'bitmaps'), { recursive: true, mode: 0o700 });
        bitmaps.save();
        state.bitmaps.destroy();
        if (!opts.keepSource) await from.dropVolume(aside);
        const kept = opts.keepSource ? aside : undefined;
        return {
          volume: name,
          from: from.name,
          to: to.name,
          ...(kept ? { keptSource: kept } : {}),
          copiedBytes: copy.copiedBytes,
          mirroredBytes: copy.mirroredBytes,
          pauseMs,
          copySeconds,
          seconds: (performance.now() - started) / 1000,
        };
      } catch (err) {
        copy?.stop();
        if (from.hasVolume(name) && to.hasVolume(tmp)) to.deleteVolume(tmp);
        throw err;
      }
    } finally {
      this.moving.delete(name);
    }
  }

  // ---- volumes over a base (instant recovery) ----------------------------------------------

  /**
   * Puts a read-only base under a volume: what the volume has not written yet reads from the base
   * (see BackedDevice). Writers and NBD clients keep their handles. The caller owns the base and
   * must attach it again after a restart, before the volume is used.
   */
  attachBase(volume: string, base: BlockDevice): void {
    if (this.backings.has(volume)) throw conflict(`volume ${volume} has a base already`);
    const pool = this.poolOf(volume);
    if (pool.kind !== 'file')
      throw new HavenError(
        'UNSUPPORTED',
        `volume ${volume} is on RBD pool ${pool.name}: a volume running from a backup must be on a file pool (move it to the RBD pool once recovered)`,
      );
    const state = this.volumeState(volume);
    const backed = new BackedDevice(pool.openDevice(volume), base, pool.clusterSize);
    state.tap.replaceInner(backed);
    this.backings.set(volume, { base, backed });
  }

  /** The volume's base, if it has one. */
  baseOf(volume: string): BackedDevice | undefined {
    return this.backings.get(volume)?.backed;
  }

  /**
   * Copies what the volume still reads from its base, then detaches the base: from then on the
   * volume is self-contained. Its snapshots taken meanwhile (backup checkpoints) are deleted:
   * they would read the base.
   */
  async absorbBase(
    volume: string,
    opts: { signal?: AbortSignal; onProgress?: (done: number, total: number) => void } = {},
  ): Promise<{ copiedBytes: number }> {
    const b = this.backings.get(volume);
    if (!b) throw invalidArgument(`volume ${volume} has no base`);
    // Until a pass finds nothing left: what a pass misses (listed before a write) the next one gets.
    // Then the switch, in a turn with no change in flight: one still waiting for its copy on write
    // from the base lands first (the tap refuses a switch under it).
    const tap = this.volumeState(volume).tap;
    let copiedBytes = 0;
    for (;;) {
      const n = await b.backed.fill(opts);
      copiedBytes += n;
      if (n > 0) continue;
      if (!tap.busy) break;
      await tap.settled();
      opts.signal?.throwIfAborted();
      if (!tap.busy) break;
    }
    this.flush();
    const pool = this.poolOf(volume);
    tap.replaceInner(pool.openDevice(volume));
    this.backings.delete(volume);
    pool.setVolumeLabel(volume, BASE_LABEL, undefined);
    for (const x of this.listSnapshots(volume)) this.deleteSnapshot(volume, x.name);
    return { copiedBytes };
  }

  /**
   * Why the volume must not be used now, or undefined: it was made to run over a base (see
   * BASE_LABEL) that is not attached (its backup could not be reached at start-up).
   */
  missingBase(volume: string): string | undefined {
    if (this.backings.has(volume) || this.providerPoolOf(volume)) return undefined;
    const base = this.poolOf(volume).volumeLabels(volume)[BASE_LABEL];
    return base === undefined
      ? undefined
      : `volume ${volume} runs over ${base}, which is not attached (its data is incomplete without it)`;
  }

  /** Drops a volume's base without copying (the volume is being deleted). */
  detachBase(volume: string): void {
    if (!this.backings.delete(volume)) return;
    const pool = this.poolOf(volume);
    this.volumeState(volume).tap.replaceInner(pool.openDevice(volume));
  }

  /** Volumes being moved now. */
  movingVolumes(): string[] {
    return [...this.moving];
  }

  /** The tap of a volume: subscribe to its changes (replication). */
  tap(volume: string): TapDevice {
    return this.providerTap(volume) ?? this.volumeState(volume).tap;
  }

  /** A provider volume's one tap (every writer's device), made on first use. */
  private providerTap(volume: string): TapDevice | undefined {
    const pp = this.providerPoolOf(volume);
    if (!pp) return undefined;
    let tap = this.providerTaps.get(volume);
    if (!tap) {
      tap = new TapDevice(pp.openDevice(volume), { shared: true });
      this.providerTaps.set(volume, tap);
    }
    return tap;
  }

  /**
   * The extents that differ between two snapshots of a volume according to its pool, when the
   * pool keeps that itself (an RBD pool: Ceph's rbd_diff_iterate2); undefined for a file pool,
   * whose changes only the dirty bitmaps know.
   */
  async changedExtents(
    volume: string,
    fromSnapshot: string,
    toSnapshot: string,
  ): Promise<{ offset: number; length: number }[] | undefined> {
    const pool = this.poolOf(volume);
    return pool.changedExtents ? pool.changedExtents(volume, fromSnapshot, toSnapshot) : undefined;
  }

  revert(volume: string, snapshot: string): void {
    this.poolOf(volume).revert(volume, snapshot);
    // The whole content may have changed: every bitmap must say so.
    const state = this.volumeState(volume);
    state.bitmaps.markDirty(0, state.tap.size);
  }

  clone(volume: string, snapshot: string, name: string): VolumeInfo {
    this.refuseTaken(name);
    return this.poolOf(volume).clone(volume, snapshot, name);
  }

  /** The data path: "volume" or "volume@snapshot" as a BlockDevice. */
  openDevice(target: string, opts: { readOnly?: boolean } = {}): BlockDevice {
    const volume = target.split('@')[0]!;
    const pp = this.providerPoolOf(volume);
    if (pp)
      return !target.includes('@') && !opts.readOnly
        ? this.providerTap(volume)!
        : pp.openDevice(target, opts);
    const missing = this.missingBase(volume);
    if (missing) throw conflict(missing);
    // Every writer goes through the volume's one tap, so no change escapes tracking.
    if (!target.includes('@') && !opts.readOnly) return this.volumeState(target).tap;
    const dev = this.poolOf(volume).openDevice(target, opts);
    const b = this.backings.get(volume);
    // Over a base, a snapshot reads what it did not map from the base too.
    return b ? new BackedDevice(dev, b.base, this.poolOf(volume).clusterSize) : dev;
  }

  flush(): void {
    for (const p of this.pools.values()) p.flush();
  }

  close(): void {
    for (const t of this.providerTaps.values()) void Promise.resolve(t.close()).catch(() => undefined);
    this.providerTaps.clear();
    this.providerPools.clear();
    for (const v of this.volumes.values()) v.bitmaps.save();
    for (const p of this.pools.values()) p.close();
    for (const m of this.inUse.values()) m.release(); // bitmaps saved and volumes flushed: clean
    this.pools.clear();
    this.volumes.clear();
    this.lock.release();
  }

  // ---- internals -------------------------------------------------------------------------

  /**
   * Settles moves a crash interrupted. A copy under its temporary name whose source still exists,
   * under its name or retired, never took over: it is removed and the source keeps (or gets back)
   * the name (it has every acknowledged write). One whose source is gone or kept under a name of
   * its own had taken over (the copy was durable before that): it gets the volume's name. Never
   * two volumes claiming one disk.
   */
  private recoverMoves(): void {
    for (const pool of this.pools.values())
      for (const v of pool.listVolumes()) {
        if (!v.name.endsWith(MOVING_SUFFIX)) continue;
        const base = v.name.slice(0, -MOVING_SUFFIX.length);
        if (this.findPoolOf(base)) {
          pool.deleteVolume(v.name);
          continue;
        }
        const retired = this.findPoolOf(`${base}${RETIRED_SUFFIX}`);
        if (retired) {
          // The source had stepped aside, but the copy never took the name: the switch did not
          // happen, and the source (which has every acknowledged write) is the volume again.
          retired.renameVolume(`${base}${RETIRED_SUFFIX}`, base);
          pool.deleteVolume(v.name);
        } else pool.renameVolume(v.name, base);
      }
    // Sources of finished moves whose removal a crash interrupted. One with snapshots (taken
    // during a move by a version that allowed it) is kept under a visible name, never dropped
    // with them, and never in the way of the start.
    for (const pool of this.pools.values())
      for (const v of pool.listVolumes()) {
        if (!v.name.endsWith(RETIRED_SUFFIX)) continue;
        if (pool.listSnapshots(v.name).length === 0) {
          pool.deleteVolume(v.name);
          continue;
        }
        const kept = `${v.name.slice(0, -RETIRED_SUFFIX.length)}.moved-${Date.now().toString(36)}`;
        pool.renameVolume(v.name, kept);
        log.warn(
          { pool: pool.name, volume: kept },
          `the source of a finished move has snapshots; kept as volume ${kept} in pool ${pool.name}: delete it (and its snapshots) when they are not needed`,
        );
      }
  }

  private volumeState(name: string): { tap: TapDevice; bitmaps: VolumeBitmaps } {
    let v = this.volumes.get(name);
    if (!v) {
      const pool = this.poolOf(name);
      const id = pool.volumeKey(name);
      const vol = pool.volume(name);
      const bitmaps = VolumeBitmaps.open(
        join(pool.path, 'bitmaps', id),
        vol.size,
        this.inUse.get(pool.name)?.crashed ?? false,
      );
      const tap = new TapDevice(pool.openDevice(name), { shared: true });
      tap.addTracker(bitmaps);
      v = { tap, bitmaps };
      this.volumes.set(name, v);
    }
    return v;
  }

  private findPoolOf(volume: string): OwnPool | undefined {
    for (const p of this.pools.values()) if (p.hasVolume(volume)) return p;
    return undefined;
  }

  /** The pool of Haven's own a volume is on; a provider's volume is refused, naming its pool. */
  private poolOf(volume: string): OwnPool {
    if (!volume) throw invalidArgument('a volume name is required');
    const p = this.findPoolOf(volume);
    if (!p) {
      const pp = this.providerPoolOf(volume);
      if (pp)
        throw conflict(
          `volume ${volume} is on pool ${pp.name}, served by the storage provider at ${pp.url}: this operation is for volumes of Haven's own pools only`,
        );
      throw notFound(`no volume ${volume}`);
    }
    return p;
  }

  private writePoolsFile(): void {
    const pools = [...this.pools.values()].map((p) => ({
      name: p.name,
      path: p.path,
      ...(p.kind === 'rbd' ? { type: 'rbd' as const } : {}),
    }));
    writeFileAtomic(join(this.dataDir, 'pools.json'), JSON.stringify({ pools }, null, 2));
  }
}

function readPoolsFile(dataDir: string): PoolsFile {
  const path = join(dataDir, 'pools.json');
  if (!existsSync(path)) return { pools: [] };
  return JSON.parse(readFileSync(path, 'utf8')) as PoolsFile;
}
