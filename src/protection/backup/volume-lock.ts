import { HavenError } from '../../common/index.js';

/** Per storage service: the volumes a backup holds now, and what resolves when it lets go. */
const held = new WeakMap<object, Map<string, Promise<void>>>();

/**
 * One backup at a time per volume: a volume's backup bitmap has one epoch at a time, and a
 * second backup started beside the first would take it away from under it. A second backup of
 * a volume waits for the first to finish (and becomes an incremental of it). Volumes are taken
 * in name order, so backups of overlapping sets (two VMs sharing a disk) cannot deadlock.
 */
export async function lockVolumes(
  storage: object,
  volumes: string[],
  opts: { signal?: AbortSignal; onWait?: (volume: string) => void } = {},
): Promise<() => void> {
  let map = held.get(storage);
  if (!map) held.set(storage, (map = new Map()));
  const releases: (() => void)[] = [];
  const releaseAll = () => {
    for (const r of releases.splice(0)) r();
  };
  try {
    for (const v of [...new Set(volumes)].sort()) {
      for (let busy = map.get(v); busy; busy = map.get(v)) {
        opts.onWait?.(v);
        await untilDone(busy, v, opts.signal);
      }
      let release!: () => void;
      const mine = new Promise<void>((r) => (release = r));
      const m = map;
      m.set(v, mine);
      releases.push(() => {
        if (m.get(v) === mine) m.delete(v);
        release();
      });
    }
  } catch (err) {
    releaseAll();
    throw err;
  }
  return releaseAll;
}

function untilDone(busy: Promise<void>, volume: string, signal?: AbortSignal): Promise<void> {
  if (!signal) return busy;
  if (signal.aborted) return Promise.reject(cancelled(volume));
  return new Promise<void>((resolve, reject) => {
    const onAbort = () => reject(cancelled(volume));
    signal.addEventListener('abort', onAbort, { once: true });
    void busy.then(() => {
      signal.removeEventListener('abort', onAbort);
      resolve();
    });
  });
}

const cancelled = (volume: string) =>
  new HavenError('CANCELLED', `cancelled while waiting for the running backup of volume ${volume}`);
