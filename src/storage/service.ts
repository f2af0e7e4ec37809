import { existsSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import { isAbsolute, join, resolve } from 'node:path';
import type { BlockDevice } from '../block/index.js';
import { conflict, invalidArgument, lockDirectory, notFound, writeFileAtomic } from '../common/index.js';
import { Pool, checkName, type PoolInfo, type SnapshotInfo, type VolumeInfo } from './pool.js';

interface PoolsFile {
  pools: { name: string; path: string }[];
}

/**
 * The storage provider API of a site: pools with their capabilities, and the operations the
 * storage carries out itself (create, snapshot, clone, revert, delete). Volume names are unique
 * across the site, so a volume is named without its pool. Out of band from the data path: the
 * data path is `openDevice`, served over NBD by the storage service.
 */
export class StorageService {
  private readonly pools = new Map<string, Pool>();
  private readonly lock: { release: () => void };

  private constructor(readonly dataDir: string) {
    mkdirSync(dataDir, { recursive: true });
    this.lock = lockDirectory(dataDir);
    try {
      for (const { name, path } of this.readPoolsFile().pools) this.pools.set(name, Pool.open(path));
    } catch (err) {
      this.close();
      throw err;
    }
  }

  static open(dataDir: string): StorageService {
    return new StorageService(resolve(dataDir));
  }

  // ---- pools -----------------------------------------------------------------------------

  createPool(name: string, opts: { path?: string; tier?: string; capacityBytes?: number } = {}): PoolInfo {
    checkName('pool', name);
    if (this.pools.has(name)) throw conflict(`pool ${name} already exists`);
    const path = opts.path
      ? isAbsolute(opts.path)
        ? opts.path
        : resolve(opts.path)
      : join(this.dataDir, 'pools', name);
    const pool = Pool.create(path, {
      name,
      ...(opts.tier ? { tier: opts.tier } : {}),
      ...(opts.capacityBytes ? { capacityBytes: opts.capacityBytes } : {}),
    });
    this.pools.set(name, pool);
    this.writePoolsFile();
    return pool.info();
  }

  listPools(): PoolInfo[] {
    return [...this.pools.values()].map((p) => p.info()).sort((a, b) => a.name.localeCompare(b.name));
  }

  pool(name: string): Pool {
    const p = this.pools.get(name);
    if (!p) throw notFound(`no pool ${name}`);
    return p;
  }

  deletePool(name: string): void {
    const pool = this.pool(name);
    const vols = pool.listVolumes();
    if (vols.length)
      throw conflict(
        `pool ${name} still holds ${vols.length} volume(s): ${vols.map((v) => v.name).join(', ')}`,
      );
    pool.close();
    this.pools.delete(name);
    this.writePoolsFile();
    rmSync(pool.path, { recursive: true, force: true });
  }

  // ---- volumes ---------------------------------------------------------------------------

  createVolume(name: string, size: number, pool: string, labels?: Record<string, string>): VolumeInfo {
    if (this.findPoolOf(name)) throw conflict(`volume ${name} already exists`);
    return this.pool(pool).createVolume(name, size, labels);
  }

  listVolumes(pool?: string): VolumeInfo[] {
    const pools = pool ? [this.pool(pool)] : [...this.pools.values()];
    return pools.flatMap((p) => p.listVolumes()).sort((a, b) => a.name.localeCompare(b.name));
  }

  volume(name: string): VolumeInfo {
    return this.poolOf(name).volume(name);
  }

  resizeVolume(name: string, size: number): VolumeInfo {
    return this.poolOf(name).resizeVolume(name, size);
  }

  deleteVolume(name: string): void {
    this.poolOf(name).deleteVolume(name);
  }

  snapshot(volume: string, snapshot: string): SnapshotInfo {
    return this.poolOf(volume).snapshot(volume, snapshot);
  }

  listSnapshots(volume: string): SnapshotInfo[] {
    return this.poolOf(volume).listSnapshots(volume);
  }

  deleteSnapshot(volume: string, snapshot: string): void {
    this.poolOf(volume).deleteSnapshot(volume, snapshot);
  }

  revert(volume: string, snapshot: string): void {
    this.poolOf(volume).revert(volume, snapshot);
  }

  clone(volume: string, snapshot: string, name: string): VolumeInfo {
    if (this.findPoolOf(name)) throw conflict(`volume ${name} already exists`);
    return this.poolOf(volume).clone(volume, snapshot, name);
  }

  /** The data path: "volume" or "volume@snapshot" as a BlockDevice. */
  openDevice(target: string, opts: { readOnly?: boolean } = {}): BlockDevice {
    const volume = target.split('@')[0]!;
    return this.poolOf(volume).openDevice(target, opts);
  }

  flush(): void {
    for (const p of this.pools.values()) p.flush();
  }

  close(): void {
    for (const p of this.pools.values()) p.close();
    this.pools.clear();
    this.lock.release();
  }

  // ---- internals -------------------------------------------------------------------------

  private findPoolOf(volume: string): Pool | undefined {
    for (const p of this.pools.values()) if (p.hasVolume(volume)) return p;
    return undefined;
  }

  private poolOf(volume: string): Pool {
    if (!volume) throw invalidArgument('a volume name is required');
    const p = this.findPoolOf(volume);
    if (!p) throw notFound(`no volume ${volume}`);
    return p;
  }

  private readPoolsFile(): PoolsFile {
    const path = join(this.dataDir, 'pools.json');
    if (!existsSync(path)) return { pools: [] };
    return JSON.parse(readFileSync(path, 'utf8')) as PoolsFile;
  }

  private writePoolsFile(): void {
    const pools = [...this.pools.values()].map((p) => ({ name: p.name, path: p.path }));
    writeFileAtomic(join(this.dataDir, 'pools.json'), JSON.stringify({ pools }, null, 2));
  }
}
