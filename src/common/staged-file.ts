import { randomBytes } from 'node:crypto';
import {
  closeSync,
  fsyncSync,
  ftruncateSync,
  openSync,
  realpathSync,
  renameSync,
  rmSync,
  statSync,
  type Stats,
} from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { syncDirectory } from './atomic-file.js';
import { conflict, fromSystemError, invalidArgument } from './errors.js';

/**
 * What an output path names now. Haven runs as root, so a mistyped path must not destroy a host
 * file: writing over anything that exists needs `force`, and only regular files (replaced whole)
 * and block devices (written in place) can be targets at all. A symbolic link is followed: `path`
 * is where it leads (a file is replaced there, not the link).
 */
export function outputTarget(
  path: string,
  force?: boolean,
): { kind: 'new' | 'file' | 'block'; path: string } {
  let st: Stats;
  try {
    st = statSync(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { kind: 'new', path };
    throw fromSystemError(err, `cannot inspect ${path}`);
  }
  const kind = st.isFile() ? 'file' : st.isBlockDevice() ? 'block' : undefined;
  if (!kind)
    throw invalidArgument(
      `${path} exists and is ${describe(st)}: Haven writes images only to regular files and block devices`,
    );
  if (!force) throw conflict(`${path} exists; give --force to overwrite it`);
  return { kind, path: realpathSync(path) };
}

function describe(st: Stats): string {
  if (st.isDirectory()) return 'a directory';
  if (st.isFIFO()) return 'a FIFO';
  if (st.isSocket()) return 'a socket';
  if (st.isCharacterDevice()) return 'a character device';
  return 'not a regular file';
}

/** A file being written under a temporary name beside its final path. */
export interface StagedFile {
  /** The final path. */
  path: string;
  /** Where the data goes until `commit`. */
  tmp: string;
  /** Makes the data durable and renames it over `path` (atomically replacing what was there). */
  commit(): void;
  /** Removes the temporary file; `path` is left as it was. Safe to call after `commit`. */
  abort(): void;
}

/**
 * Creates a sparse temporary file of `size` bytes beside `path`, so that a write that fails (a
 * damaged chunk, ENOSPC, a cancel) never leaves a partial file that looks like a finished one,
 * and an existing file (replaced only with `force`) is untouched until the new one is complete.
 * The caller checks `outputTarget(path)` is 'new' or 'file' first.
 */
export function stageFile(path: string, size: number, mode = 0o600): StagedFile {
  const tmp = join(dirname(path), `.${basename(path)}.haven-${randomBytes(4).toString('hex')}.part`);
  let fd: number;
  try {
    fd = openSync(tmp, 'wx', mode);
  } catch (err) {
    throw fromSystemError(err, `cannot create ${tmp} (beside ${path})`);
  }
  try {
    ftruncateSync(fd, size);
  } catch (err) {
    closeSync(fd);
    rmSync(tmp, { force: true });
    throw fromSystemError(err, `cannot size ${tmp} to ${size} bytes`);
  }
  closeSync(fd);
  let committed = false;
  return {
    path,
    tmp,
    commit() {
      try {
        const f = openSync(tmp, 'r');
        try {
          fsyncSync(f);
        } finally {
          closeSync(f);
        }
        renameSync(tmp, path);
        committed = true;
        syncDirectory(dirname(path));
      } catch (err) {
        if (!committed) rmSync(tmp, { force: true });
        throw fromSystemError(err, `cannot put ${tmp} in place of ${path}`);
      }
    },
    abort() {
      if (!committed) rmSync(tmp, { force: true });
    },
  };
}
