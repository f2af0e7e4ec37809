import type { BitmapView } from '../block/index.js';
import type { NbdServer } from '../nbd/index.js';
import type { StorageService } from './service.js';
import { TapDevice } from './tap.js';

/**
 * The storage service's data path: every volume is exported over NBD by its name through its
 * I/O tap, and every snapshot read-only as "volume@snapshot".
 */
export class StorageExports {
  private readonly taps = new Map<string, TapDevice>();
  private readonly exported = new Set<string>();

  constructor(
    private readonly storage: StorageService,
    private readonly server: NbdServer,
    private readonly bitmapsOf: (volume: string) => BitmapView[] = () => [],
  ) {}

  /** Exports what is not yet exported and withdraws what no longer exists. */
  refresh(): void {
    const want = new Set<string>();
    for (const v of this.storage.listVolumes()) {
      want.add(v.name);
      if (!this.exported.has(v.name)) {
        const tap = new TapDevice(this.storage.openDevice(v.name));
        this.taps.set(v.name, tap);
        this.server.addExport({
          name: v.name,
          description: `volume ${v.name} (pool ${v.pool})`,
          device: tap,
          bitmaps: this.bitmapsOf(v.name),
        });
        this.exported.add(v.name);
      }
      for (const s of this.storage.listSnapshots(v.name)) {
        const name = `${v.name}@${s.name}`;
        want.add(name);
        if (!this.exported.has(name)) {
          this.server.addExport({
            name,
            description: `snapshot ${s.name} of ${v.name}`,
            device: this.storage.openDevice(name),
          });
          this.exported.add(name);
        }
      }
    }
    for (const name of [...this.exported])
      if (!want.has(name)) {
        this.server.removeExport(name);
        this.exported.delete(name);
        this.taps.delete(name);
      }
  }

  /** The tap of a volume, to add change trackers or subscribers. */
  tap(volume: string): TapDevice | undefined {
    return this.taps.get(volume);
  }

  names(): string[] {
    return [...this.exported].sort();
  }
}
