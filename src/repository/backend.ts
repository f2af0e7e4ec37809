import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { constants as fsc } from 'node:fs';
import { link, mkdir, open, readdir, readFile, rename, rm, stat, unlink } from 'node:fs/promises';
import { dirname, join, relative, sep } from 'node:path';
import { promisify } from 'node:util';
import { HavenError, fromSystemError } from '../common/index.js';
import { claimFile, putBack, sweepFile } from './chunk-claim.js';

const execFileAsync = promisify(execFile);

export interface ObjectInfo {
  key: string;
  size: number;
  mtimeMs: number;
}

/**
 * Where a repository's objects live: a flat key space ("chunks/ab/abcd…", "snapshots/ID/…"),
 * whole objects written atomically (a reader sees all of an object or none of it), so that an
 * S3-compatible store can implement it as well as a directory.
 */
export interface RepositoryBackend {
  readonly location: string;
  read(key: string): Promise<Buffer>;
  /** Atomic; `exclusive`: fail with CONFLICT if the object exists (a lock, a new repository). */
  write(key: string, data: Uint8Array, opts?: { exclusive?: boolean }): Promise<void>;
  exists(key: string): Promise<boolean>;
  stat(key: string): Promise<ObjectInfo | undefined>;
  delete(key: string): Promise<void>;
  /** Every object whose key starts with `prefix` (a folder, ending in "/"). */
  list(prefix: string): AsyncIterable<ObjectInfo>;
  /**
   * Claims an object for a writer about to refer to it: marks it used now and says whether it is
   * there. True: garbage collection keeps it (it was claimed after gc's cutoff). False: it is not
   * there (perhaps just deleted): write it. Atomic against deleteUnclaimed (chunk-claim.ts).
   */
  claim(key: string): Promise<boolean>;
  /**
   * Deletes an object unless it was claimed at or after `cutoffMs`: atomic against claim(), so a
   * claim that returned true is never undone. One caller at a time (garbage collection's lock).
   */
  deleteUnclaimed(key: string, cutoffMs: number): Promise<'deleted' | 'kept' | 'absent'>;
  /**
   * list() shows an object a deleteUnclaimed that died left half done under its aside key
   * (chunk-claim.ts: isAsideName); this puts it back under its own key.
   */
  putBack(asideKey: string): Promise<void>;
  /** Makes every object written so far durable (before a manifest that refers to them). */
  sync(): Promise<void>;
  /**
   * A local directory holding the objects under their keys, when there is one: chunk files may
   * then be written there directly (by worker threads), made durable by sync().
   */
  readonly directory?: string;
}

/**
 * A repository in a local directory. Every object is written to a unique temporary name,
 * flushed to the disk, then renamed into place, so a crash leaves either the whole object or
 * nothing under its name (never a torn chunk that a later backup would deduplicate against).
 */
export class LocalBackend implements RepositoryBackend {
  constructor(readonly location: string) {}

  get directory(): string {
    return this.location;
  }

  /**
   * syncfs(2) through coreutils' `sync -f`: one flush of the filesystem makes every chunk written
   * so far durable — data and directory entries — far cheaper than a flush per chunk, and it
   * runs in its own process, never blocking the event loop. (Proxmox Backup Server's default
   * "filesystem" sync level does the same.)
   */
  async sync(): Promise<void> {
    try {
      await execFileAsync('sync', ['-f', this.location]);
    } catch (err) {
      throw new HavenError(
        'IO',
        `repository ${this.location}: cannot flush to disk: ${(err as { stderr?: string }).stderr?.trim() || (err as Error).message}`,
      );
    }
  }

  private path(key: string): string {
    if (key.includes('..') || key.startsWith('/'))
      throw new HavenError('INVALID_ARGUMENT', `bad object key ${key}`);
    return join(this.location, key);
  }

  async read(key: string): Promise<Buffer> {
    try {
      return await readFile(this.path(key));
    } catch (err) {
      throw fromSystemError(err, `repository ${this.location}: cannot read ${key}`);
    }
  }

  async write(key: string, data: Uint8Array, opts: { exclusive?: boolean } = {}): Promise<void> {
    const target = this.path(key);
    const dir = dirname(target);
    const tmp = join(this.location, 'tmp', `${randomBytes(8).toString('hex')}.tmp`);
    try {
      await mkdir(dir, { recursive: true });
      const fh = await open(tmp, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL, 0o600);
      try {
        await fh.writeFile(data);
        // Chunks are made durable together by sync(), everything else one by one.
        if (!key.startsWith('chunks/')) await fh.datasync();
      } finally {
        await fh.close();
      }
      if (opts.exclusive) {
        // link(2) fails if the name exists: an atomic create-if-absent.
        try {
          await link(tmp, target);
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code === 'EEXIST')
            throw new HavenError('CONFLICT', `repository ${this.location}: ${key} already exists`);
          throw err;
        } finally {
          await unlink(tmp).catch(() => undefined);
        }
      } else await rename(tmp, target);
      // A chunk's directory entry is made durable by sync() before the manifest that needs it.
      if (!key.startsWith('chunks/')) await syncDir(dir);
    } catch (err) {
      await rm(tmp, { force: true }).catch(() => undefined);
      if (err instanceof HavenError) throw err;
      throw fromSystemError(err, `repository ${this.location}: cannot write ${key}`);
    }
  }

  async exists(key: string): Promise<boolean> {
    return (await this.stat(key)) !== undefined;
  }

  async stat(key: string): Promise<ObjectInfo | undefined> {
    try {
      const s = await stat(this.path(key));
      return { key, size: s.size, mtimeMs: s.mtimeMs };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw fromSystemError(err, `repository ${this.location}: cannot stat ${key}`);
    }
  }

  async delete(key: string): Promise<void> {
    await rm(this.path(key), { force: true });
  }

  async *list(prefix: string): AsyncIterable<ObjectInfo> {
    const root = this.path(prefix);
    let entries;
    try {
      entries = await readdir(root, { recursive: true, withFileTypes: true });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw fromSystemError(err, `repository ${this.location}: cannot list ${prefix}`);
    }
    for (const e of entries) {
      if (!e.isFile()) continue;
      const full = join(e.parentPath, e.name);
      const key = relative(this.location, full).split(sep).join('/');
      try {
        const s = await stat(full);
        yield { key, size: s.size, mtimeMs: s.mtimeMs };
      } catch {
        // deleted meanwhile
      }
    }
  }

  async claim(key: string): Promise<boolean> {
    try {
      return await claimFile(this.path(key));
    } catch (err) {
      throw fromSystemError(err, `repository ${this.location}: cannot claim ${key}`);
    }
  }

  async deleteUnclaimed(key: string, cutoffMs: number): Promise<'deleted' | 'kept' | 'absent'> {
    try {
      return await sweepFile(this.path(key), cutoffMs);
    } catch (err) {
      throw fromSystemError(err, `repository ${this.location}: cannot delete ${key}`);
    }
  }

  async putBack(asideKey: string): Promise<void> {
    try {
      await putBack(this.path(asideKey));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw fromSystemError(err, `repository ${this.location}: cannot put ${asideKey} back`);
    }
  }
}

async function syncDir(dir: string): Promise<void> {
  const fh = await open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}
