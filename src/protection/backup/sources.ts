import { resolve } from 'node:path';
import { openRawFile, type BitmapView } from '../../block/index.js';
import { invalidArgument } from '../../common/index.js';
import { connectNbd, imageInfo, startQemuNbd, type TlsCredentials } from '../../nbd/index.js';
import type { Repository, SnapshotManifest } from '../../repository/index.js';
import type { StorageService } from '../../storage/index.js';
import type { BackupDisk, Range } from './engine.js';

/** What a backup reads, ready for the engine, and how to end it. */
export interface OpenedSource {
  source: { kind: string; name: string };
  disks: BackupDisk[];
  parent?: SnapshotManifest;
  bitmap?: { name: string; epoch?: string };
  /** After the backup: `manifest` when it committed, undefined when it failed. */
  finish(manifest?: SnapshotManifest): Promise<void>;
}

/** The bitmap Haven keeps on each volume it backs up. */
export const BACKUP_BITMAP = 'haven-backup';

/** An image file: raw read directly; qcow2, vmdk, vhdx, … through qemu-nbd. Always a full read. */
export async function openImageSource(path: string, format?: string): Promise<OpenedSource> {
  const file = resolve(path);
  const fmt = format ?? imageInfo(file).format;
  if (fmt === 'raw') {
    const device = openRawFile(file, { readOnly: true });
    return {
      source: { kind: 'image', name: file },
      disks: [{ name: 'disk0', device }],
      finish: async () => void (await device.close()),
    };
  }
  const q = await startQemuNbd(file, fmt);
  try {
    const device = await connectNbd(q.uri, { readOnly: true, connections: 4 });
    return {
      source: { kind: 'image', name: file },
      disks: [{ name: 'disk0', device }],
      finish: async () => {
        await device.close();
        q.stop();
      },
    };
  } catch (err) {
    q.stop();
    throw err;
  }
}

/**
 * An NBD export (nbd://, nbds://, nbd+unix://). With `bitmap` and a parent snapshot, an
 * incremental: only what the export's qemu:dirty-bitmap:<bitmap> context marks is read.
 */
export async function openNbdSource(
  uri: string,
  opts: { tls?: TlsCredentials; bitmap?: string; parent?: SnapshotManifest } = {},
): Promise<OpenedSource> {
  const device = await connectNbd(uri, {
    readOnly: true,
    connections: 4,
    ...(opts.tls ? { tls: opts.tls } : {}),
    ...(opts.bitmap ? { bitmap: opts.bitmap } : {}),
  });
  let changed: Range[] | undefined;
  if (opts.bitmap && opts.parent) {
    changed = [];
    for (let at = 0; at < device.size;) {
      const extents = await device.dirtyStatus(at, Math.min(device.size - at, 2 ** 30));
      for (const e of extents) {
        if (e.flags & 1) changed.push({ offset: e.offset, length: e.length });
        at = e.offset + e.length;
      }
    }
  }
  return {
    source: { kind: 'nbd', name: uri.replace(/\?.*$/, '') },
    disks: [{ name: 'disk0', device, ...(changed ? { changed } : {}) }],
    ...(changed && opts.parent ? { parent: opts.parent } : {}),
    finish: async () => void (await device.close()),
  };
}

/**
 * A Haven volume, read from its pool directly (the "san" transport) at a snapshot taken for the
 * backup. The snapshot ends the epoch of the volume's backup bitmap atomically; when the newest
 * backup of this volume in the repository was taken at the previous epoch (its snapshot is
 * still there), the backup is incremental and reads only what the frozen bitmap marks.
 * Afterwards the previous epoch's snapshot is deleted; if the backup failed, the frozen changes
 * go back into the bitmap and the new snapshot is deleted, so nothing is missed next time.
 */
export async function openVolumeSource(
  storage: StorageService,
  repo: Repository,
  volume: string,
): Promise<OpenedSource> {
  storage.volume(volume);
  if (!storage.listBitmaps(volume).some((b) => b.name === BACKUP_BITMAP))
    storage.addBitmap(volume, BACKUP_BITMAP);
  const previous = (await repo.listSnapshots())
    .filter((s) => s.source.kind === 'volume' && s.source.name === volume && s.bitmap?.name === BACKUP_BITMAP)
    .pop();
  // Epochs of backups that failed or died: their changes go back into the bitmap first.
  let trustBitmap = true;
  for (const s of storage.listSnapshots(volume))
    if (s.name.startsWith('haven-backup-') && s.name !== previous?.bitmap?.epoch)
      try {
        storage.revokeCheckpoint(volume, s.name, BACKUP_BITMAP);
      } catch {
        storage.deleteSnapshot(volume, s.name); // its changes are unknown: read everything
        trustBitmap = false;
      }
  const snapshots = new Set(storage.listSnapshots(volume).map((s) => s.name));
  const epoch = `haven-backup-${repo.newSnapshotId()}`;
  storage.checkpoint(volume, epoch, BACKUP_BITMAP);
  const device = storage.openDevice(`${volume}@${epoch}`, { readOnly: true });
  let changed: Range[] | undefined;
  const frozen = storage.bitmapViews(`${volume}@${epoch}`).find((v) => v.name === BACKUP_BITMAP);
  if (trustBitmap && previous?.bitmap?.epoch && snapshots.has(previous.bitmap.epoch) && frozen)
    changed = dirtyRanges(frozen, device.size);
  return {
    source: { kind: 'volume', name: volume },
    disks: [{ name: volume, device, ...(changed ? { changed } : {}) }],
    ...(changed && previous ? { parent: previous } : {}),
    bitmap: { name: BACKUP_BITMAP, epoch },
    finish: async (manifest) => {
      await device.close();
      if (!manifest) return storage.revokeCheckpoint(volume, epoch, BACKUP_BITMAP);
      for (const s of storage.listSnapshots(volume))
        if (s.name.startsWith('haven-backup-') && s.name !== epoch) storage.deleteSnapshot(volume, s.name);
    },
  };
}

export function dirtyRanges(view: BitmapView, size: number): Range[] {
  const out: Range[] = [];
  for (let at = 0; at < size;) {
    const extents = view.status(at, size - at);
    if (extents.length === 0) break;
    for (const e of extents) {
      if (e.flags & 1) out.push({ offset: e.offset, length: e.length });
      at = e.offset + e.length;
    }
  }
  return out;
}

/** Which kind of source a command-line argument names. */
export function classifySource(arg: string): { kind: 'volume' | 'nbd' | 'image'; value: string } {
  if (arg.startsWith('volume:')) {
    const v = arg.slice('volume:'.length);
    if (!v) throw invalidArgument('volume: needs a volume name (volume:NAME)');
    return { kind: 'volume', value: v };
  }
  if (/^nbds?(\+unix)?:\/\//.test(arg)) return { kind: 'nbd', value: arg };
  return { kind: 'image', value: arg };
}
