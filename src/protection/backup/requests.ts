import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { openRawFile } from '../../block/index.js';
import { invalidArgument, outputTarget, stageFile } from '../../common/index.js';
import { connectNbd } from '../../nbd/index.js';
import { Repository, isS3Url, type SnapshotManifest } from '../../repository/index.js';
import { withStorage, type StorageService } from '../../storage/index.js';
import { backup, openChunkPool } from './engine.js';
import type { ChunkPool } from './chunk-pool.js';
import { restore, type RestoreResult } from './restore.js';
import {
  changesSinceBackup,
  classifySource,
  openImageSource,
  openNbdSource,
  openQmpSource,
  openVolumeSource,
  type OpenedSource,
} from './sources.js';

export interface RepoAccess {
  repo: string;
  passphrase?: string;
}

/**
 * A repository as the site daemon reaches it: an absolute path, and an encrypted repository's
 * passphrase from a file the daemon can read, else from the daemon's $HAVEN_PASSPHRASE.
 */
export function repoAccess(repo: string, passphraseFile?: string): RepoAccess {
  const passphrase = passphraseFile
    ? readFileSync(passphraseFile, 'utf8').replace(/\r?\n$/, '')
    : process.env.HAVEN_PASSPHRASE;
  return { repo: isS3Url(repo) ? repo : resolve(repo), ...(passphrase !== undefined ? { passphrase } : {}) };
}

export function openRepository(a: RepoAccess): Promise<Repository> {
  return Repository.open(a.repo, a.passphrase !== undefined ? { passphrase: a.passphrase } : {});
}

export interface BackupRequest extends RepoAccess {
  /** An image file, an NBD URI, or volume:NAME (with `data`, the site's data directory). */
  source: string;
  data?: string;
  /** For NBD sources: the dirty bitmap to read changes from, relative to the newest snapshot of this source. */
  bitmap?: string;
  /** For image files: their format, as the operator knows it (default: probed; see inspectImage). */
  format?: string;
  tags?: string[];
  /** Read the whole source, even where an incremental would be possible. */
  full?: boolean;
  signal?: AbortSignal;
  onProgress?: (done: number, total: number) => void;
}

/** What a backup reports when it is done: the site's job result and the CLI's alike (docs/cli.md). */
export interface BackupResult {
  snapshot: string;
  source: SnapshotManifest['source'];
  parent?: string;
  transport: string;
  consistency: SnapshotManifest['consistency'];
  consistencyReason?: string;
  stats: SnapshotManifest['stats'];
}

export function backupResult(m: SnapshotManifest, transport = m.transport ?? 'file'): BackupResult {
  return {
    snapshot: m.id,
    source: m.source,
    ...(m.parent ? { parent: m.parent } : {}),
    transport,
    consistency: m.consistency,
    ...(m.consistencyReason ? { consistencyReason: m.consistencyReason } : {}),
    stats: m.stats,
  };
}

/** `haven backup`: backs a source up into a repository; returns the new snapshot's manifest. */
export async function backupSource(req: BackupRequest): Promise<SnapshotManifest> {
  const repo = await openRepository(req);
  // The worker threads boot while the source opens.
  const pool = openChunkPool(repo, repo.config.chunkSize);
  try {
    return await backupOpened(repo, pool, req);
  } finally {
    await pool.close();
  }
}

async function backupOpened(
  repo: Repository,
  pool: ChunkPool,
  req: BackupRequest,
): Promise<SnapshotManifest> {
  const s = classifySource(req.source);
  const run = (src: OpenedSource) => runBackup(repo, src, { ...req, pool });
  if (req.format !== undefined && s.kind !== 'image')
    throw invalidArgument('--format names the format of an image file; other sources are read as they are');
  if (s.kind === 'volume')
    return withStorage(req.data, async (storage) =>
      run(await openVolumeSource(storage, repo, s.value, undefined, undefined, { full: !!req.full })),
    );
  if (s.kind === 'qemu') {
    const [qmpSocket, node] = s.value.split('#') as [string, string];
    const workDir = mkdtempSync(join(tmpdir(), 'haven-qmp-backup-'));
    try {
      return await run(await openQmpSource(repo, { qmpSocket, node, workDir, full: !!req.full }));
    } finally {
      rmSync(workDir, { recursive: true, force: true });
    }
  }
  if (s.kind === 'nbd') {
    const parent =
      req.bitmap && !req.full
        ? (await repo.listSnapshots())
            .filter((x) => x.source.kind === 'nbd' && x.source.name === s.value.replace(/\?.*$/, ''))
            .pop()
        : undefined;
    return run(
      await openNbdSource(s.value, {
        ...(req.bitmap ? { bitmap: req.bitmap } : {}),
        ...(parent ? { parent } : {}),
      }),
    );
  }
  if (req.bitmap)
    throw invalidArgument('--bitmap works with NBD sources; image files are read in full (deduplicated)');
  return run(await openImageSource(s.value, req.format));
}

