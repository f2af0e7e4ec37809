import { resolve } from 'node:path';
import {
  collectRanges,
  collectRangesSync,
  walkExtentsSync,
  openRawFile,
  walkExtents,
  type BitmapView,
  type BlockDevice,
} from '../../block/index.js';
import { HavenError, invalidArgument } from '../../common/index.js';
import { connectNbd, inspectImage, startQemuNbd, type TlsCredentials } from '../../nbd/index.js';
import type { Repository, SnapshotManifest } from '../../repository/index.js';
import type { StorageService } from '../../storage/index.js';
import type { BackupDisk, Range } from './engine.js';
import { startQmpPull } from './qmp-pull.js';
import type { ConsistencyRecord } from './quiesce.js';
import { attachSnapshot, type SiteEndpoints, type Transport } from './transports.js';
import { lockVolumes } from './volume-lock.js';

/** What a backup reads, ready for the engine, and how to end it. */
export interface OpenedSource {
  source: { kind: string; name: string };
  disks: BackupDisk[];
  parent?: SnapshotManifest;
  bitmap?: { name: string; epoch?: string };
  vm?: unknown;
  /** How the data is read: file, nbd, nbds, san, hotadd. */
  transport?: string;
  /** Whether the guest was quiesced at the point in time (default: crash-consistent). */
  consistency?: ConsistencyRecord;
  /** After the backup: `manifest` when it committed, undefined when it failed. */
  finish(manifest?: SnapshotManifest): Promise<void>;
}

/** The bitmap Haven keeps on each volume it backs up. */
export const BACKUP_BITMAP = 'haven-backup';

/**
 * An image file: raw read directly; qcow2, vmdk, vhdx, … through qemu-nbd. Always a full read.
 * Without `format` the format is probed, and an image that names other files is refused (see
 * inspectImage: the content may be a guest's); a damaged image or a FIFO is refused too.
 */
