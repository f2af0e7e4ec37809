import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { OverlayDevice, type BlockDevice } from '../../block/index.js';
import { serveDevice, type ServingImage } from '../../nbd/index.js';
import { openRepository, type RepoAccess } from '../backup/requests.js';
import { SnapshotDevice } from './snapshot-device.js';

export interface MountRequest extends RepoAccess {
  snapshot: string;
  disk?: number;
  /** Writes go to a throw-away overlay (removed when the mount stops); the backup is never written. */
  writable?: boolean;
  listen?: string;
  socket?: string;
  name?: string;
}

/**
 * `haven backup mount`: one disk of a backup served over NBD for any tool (qemu-img, nbdcopy,
 * guestfish, a VM elsewhere), read-only from the repository, or writable through an overlay.
 */
export async function mountSnapshot(req: MountRequest): Promise<ServingImage & { snapshot: string }> {
  const repo = await openRepository(req);
  // Forget refuses the snapshot while it is mounted, so gc keeps its chunks.
  const use = await repo.useSnapshot(req.snapshot);
  const snap = use.snapshot;
  let overlayDir: string | undefined;
  try {
    const base = await SnapshotDevice.open(repo, snap, req.disk ?? 0);
    let device: BlockDevice = base;
    if (req.writable) {
      overlayDir = mkdtempSync(join(tmpdir(), 'haven-mount-'));
      device = OverlayDevice.create(join(overlayDir, 'overlay'), base);
    }
    const serving = await serveDevice(device, `backup ${snap.id} ${snap.disks[req.disk ?? 0]!.name}`, {
      name: req.name ?? snap.id,
      ...(req.listen ? { listen: req.listen } : {}),
      ...(req.socket ? { socket: req.socket } : {}),
      onStop: async () => {
        if (overlayDir) rmSync(overlayDir, { recursive: true, force: true });
        await use.end();
      },
    });
    return { ...serving, snapshot: snap.id };
  } catch (err) {
    if (overlayDir) rmSync(overlayDir, { recursive: true, force: true });
    await use.end();
    throw err;
  }
}
