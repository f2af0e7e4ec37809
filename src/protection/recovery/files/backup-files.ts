import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { invalidArgument } from '../../../common/index.js';
import { openRepository, type RepoAccess } from '../../backup/requests.js';
import { SnapshotDevice } from '../snapshot-device.js';
import { diskLayout, pickFilesystem, withFilesystem, type DiskFilesystem } from './disk.js';
import { extractFiles, listFiles, normalisePath, type ExtractResult, type FileEntry } from './browse.js';
import type { Debugfs } from './debugfs.js';

export interface BackupFilesRequest extends RepoAccess {
  snapshot: string;
  disk?: number;
  /** The partition's number (as Linux numbers them); needed only when several are readable. */
  partition?: number;
  signal?: AbortSignal;
}

export interface BackupFilesystems {
  snapshot: string;
  disk: number;
  diskName: string;
  size: number;
  scheme: 'gpt' | 'mbr' | 'none';
  filesystems: DiskFilesystem[];
}

export interface BackupListing {
  snapshot: string;
  disk: number;
  partition: number | null;
  path: string;
  entries: FileEntry[];
}

/** One disk of a backup opened for reading its files; closes everything it opened. */
async function withDisk<T>(
  req: BackupFilesRequest,
  fn: (device: SnapshotDevice, what: string) => Promise<T>,
): Promise<T> {
  const repo = await openRepository(req);
  // Forget refuses the snapshot while its files are read, so gc keeps its chunks.
  const use = await repo.useSnapshot(req.snapshot);
  try {
    const snap = use.snapshot;
    const disk = req.disk ?? 0;
    if (!snap.disks[disk])
      throw invalidArgument(`snapshot ${snap.id} has ${snap.disks.length} disk(s); there is no disk ${disk}`);
    const device = await SnapshotDevice.open(repo, snap, disk);
    try {
      return await fn(device, `backup ${snap.id} disk ${disk} (${snap.disks[disk]!.name})`);
    } finally {
      await device.close();
    }
  } finally {
    await use.end();
  }
}

/** The chosen filesystem of a backup's disk, open through debugfs for `fn`; cleaned up after. */
function withBackupFilesystem<T>(
  req: BackupFilesRequest,
  fn: (fs: Debugfs, chosen: DiskFilesystem, what: string) => Promise<T>,
): Promise<T> {
  return withDisk(req, async (device, what) => {
    const chosen = pickFilesystem(await diskLayout(device), what, req.partition);
    const label = chosen.partition === null ? what : `${what} partition ${chosen.partition}`;
    const workDir = mkdtempSync(join(tmpdir(), 'haven-files-'));
    try {
      return await withFilesystem(device, chosen, workDir, label, (fs) => fn(fs, chosen, label), req.signal);
    } finally {
      rmSync(workDir, { recursive: true, force: true });
    }
  });
}

/** `haven backup files SNAPSHOT`: the partitions of a backup's disk and the filesystem of each. */
export function listBackupFilesystems(req: BackupFilesRequest): Promise<BackupFilesystems> {
  return withDisk(req, async (device) => {
    const layout = await diskLayout(device);
    return {
      snapshot: device.snapshot.id,
      disk: device.disk,
      diskName: device.snapshot.disks[device.disk]!.name,
      size: device.size,
      ...layout,
    };
  });
}

/** `haven backup files SNAPSHOT PATH`: a directory of a backup's filesystem. */
export function listBackupFiles(req: BackupFilesRequest & { path: string }): Promise<BackupListing> {
  return withBackupFilesystem(req, async (fs, chosen, what) => ({
    snapshot: req.snapshot,
    disk: req.disk ?? 0,
    partition: chosen.partition,
    path: normalisePath(req.path),
    entries: await listFiles(fs, req.path, what),
  }));
}

/** `haven backup files SNAPSHOT --extract PATH --to DIR`: a file or tree copied out of a backup. */
export function extractBackupFiles(
  req: BackupFilesRequest & { path: string; to: string; force?: boolean },
): Promise<ExtractResult & { snapshot: string; disk: number; partition: number | null; path: string }> {
  return withBackupFilesystem(req, async (fs, chosen, what) => ({
    snapshot: req.snapshot,
    disk: req.disk ?? 0,
    partition: chosen.partition,
    path: normalisePath(req.path),
    ...(await extractFiles(fs, req.path, resolve(req.to), what, {
      ...(req.force ? { force: true } : {}),
      ...(req.signal ? { signal: req.signal } : {}),
    })),
  }));
}
