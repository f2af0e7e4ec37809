import { hostname } from 'node:os';
import { HavenError, conflict } from '../common/index.js';
import type { PackSweep } from './backend.js';
import type { DiskIndex } from './disk-index.js';
import { ZERO_DIGEST, isTemporaryKey } from './format.js';
import { isAsideName } from './chunk-claim.js';
import { recordAlive, selfIdentity } from './process.js';
import type { Repository } from './repository.js';

/** Unreferenced chunks younger than this before the cutoff are kept: clocks of other writers. */
const GC_GRACE_MS = 5 * 60 * 1000;
const LOCK = 'locks/gc';

export interface GcOptions {
  graceMs?: number;
  /** Called as the sweep goes, with the number of chunk files looked at so far. */
  onSweep?: (chunks: number) => void;
}

export interface GcReport {
  removedChunks: number;
  removedBytes: number;
  keptChunks: number;
  keptBytes: number;
  removedPartial: number;
  /** Unreferenced chunks a running backup claimed while this gc swept them: kept. */
  claimedMeanwhile: number;
  /** A repository with pack files (S3): what happened to the packs (their chunks are counted above). */
  packs?: PackSweep;
  seconds: number;
}

/**
 * Mark and sweep, safe while backups run (docs/decisions/0008-gc-and-writers.md):
 *
 * 1. Take the start time, then read the sessions of running backups, then list the snapshots —
 *    in this order: a backup that ends between the two steps has committed its manifest before
 *    its session went, so it is seen one way or the other.
 * 2. The cutoff is the earlier of this start and the start of the oldest running backup, less
 *    the grace period. Every chunk a running backup claims or writes is younger than that, and
 *    so is everything a backup that begins after step 1 touches.
 * 3. Mark every chunk of every snapshot. A snapshot that cannot be read stops the gc: its chunks
 *    are unknown, and deleting them would lose what may still be saved.
 * 4. Sweep: an unmarked chunk older than the cutoff is deleted with deleteUnclaimed, which
 *    re-checks its time after moving it away from its name, so a backup's claim that raced the
 *    sweep either is seen (the chunk stays) or finds the chunk gone (and writes it again).
 *
 * One gc at a time (locks/gc; a lock of a dead process on this host is taken over).
 */
export async function collectGarbage(repo: Repository, opts: GcOptions = {}): Promise<GcReport> {
  await takeLock(repo);
  try {
    return await sweep(repo, opts);
  } finally {
    await repo.backend.delete(LOCK);
  }
}

async function takeLock(repo: Repository): Promise<void> {
  const b = repo.backend;
  const me = Buffer.from(JSON.stringify({ ...selfIdentity(), host: hostname() }));
  for (;;) {
    try {
      await b.write(LOCK, me, { exclusive: true });
      return;
    } catch (err) {
      if (!(err instanceof HavenError && err.code === 'CONFLICT')) throw err;
    }
    let holder: { pid: number; host: string; boot?: string; start?: string };
    try {
      holder = JSON.parse((await b.read(LOCK)).toString('utf8')) as typeof holder;
    } catch {
      continue; // released meanwhile
    }
    if (holder.host === hostname() && !recordAlive(holder)) {
      await b.delete(LOCK);
      continue;
    }
    throw conflict(
      `garbage collection is already running on repository ${repo.location} (process ${holder.pid} on ${holder.host})`,
    );
  }
}