export async function openImageSource(path: string, format?: string): Promise<OpenedSource> {
  const image = await inspectImage(path, format);
  const file = image.path;
  const fmt = image.format;
  if (fmt === 'raw') {
    const device = openRawFile(file, { readOnly: true });
    return {
      source: { kind: 'image', name: file },
      transport: 'file',
      disks: [{ name: 'disk0', device }],
      finish: async () => void (await device.close()),
    };
  }
  const q = await startQemuNbd(file, fmt, { noBacking: image.probed });
  try {
    const device = await connectNbd(q.uri, { readOnly: true, connections: 4 });
    return {
      source: { kind: 'image', name: file },
      transport: 'file',
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
    const dirty = walkExtents((o, l) => device.dirtyStatus(o, l), device.size);
    changed = await collectRanges(dirty, (flags) => (flags & 1) !== 0);
  }
  return {
    source: { kind: 'nbd', name: uri.replace(/\?.*$/, '') },
    transport: uri.startsWith('nbds') ? 'nbds' : 'nbd',
    disks: [{ name: 'disk0', device, ...(changed ? { changed } : {}) }],
    ...(changed && opts.parent ? { parent: opts.parent } : {}),
    finish: async () => void (await device.close()),
  };
}

/**
 * Haven volumes (one, or all the disks of a VM), read from their pools directly (the "san"
 * transport) at snapshots taken for the backup — all in one synchronous step, so that a VM's
 * disks are captured at one crash-consistent point (no write is served in between). Each
 * snapshot ends the epoch of the volume's backup bitmap atomically; when the newest backup of
 * this source in the repository was taken at the previous epochs (their snapshots are still
 * there), the backup is incremental and reads only what the frozen bitmaps mark. Afterwards the
 * previous epochs' snapshots are deleted; if the backup failed, the frozen changes go back into
 * the bitmaps and the new snapshots are deleted, so nothing is missed next time.
 */
export async function openVolumeSource(
  storage: StorageService,
  repo: Repository,
  volume: string | string[],
  source: { kind: string; name: string } = { kind: 'volume', name: String(volume) },
  vm?: unknown,
  opts: {
    /** How to read (default "san": from the pool directly); recorded in the snapshot. */
    transport?: Transport;
    /** The site's NBD listeners, for the transports that attach the snapshot over NBD (hotadd, nbd, nbds). */
    site?: SiteEndpoints;
    /**
     * Runs `snapshot` (synchronous: the point in time) with the guest quiesced around it, e.g.
     * quiescedSnapshot; without it the snapshot is crash-consistent.
     */
    quiesce?: (snapshot: () => void) => Promise<ConsistencyRecord>;
    /** Read everything (a full backup), even where the bitmaps would allow an incremental. */
    full?: boolean;
    /** Another backup of one of the volumes is running: this one waits for it (see lockVolumes). */
    onWait?: (volume: string) => void;
    signal?: AbortSignal;
  } = {},
): Promise<OpenedSource> {
  const volumes = Array.isArray(volume) ? volume : [volume];
  for (const v of volumes) storage.volume(v);
  const unlock = await lockVolumes(storage, volumes, opts);
  try {
    const src = await openLockedVolumes(storage, repo, volumes, source, vm, opts);
    return {
      ...src,
      finish: async (manifest) => {
        try {
          await src.finish(manifest);
        } finally {
          unlock();
        }
      },
    };
  } catch (err) {
    unlock();
    throw err;
  }
}

async function openLockedVolumes(
  storage: StorageService,
  repo: Repository,
  volumes: string[],
  source: { kind: string; name: string },
  vm: unknown,
  opts: {
    transport?: Transport;
    site?: SiteEndpoints;
    quiesce?: (snapshot: () => void) => Promise<ConsistencyRecord>;
    full?: boolean;
  },
): Promise<OpenedSource> {
  for (const v of volumes) {
    storage.volume(v);
    if (!storage.listBitmaps(v).some((b) => b.name === BACKUP_BITMAP)) storage.addBitmap(v, BACKUP_BITMAP);
  }
  const previous = (await repo.listSnapshots())
    .filter(
      (s) =>
        s.source.kind === source.kind && s.source.name === source.name && s.bitmap?.name === BACKUP_BITMAP,
    )
    .pop();
  const epoch = `haven-backup-${repo.newSnapshotId()}`;
  const incremental = !opts.full && !!previous && previous.disks.length === volumes.length;
  /** Volumes whose frozen bitmap may not say all that changed since the previous epoch. */
  const untrusted = new Set<string>();
  /** Volumes that still have the previous epoch's snapshot. */
  const atPrevious = new Set<string>();
  for (const v of volumes) {
    // Epochs of backups that failed or died: their changes go back into the bitmap first.
    for (const s of storage.listSnapshots(v))
      if (s.name.startsWith('haven-backup-') && s.name !== previous?.bitmap?.epoch)
        try {
          storage.revokeCheckpoint(v, s.name, BACKUP_BITMAP);
        } catch {
          storage.deleteSnapshot(v, s.name); // its changes are unknown to the bitmap
          untrusted.add(v);
        }
    if (previous?.bitmap?.epoch && storage.listSnapshots(v).some((s) => s.name === previous.bitmap!.epoch))
      atPrevious.add(v);
  }
  // The point in time, kept short (a guest may be frozen around it): nothing awaits in here, so
  // no guest write can fall between two disks.
  const snapshot = () => {
    for (const v of volumes) storage.checkpoint(v, epoch, BACKUP_BITMAP);
  };
  const consistency: ConsistencyRecord = opts.quiesce
    ? await opts.quiesce(snapshot)
    : (snapshot(), { consistency: 'crash', reason: `${source.kind} backup: no guest was asked to freeze` });
  const disks: BackupDisk[] = [];
  let trustChanges = incremental;
  for (const v of volumes) {
    const device = await openSnapshot(storage, `${v}@${epoch}`, opts.transport ?? 'san', opts.site);
    const frozen = storage.bitmapViews(`${v}@${epoch}`).find((x) => x.name === BACKUP_BITMAP);
    let changed: Range[] | undefined;
    if (atPrevious.has(v) && frozen && !untrusted.has(v)) changed = dirtyRanges(frozen, device.size);
    // No bitmap to trust (a crash, a failed epoch): a pool that keeps its own changes (RBD: Ceph's
    // diff between the two snapshots) still says exactly what changed since the previous epoch.
    else if (incremental && atPrevious.has(v))
      changed = await storage.changedExtents(v, previous!.bitmap!.epoch!, epoch).catch(() => undefined);
    if (!changed) trustChanges = false;
    disks.push({ name: v, device, ...(changed ? { changed } : {}) });
  }
  if (!trustChanges) for (const d of disks) delete d.changed;
  return {
    source,
    disks,
    ...(trustChanges && previous ? { parent: previous } : {}),
    bitmap: { name: BACKUP_BITMAP, epoch },
    transport: opts.transport ?? 'san',
    consistency,
    ...(vm !== undefined ? { vm } : {}),
    finish: async (manifest) => {
      for (const d of disks) await d.device.close();
      for (const v of volumes) {
        if (!manifest) {
          storage.revokeCheckpoint(v, epoch, BACKUP_BITMAP);
          continue;
        }
        for (const s of storage.listSnapshots(v))
          if (s.name.startsWith('haven-backup-') && s.name !== epoch) storage.deleteSnapshot(v, s.name);
      }
    },
  };
}

/** A snapshot of the backup, read through its transport: from the pool (san), or attached over NBD. */
function openSnapshot(
  storage: StorageService,
  snapshot: string,
  transport: Transport,
  site: SiteEndpoints | undefined,
): BlockDevice | Promise<BlockDevice> {
  if (transport === 'san') return storage.openDevice(snapshot, { readOnly: true });
  if (!site)
    throw invalidArgument(`transport ${transport} reads through the site's NBD listeners: run it on a site`);
  return attachSnapshot(transport, snapshot, site);
}

/** The ranges a bitmap marks dirty, merged. */
export function dirtyRanges(view: BitmapView, size: number): Range[] {
  // Past a bitmap's own size (a volume grown since) it answers nothing: that is clean, as before.
  const status = (o: number, l: number) => {
    const r = view.status(o, l);
    return r.length ? r : [{ offset: o, length: l, flags: 0 }];
  };
  return collectRangesSync(walkExtentsSync(status, size), (flags) => (flags & 1) !== 0);
}

/** Which kind of source a command-line argument names. */
export function classifySource(arg: string): { kind: 'volume' | 'nbd' | 'image' | 'qemu'; value: string } {
  if (arg.startsWith('qemu:')) {
    const v = arg.slice('qemu:'.length);
    if (!/^[^#]+#[^#]+$/.test(v))
      throw invalidArgument('qemu: needs the QMP socket and the disk node: qemu:/path/qmp.sock#drive0');
    return { kind: 'qemu', value: v };
  }
  if (arg.startsWith('volume:')) {
    const v = arg.slice('volume:'.length);
    if (!v) throw invalidArgument('volume: needs a volume name (volume:NAME)');
    return { kind: 'volume', value: v };
  }
  if (/^nbds?(\+unix)?:\/\//.test(arg)) return { kind: 'nbd', value: arg };
  return { kind: 'image', value: arg };
}

/**
 * A running QEMU VM that Haven does not manage, through its QMP socket (pull mode: see
 * qmp-pull.ts). Incremental when the newest snapshot of this disk in the repository was taken
 * at the epoch whose bitmap QEMU still has: then only what that bitmap marks is read.
 */
export async function openQmpSource(
  repo: Repository,
  opts: { qmpSocket: string; node: string; workDir: string; full?: boolean },
): Promise<OpenedSource> {
  const name = `${resolve(opts.qmpSocket)}#${opts.node}`;
  const session = await startQmpPull(opts);
  try {
    const previous = (await repo.listSnapshots())
      .filter((s) => s.source.kind === 'qemu' && s.source.name === name)
      .pop();
    const incremental =
      !opts.full && !!session.incrementalBitmap && previous?.bitmap?.epoch === session.incrementalBitmap;
    const src = await openNbdSource(
      session.uri,
      incremental ? { bitmap: session.incrementalBitmap!, parent: previous! } : {},
    );
    return {
      ...src,
      source: { kind: 'qemu', name },
      transport: 'nbd',
      bitmap: { name: 'qemu', epoch: session.nextBitmap },
      finish: async (manifest) => {
        try {
          await src.finish(manifest);
        } finally {
          await session.finish(!!manifest);
        }
      },
    };
  } catch (err) {
    await session.finish(false);
    throw err;
  }
}

/**
 * What quick rollback of a volume to one of its snapshots must rewrite: the ranges written since
 * the snapshot's backup, from the volume's live backup bitmap. Only the newest backup of the
 * volume qualifies (its epoch is the volume's current checkpoint); older ones need a full restore.
 */
export function changesSinceBackup(
  storage: StorageService,
  volume: string,
  snapshot: SnapshotManifest,
): { disk: number; ranges: Range[] } {
  const disk = snapshot.disks.findIndex((d) => d.name === volume);
  if (disk < 0)
    throw invalidArgument(
      `snapshot ${snapshot.id} has no disk of volume ${volume} (it has ${snapshot.disks.map((d) => d.name).join(', ')})`,
    );
  const epoch = snapshot.bitmap?.name === BACKUP_BITMAP ? snapshot.bitmap.epoch : undefined;
  if (!epoch || !storage.listSnapshots(volume).some((s) => s.name === epoch))
    throw new HavenError(
      'CONFLICT',
      `quick rollback needs the newest backup of volume ${volume}; snapshot ${snapshot.id} is not it (restore it in full instead)`,
    );
  const live = storage.bitmapViews(volume).find((b) => b.name === BACKUP_BITMAP);
  if (!live)
    throw new HavenError('CONFLICT', `volume ${volume} has no backup bitmap: restore in full instead`);
  const size = storage.volume(volume).size;
  if (snapshot.disks[disk]!.size !== size)
    throw new HavenError(
      'CONFLICT',
      `volume ${volume} was resized since snapshot ${snapshot.id}: restore in full instead`,
    );
  return { disk, ranges: dirtyRanges(live, size) };
}
