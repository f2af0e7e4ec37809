import { existsSync, mkdirSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { DirtyBitmap, type BitmapView } from '../block/index.js';
import { conflict, notFound, syncDirectory } from '../common/index.js';
import { checkName } from './pool.js';
import type { ChangeTracker } from './tap.js';

export interface BitmapInfo {
  name: string;
  granularity: number;
  enabled: boolean;
  /** May have missed writes (the service crashed while it was in use): the next backup reads everything. */
  inconsistent: boolean;
  dirtyBytes: number;
  /** For a bitmap frozen by a checkpoint: the snapshot it ends at. */
  snapshot?: string;
}

const SUFFIX = '.bitmap';

/**
 * The dirty bitmaps of one volume (changed-block tracking), kept in memory and saved to
 * `<dir>/<name>.bitmap` on a clean close. A bitmap frozen at a snapshot is named "name@snapshot".
 * The tap marks every change in every enabled bitmap, before the change is applied.
 */
export class VolumeBitmaps implements ChangeTracker {
  private readonly bitmaps = new Map<string, DirtyBitmap>();

  private constructor(
    private readonly dir: string,
    private size: number,
  ) {}

  /** Loads the saved bitmaps; after a crash (`crashed`) none of them is trusted. */
  static open(dir: string, size: number, crashed: boolean): VolumeBitmaps {
    const vb = new VolumeBitmaps(dir, size);
    if (existsSync(dir))
      for (const f of readdirSync(dir)) {
        if (!f.endsWith(SUFFIX)) continue;
        const bm = DirtyBitmap.load(join(dir, f));
        if (crashed) bm.inconsistent = true;
        vb.bitmaps.set(bm.name, bm);
      }
    return vb;
  }

  markDirty(offset: number, length: number): void {
    for (const bm of this.bitmaps.values()) bm.markDirty(offset, length);
  }

  add(name: string, granularity = 65536): BitmapInfo {
    checkName('bitmap', name);
    if (this.bitmaps.has(name)) throw conflict(`bitmap ${name} already exists`);
    const bm = new DirtyBitmap(name, this.size, granularity);
    this.bitmaps.set(name, bm);
    return info(bm);
  }

  remove(name: string): void {
    this.get(name);
    this.bitmaps.delete(name);
    rmSync(join(this.dir, name + SUFFIX), { force: true });
  }

  clear(name: string): void {
    this.get(name).clear();
  }

  get(name: string): DirtyBitmap {
    const bm = this.bitmaps.get(name);
    if (!bm) throw notFound(`no bitmap ${name}`);
    return bm;
  }

  list(): BitmapInfo[] {
    return [...this.bitmaps.values()].map(info).sort((a, b) => a.name.localeCompare(b.name));
  }

  /** The trustworthy live bitmaps, as NBD offers them (qemu:dirty-bitmap:<name>). */
  liveViews(): BitmapView[] {
    return [...this.bitmaps.values()].filter((b) => !b.inconsistent && !b.name.includes('@'));
  }

  /** The trustworthy bitmaps frozen at `snapshot`, under their own names. */
  frozenViews(snapshot: string): BitmapView[] {
    const suffix = '@' + snapshot;
    return [...this.bitmaps.values()]
      .filter((b) => !b.inconsistent && b.name.endsWith(suffix))
      .map((b) => ({
        name: b.name.slice(0, -suffix.length),
        granularity: b.granularity,
        status: (o, l) => b.status(o, l),
      }));
  }

  /**
   * Ends an epoch at a snapshot just taken: the bitmap's changes so far are kept, disabled, as
   * "name@snapshot", and the bitmap starts again empty. (The caller makes this atomic with the
   * snapshot: nothing is written in between.)
   */
  freeze(name: string, snapshot: string): BitmapInfo {
    const bm = this.get(name);
    const frozen = bm.copy(`${name}@${snapshot}`);
    frozen.enabled = false;
    this.bitmaps.set(frozen.name, frozen);
    bm.clear();
    return info(frozen);
  }

  /** Drops the bitmaps frozen at a snapshot that is being deleted. */
  dropSnapshot(snapshot: string): void {
    for (const name of [...this.bitmaps.keys()]) if (name.endsWith('@' + snapshot)) this.remove(name);
  }

  resize(size: number): void {
    this.size = size;
    for (const bm of this.bitmaps.values()) if (!bm.name.includes('@')) bm.resize(size);
  }

  save(): void {
    if (this.bitmaps.size === 0) return;
    mkdirSync(this.dir, { recursive: true, mode: 0o700 });
    for (const bm of this.bitmaps.values()) bm.save(join(this.dir, bm.name + SUFFIX));
  }

  destroy(): void {
    this.bitmaps.clear();
    rmSync(this.dir, { recursive: true, force: true });
  }
}

function info(bm: DirtyBitmap): BitmapInfo {
  const at = bm.name.indexOf('@');
  return {
    name: bm.name,
    granularity: bm.granularity,
    enabled: bm.enabled,
    inconsistent: bm.inconsistent,
    dirtyBytes: bm.dirtyBytes(),
    ...(at >= 0 ? { snapshot: bm.name.slice(at + 1) } : {}),
  };
}

/**
 * Marks a pool's bitmaps as in use while a service has it open. If the marker is already there
 * at open, the last service died without saving them: they are not trusted.
 */
export function markBitmapsInUse(poolPath: string): { crashed: boolean; release: () => void } {
  const dir = join(poolPath, 'bitmaps');
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const marker = join(dir, '.in-use');
  const crashed = existsSync(marker);
  writeFileSync(marker, `${process.pid}\n`, { mode: 0o600 });
  syncDirectory(dir);
  return {
    crashed,
    release: () => {
      rmSync(marker, { force: true });
      syncDirectory(dir);
    },
  };
}
