// How a backup reuses a stored chunk, and how garbage collection deletes one, without racing each
// other (docs/decisions/0008-gc-and-writers.md). Both sides act on a name that the other may
// change at any moment, so each re-checks after it acts:
//
//   claim (a writer):  utimes(name, now) then stat(name). Both succeed: the chunk is there and
//                      gc will keep it. Either fails with ENOENT: it is not there, write it.
//   sweep (gc):        rename(name, aside) then stat(aside). Older than the cutoff: unlink(aside).
//                      Otherwise a writer claimed it meanwhile: put it back under its name.
//
// Why no chunk a claim returned true for is ever deleted: gc unlinks an inode only after moving it
// away from its name, and looks at its time only after that move. A claim's stat saw the inode
// under the name, so it ran before the move (or after a put-back, when nothing is deleted), and
// the claim's utimes ran before its stat: gc's stat sees the claimed time. That time is at or
// after the writer's session start, which is not before gc's cutoff (Repository.gc).
// A syscall resolves its path at its start: a claim whose utimes met the inode just before the
// move, and whose stat finds another inode under the name (written fresh after the move), claims
// that new inode — which is younger than gc's start, so this gc keeps it as well.
import { statSync, utimesSync } from 'node:fs';
import { link, rename, stat, unlink, utimes } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';

/** A chunk that a sweep has moved aside: "chunks/ab/.gc-<digest>"; put back if a sweep dies. */
export const ASIDE_PREFIX = '.gc-';

export function isAsideName(path: string): boolean {
  return basename(path).startsWith(ASIDE_PREFIX);
}

/** The name a swept chunk file is moved to, in its own folder (a rename within one directory). */
export function asidePath(path: string): string {
  return join(dirname(path), ASIDE_PREFIX + basename(path));
}

/** The name an aside file belongs under. */
export function ownerPath(aside: string): string {
  return join(dirname(aside), basename(aside).slice(ASIDE_PREFIX.length));
}

const gone = (err: unknown) => (err as NodeJS.ErrnoException).code === 'ENOENT';

/** Claims the chunk file at `path` for a writer: true if it is there and now kept by gc. */
export function claimFileSync(path: string): boolean {
  // Looked up first: most chunks a backup stores are new, and a failed utimes costs an exception
  // (its stack trace) per chunk. Absent now is what a failed utimes would say: write it.
  if (!statSync(path, { throwIfNoEntry: false })) return false;
  const now = new Date();
  try {
    utimesSync(path, now, now);
    statSync(path);
    return true;
  } catch (err) {
    if (gone(err)) return false;
    throw err;
  }
}

export async function claimFile(path: string): Promise<boolean> {
  const now = new Date();
  try {
    await utimes(path, now, now);
    await stat(path);
    return true;
  } catch (err) {
    if (gone(err)) return false;
    throw err;
  }
}

/**
 * Deletes the file at `path` unless it was claimed at or after `cutoffMs` (then it stays).
 * 'absent': it was not there. Only one sweep may run at a time (gc holds locks/gc).
 */
export async function sweepFile(path: string, cutoffMs: number): Promise<'deleted' | 'kept' | 'absent'> {
  const aside = asidePath(path);
  try {
    await rename(path, aside);
  } catch (err) {
    if (gone(err)) return 'absent';
    throw err;
  }
  const s = await stat(aside);
  if (s.mtimeMs < cutoffMs) {
    await unlink(aside);
    return 'deleted';
  }
  await putBack(aside);
  return 'kept';
}

/**
 * Puts a chunk a sweep moved aside back under its name (a sweep that found it claimed, or that
 * died in between). A writer may have written the chunk anew meanwhile: same name, same bytes.
 */
export async function putBack(aside: string): Promise<void> {
  try {
    await link(aside, ownerPath(aside));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
  }
  await unlink(aside);
}