async function sweep(repo: Repository, opts: GcOptions): Promise<GcReport> {
  const b = repo.backend;
  const started = Date.now();
  // This gc's start on the clock file times come from: a new file's time is the kernel's coarse
  // clock (up to a tick behind Date.now()), and every file written after the lock has a time at
  // or after the lock's. (Sessions' starts are taken the same way: see liveSessions.)
  const lock = await b.stat(LOCK);
  const writers = (await repo.liveSessions()).filter((s) => !s.reads);
  // An object store cannot mark a claimed chunk (RepositoryBackend.objectStore): sweep only while
  // no backup writes. A backup records its session before it looks for this lock, and this gc took
  // the lock before it read the sessions: one of the two sees the other.
  if (b.objectStore && writers.length)
    throw conflict(
      `garbage collection waits for the backups writing to ${repo.location} now (${writers.map((w) => `process ${w.pid} on ${w.host}`).join(', ')}): run it again when they end`,
    );
  // (An object store's HEAD gives whole seconds, and no backup writes while it sweeps: its start.)
  const cutoff =
    Math.min(
      b.objectStore ? started : (lock?.mtimeMs ?? started),
      started,
      ...writers.map((s) => s.startedAt),
    ) - (opts.graceMs ?? GC_GRACE_MS);
  const scan = await repo.scanSnapshots();
  const unreadable: string[] = [];
  for (const d of scan.damaged) if (await repo.hasSnapshot(d.id)) unreadable.push(`${d.id} (${d.reason})`);
  const marked = new Set<string>();
  for (const s of scan.snapshots)
    for (let d = 0; d < s.disks.length; d++) {
      try {
        await mark(await repo.openIndex(s, d), marked);
      } catch (err) {
        // Forgotten (pruned) while gc read it — the manifest goes first —: not damage, and its
        // chunks are not needed.
        if (!(await repo.hasSnapshot(s.id))) break;
        unreadable.push(`${s.id} ${s.disks[d]!.name} (${(err as Error).message})`);
        continue;
      }
    }
  if (unreadable.length)
    throw new HavenError(
      'CORRUPT',
      `gc deletes nothing while a snapshot cannot be read, since the chunks it uses are unknown: ${unreadable.join('; ')}. Forget it ("haven repo forget ID") or put its files back, then run gc again`,
    );
  const r: GcReport = {
    removedChunks: 0,
    removedBytes: 0,
    keptChunks: 0,
    keptBytes: 0,
    removedPartial: 0,
    claimedMeanwhile: 0,
    seconds: 0,
  };
  let seen = 0;
  for await (const o of b.list('chunks/')) {
    opts.onSweep?.(++seen);
    if (o.pack) continue; // swept with its pack, below
    if (isAsideName(o.key)) {
      // Left aside by a gc that died mid-sweep: back under its name (it may have been claimed).
      await b.putBack(o.key);
      continue;
    }
    if (isTemporaryKey(o.key)) {
      // A chunk file being written: a running backup's is younger than the cutoff.
      if (o.mtimeMs < cutoff) await b.delete(o.key);
      continue;
    }
    const hex = o.key.slice(o.key.lastIndexOf('/') + 1);
    let outcome: 'deleted' | 'kept' | 'absent' = 'kept';
    if (!marked.has(hex) && o.mtimeMs < cutoff) {
      outcome = await b.deleteUnclaimed(o.key, cutoff);
      if (outcome === 'kept') r.claimedMeanwhile++;
    }
    if (outcome === 'deleted') {
      r.removedChunks++;
      r.removedBytes += o.size;
    } else if (outcome === 'kept') {
      r.keptChunks++;
      r.keptBytes += o.size;
    }
  }
  if (b.sweepPacks) {
    // Whole packs: those none of whose chunks is marked (and those no index names: a backup that
    // died), not those under Object Lock retention. Mostly unused packs are repacked first.
    const p = await b.sweepPacks(marked, cutoff);
    r.packs = p;
    r.removedChunks += p.removedChunks;
    r.removedBytes += p.removedBytes;
    r.keptChunks += p.keptChunks;
    r.keptBytes += p.keptBytes;
  }
  // The indexes of backups that died before their manifest, what interrupted forgets left, and
  // temporary files (a running backup's are younger than the cutoff).
  const live = new Set(scan.snapshots.map((s) => s.id));
  const partial: string[] = [];
  for await (const o of b.list('snapshots/'))
    if (!live.has(o.key.split('/')[1]!) && o.mtimeMs < cutoff) partial.push(o.key);
  for (const key of partial) await b.delete(key);
  r.removedPartial = partial.length;
  for await (const o of b.list('tmp/')) if (o.mtimeMs < cutoff) await b.delete(o.key);
  r.seconds = (Date.now() - started) / 1000;
  return r;
}

/**
 * Marks the chunks an index uses, and its pages (stored as chunks). A page marked already (shared
 * with a snapshot marked before: an incremental's unchanged pages) is not read again.
 */
async function mark(idx: DiskIndex, marked: Set<string>): Promise<void> {
  for (let p = 0; p < idx.pages; p++) {
    const pd = idx.pageDigest(p);
    if (pd && !pd.equals(ZERO_DIGEST)) {
      const hex = pd.toString('hex');
      if (marked.has(hex)) continue;
      marked.add(hex);
    }
    const pg = await idx.page(p);
    for (let i = 0; i < pg.count; i++) {
      const dg = pg.digest(i);
      if (!dg.equals(ZERO_DIGEST)) marked.add(dg.toString('hex'));
    }
  }
}
