import type { BlockDevice } from '../block/index.js';
import type { PoolInfo, SnapshotInfo, VolumeInfo } from './pool.js';

/**
 * A pool whose volumes the site itself serves, tracks and moves: Haven's own file pool
 * (pool.ts: volume families in files) or an RBD pool (rbd/pool.ts: images in Ceph). The storage
 * service treats both alike — every volume behind its tap, with dirty bitmaps in the pool's
 * local directory (`path`), snapshots, clones, revert and live moves between any two of them.
 */
export interface OwnPool {
  readonly kind: 'file' | 'rbd';
  readonly name: string;
  /** The pool's local directory (its pool.json, marker and bitmaps). */
  readonly path: string;
  /** Allocation unit (a backed volume's copy granularity). */
  readonly clusterSize: number;
  info(): PoolInfo;
  createVolume(name: string, size: number, labels?: Record<string, string>): VolumeInfo;
  listVolumes(): VolumeInfo[];
  hasVolume(name: string): boolean;
  volume(name: string): VolumeInfo;
  volumeLabels(name: string): Record<string, string>;
  setVolumeLabel(name: string, key: string, value: string | undefined): void;
  resizeVolume(name: string, size: number): VolumeInfo;
  renameVolume(name: string, to: string): VolumeInfo;
  /** Deletes a volume alone in its family without blocking the event loop (a moved volume's source). */
  dropVolume(name: string): Promise<void>;
  deleteVolume(name: string): void;
  snapshot(volume: string, snapshot: string): SnapshotInfo;
  listSnapshots(volume: string): SnapshotInfo[];
  deleteSnapshot(volume: string, snapshot: string): void;
  revert(volume: string, snapshot: string): void;
  clone(volume: string, snapshot: string, name: string, labels?: Record<string, string>): VolumeInfo;
  /** "volume" or "volume@snapshot" (read-only) as a device. */
  openDevice(target: string, opts?: { readOnly?: boolean }): BlockDevice;
  /**
   * The extents that differ between two snapshots of a volume, where the storage keeps them
   * itself (an RBD pool: Ceph's diff); absent for a file pool.
   */
  changedExtents?(
    volume: string,
    fromSnapshot: string,
    toSnapshot: string,
  ): Promise<{ offset: number; length: number }[]>;
  /** A key of the volume that survives renames (its bitmaps' folder). */
  volumeKey(name: string): string;
  /** Makes what was written to the volume so far durable, off the event loop (a move's copy). */
  copySync(name: string): () => Promise<void>;
  /** Commits every volume (a no-op where completed writes are durable). */
  flush(): void;
  close(): void;
  /** Removes the closed, empty pool's own files; returns what is left in its directory. */
  removeFiles(): string[];
}
