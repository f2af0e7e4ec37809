import { isMoveInternal } from './service.js';
import type { NbdExport, NbdServer } from '../nbd/index.js';
import type { StorageService } from './service.js';
import type { VolumeInfo } from './pool.js';

/**
 * A volume a replication target writes (value: "SOURCE-SITE/GROUP"): never exported, since
 * between two checkpoints its live state may be torn; a checkpoint is read through a clone.
 */
export const REPLICA_LABEL = 'haven.replica-of';

/**
 * The storage service's data path: every volume is exported over NBD by its name through its
 * I/O tap, with its live dirty bitmaps; every snapshot read-only as "volume@snapshot", with the
 * bitmaps frozen at it.
 */
export class StorageExports {
  private readonly exported = new Map<string, NbdExport>();

  private readonly servers: NbdServer[] = [];

  constructor(
    private readonly storage: StorageService,
    server: NbdServer,
  ) {
    this.servers.push(server);
  }

  /** Serves the same exports on another server too (a TLS-only listener beside the plain one). */
  addServer(server: NbdServer): void {
    this.servers.push(server);
    for (const exp of this.exported.values()) server.addExport(exp);
  }

  /** Exports what is not yet exported, updates bitmaps, and withdraws what no longer exists. */
  refresh(): void {
    const want = new Set<string>();
    for (const v of this.storage.listVolumes()) this.want(v, want);
    for (const name of [...this.exported.keys()]) if (!want.has(name)) this.remove(name);
  }

  /**
   * refresh() for one volume and its snapshots only: after a snapshot of it was taken or
   * deleted, so that a scheduler with a thousand volumes does not walk all of them per run.
   */
  refreshVolume(volume: string): void {
    const want = new Set<string>();
    if (this.storage.hasVolume(volume)) this.want(this.storage.volume(volume), want);
    for (const name of [...this.exported.keys()])
      if ((name === volume || name.startsWith(`${volume}@`)) && !want.has(name)) this.remove(name);
  }

  /** NBD clients attached to the volume or any of its snapshots. */
  clientsOf(volume: string): number {
    let n = 0;
    for (const name of this.exported.keys())
      if (name === volume || name.startsWith(`${volume}@`))
        for (const srv of this.servers) n += srv.clientsOf(name);
    return n;
  }

  /** Withdraws the exports of a volume (and its snapshots) or of one "volume@snapshot". */
  withdraw(target: string): void {
    for (const [name, exp] of [...this.exported])
      if (name === target || (!target.includes('@') && name.startsWith(`${target}@`))) {
        for (const srv of this.servers) srv.removeExport(name);
        this.exported.delete(name);
        // Snapshot devices are the export's own; a volume's tap belongs to the storage service.
        if (name.includes('@')) void exp.device.close();
      }
  }

  names(): string[] {
    return [...this.exported.keys()].sort();
  }

  private want(v: VolumeInfo, want: Set<string>): void {
    if (isMoveInternal(v.name)) return; // a copy in the making, or a source on its way out
    if (this.storage.missingBase(v.name)) return; // would serve zeroes for its base's data
    // A replica is torn between checkpoints; its checkpoints are read through clones.
    if (v.labels[REPLICA_LABEL] !== undefined) return;
    want.add(v.name);
    this.ensure(v.name, `volume ${v.name} (pool ${v.pool})`);
    for (const s of this.storage.listSnapshots(v.name)) {
      const name = `${v.name}@${s.name}`;
      want.add(name);
      this.ensure(name, `snapshot ${s.name} of ${v.name}`);
    }
  }

  private remove(name: string): void {
    for (const srv of this.servers) srv.removeExport(name);
    this.exported.delete(name);
  }

  private ensure(name: string, description: string): void {
    const bitmaps = this.storage.bitmapViews(name);
    const exp = this.exported.get(name);
    if (exp) {
      exp.bitmaps = bitmaps;
      return;
    }
    const created: NbdExport = { name, description, device: this.storage.openDevice(name), bitmaps };
    for (const srv of this.servers) srv.addExport(created);
    this.exported.set(name, created);
  }
}
