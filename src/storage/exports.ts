import type { NbdExport, NbdServer } from '../nbd/index.js';
import type { StorageService } from './service.js';

/**
 * The storage service's data path: every volume is exported over NBD by its name through its
 * I/O tap, with its live dirty bitmaps; every snapshot read-only as "volume@snapshot", with the
 * bitmaps frozen at it.
 */
export class StorageExports {
  private readonly exported = new Map<string, NbdExport>();

  constructor(
    private readonly storage: StorageService,
    private readonly server: NbdServer,
  ) {}

  /** Exports what is not yet exported, updates bitmaps, and withdraws what no longer exists. */
  refresh(): void {
    const want = new Set<string>();
    for (const v of this.storage.listVolumes()) {
      want.add(v.name);
      this.ensure(v.name, `volume ${v.name} (pool ${v.pool})`);
      for (const s of this.storage.listSnapshots(v.name)) {
        const name = `${v.name}@${s.name}`;
        want.add(name);
        this.ensure(name, `snapshot ${s.name} of ${v.name}`);
      }
    }
    for (const name of [...this.exported.keys()])
      if (!want.has(name)) {
        this.server.removeExport(name);
        this.exported.delete(name);
      }
  }

  /** NBD clients attached to the volume or any of its snapshots. */
  clientsOf(volume: string): number {
    let n = 0;
    for (const name of this.exported.keys())
      if (name === volume || name.startsWith(`${volume}@`)) n += this.server.clientsOf(name);
    return n;
  }

  /** Withdraws the exports of a volume (and its snapshots) or of one "volume@snapshot". */
  withdraw(target: string): void {
    for (const [name, exp] of [...this.exported])
      if (name === target || (!target.includes('@') && name.startsWith(`${target}@`))) {
        this.server.removeExport(name);
        this.exported.delete(name);
        // Snapshot devices are the export's own; a volume's tap belongs to the storage service.
        if (name.includes('@')) void exp.device.close();
      }
  }

  names(): string[] {
    return [...this.exported.keys()].sort();
  }

  private ensure(name: string, description: string): void {
    const bitmaps = this.storage.bitmapViews(name);
    const exp = this.exported.get(name);
    if (exp) {
      exp.bitmaps = bitmaps;
      return;
    }
    const created: NbdExport = { name, description, device: this.storage.openDevice(name), bitmaps };
    this.server.addExport(created);
    this.exported.set(name, created);
  }
}