/** Runs the engine on an opened source and ends the source (commit or roll back its epoch). */
export async function runBackup(
  repo: Repository,
  src: OpenedSource,
  req: Pick<BackupRequest, 'tags' | 'signal' | 'onProgress'> & { pool?: ChunkPool; createdAt?: Date } = {},
): Promise<SnapshotManifest> {
  let manifest: SnapshotManifest | undefined;
  try {
    manifest = await backup(repo, {
      source: src.source,
      disks: src.disks,
      ...(src.parent ? { parent: src.parent } : {}),
      ...(src.bitmap ? { bitmap: src.bitmap } : {}),
      ...(src.transport ? { transport: src.transport } : {}),
      ...(src.consistency ? { consistency: src.consistency } : {}),
      ...(src.vm !== undefined ? { vm: src.vm } : {}),
      ...(req.tags ? { tags: req.tags } : {}),
      ...(req.createdAt ? { createdAt: req.createdAt } : {}),
      ...(req.signal ? { signal: req.signal } : {}),
      ...(req.onProgress ? { onProgress: req.onProgress } : {}),
      ...(req.pool ? { pool: req.pool } : {}),
    });
    return manifest;
  } finally {
    await src.finish(manifest);
  }
}

export interface RestoreRequest extends RepoAccess {
  snapshot: string;
  /** An image file to create (raw), an NBD URI, or volume:NAME (a new volume, with `data`). */
  to: string;
  disk?: number;
  data?: string;
  pool?: string;
  /** Overwrite an existing image file or block device. */
  force?: boolean;
  signal?: AbortSignal;
  onProgress?: (done: number, total: number) => void;
}

/** `haven restore`: writes a snapshot's disk to a new image file, an NBD export or a new volume. */
export async function restoreSnapshot(req: RestoreRequest): Promise<RestoreResult> {
  const repo = await openRepository(req);
  // Forget refuses the snapshot while it is read, so gc keeps its chunks.
  const use = await repo.useSnapshot(req.snapshot);
  try {
    return await restoreFrom(repo, use.snapshot, req);
  } finally {
    await use.end();
  }
}

async function restoreFrom(
  repo: Repository,
  snap: SnapshotManifest,
  req: RestoreRequest,
): Promise<RestoreResult> {
  const diskNo = req.disk ?? 0;
  const disk = snap.disks[diskNo];
  if (!disk)
    throw invalidArgument(`snapshot ${snap.id} has ${snap.disks.length} disk(s); there is no disk ${diskNo}`);
  const opts = {
    ...(req.signal ? { signal: req.signal } : {}),
    ...(req.onProgress ? { onProgress: req.onProgress } : {}),
  };
  const t = classifySource(req.to);
  if (t.kind === 'volume') {
    return withStorage(req.data, async (storage) => {
      storage.createVolume(t.value, disk.size, req.pool ?? 'default');
      try {
        return await restore(repo, snap, diskNo, storage.openDevice(t.value), { ...opts, fresh: true });
      } catch (err) {
        storage.deleteVolume(t.value);
        throw err;
      }
    });
  }
  if (t.kind === 'qemu')
    throw invalidArgument(
      'restore to a QEMU VM through QMP is not supported: restore to a file or an NBD export',
    );
  if (t.kind === 'nbd') {
    // Written in place: restore() checks the snapshot before its first write.
    const target = await connectNbd(t.value, { connections: 4 });
    try {
      return await restore(repo, snap, diskNo, target, opts);
    } finally {
      await target.close();
    }
  }
  const out = outputTarget(resolve(t.value), req.force);
  if (out.kind === 'block') {
    const target = openRawFile(out.path, { writeBehind: true });
    try {
      return await restore(repo, snap, diskNo, target, opts);
    } finally {
      await target.close();
    }
  }
  // A file is restored under a temporary name and renamed over the target only when complete.
  const staged = stageFile(out.path, disk.size);
  try {
    const target = openRawFile(staged.tmp, { writeBehind: true });
    let r: RestoreResult;
    try {
      r = await restore(repo, snap, diskNo, target, { ...opts, fresh: true });
    } finally {
      await target.close();
    }
    staged.commit();
    return r;
  } catch (err) {
    staged.abort();
    throw err;
  }
}

export interface RollbackResult extends RestoreResult {
  volume: string;
  /** Bytes the volume had changed since the backup: what the rollback had to undo. */
  changedBytes: number;
}

/**
 * Quick rollback: puts a volume back to its newest backup by rewriting only what changed since
 * (the volume's backup bitmap says where), instead of the whole disk. The volume must not be in use.
 */
export async function rollbackWith(
  storage: StorageService,
  repo: Repository,
  snapshotId: string,
  volume: string,
  opts: { signal?: AbortSignal; onProgress?: (done: number, total: number) => void } = {},
): Promise<RollbackResult> {
  const use = await repo.useSnapshot(snapshotId);
  try {
    const snap = use.snapshot;
    const { disk, ranges } = changesSinceBackup(storage, volume, snap);
    const changedBytes = ranges.reduce((n, r) => n + r.length, 0);
    const device = storage.openDevice(volume);
    const r = await restore(repo, snap, disk, device, { ...opts, ranges });
    return { ...r, volume, changedBytes };
  } finally {
    await use.end();
  }
}

/** `haven restore SNAPSHOT --to volume:NAME --rollback --data DIR`: quick rollback offline. */
export async function rollbackVolume(
  req: RepoAccess & {
    snapshot: string;
    volume: string;
    data?: string;
    onProgress?: (d: number, t: number) => void;
  },
): Promise<RollbackResult> {
  const repo = await openRepository(req);
  return withStorage(req.data, (storage) =>
    rollbackWith(
      storage,
      repo,
      req.snapshot,
      req.volume,
      req.onProgress ? { onProgress: req.onProgress } : {},
    ),
  );
}
