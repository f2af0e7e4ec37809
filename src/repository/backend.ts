import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import {
  closeSync,
  constants as fsc,
  fstatSync,
  mkdirSync,
  openSync,
  readSync,
  readvSync,
  renameSync,
  rmSync,
  writeSync,
  writevSync,
} from 'node:fs';
import { link, mkdir, open, readdir, readFile, rename, rm, stat, unlink } from 'node:fs/promises';
import { dirname, join, relative, sep } from 'node:path';
import { promisify } from 'node:util';
// Narrow imports, past the layers' index files: chunk worker threads load this module, and
// their start-up is on the critical path of every backup and restore.
import { nativeIo } from '../block/native.js';
import { HavenError, fromSystemError } from '../common/errors.js';
import { claimFile, claimFileSync, putBack, sweepFile } from './chunk-claim.js';
import { TMP_PREFIX } from './format.js';

const execFileAsync = promisify(execFile);

export interface ObjectInfo {
  key: string;
  size: number;
  mtimeMs: number;
  /** A chunk stored in a pack file (an object store's): the pack's key. It is deleted only with its pack. */
  pack?: string;
}

/** What a sweep of pack files did (RepositoryBackend.sweepPacks). */
export interface PackSweep {
  removedPacks: number;
  /** Chunks in the packs removed (those no index named are not counted), and the packs' bytes. */
  removedChunks: number;
  removedBytes: number;
  keptPacks: number;
  /** Chunks still used in the packs kept, the packs' bytes, and the unused chunks' bytes in them. */
  keptChunks: number;
  keptBytes: number;
  garbageBytes: number;
  /** Packs under Object Lock retention that nothing uses: not tried. */
  retainedPacks: number;
  /** Mostly unused packs whose used chunks were written into new packs (then deleted: in removedPacks). */
  repackedPacks?: number;
  /** Small index objects merged into fewer (and deleted), when there were many. */
  mergedIndexes?: number;
}

/**
 * Where a repository's objects live: a flat key space ("chunks/ab/abcd…", "snapshots/ID/…"),
 * whole objects written atomically (a reader sees all of an object or none of it), so that an
 * S3-compatible store can implement it as well as a directory.
 */
export interface RepositoryBackend {
  readonly location: string;
  /** The object; NOT_FOUND if there is none. May return a view of `scratch` when it is large enough. */
  read(key: string, scratch?: Buffer): Promise<Buffer>;
  /**
   * Reads the object into `buffers` in turn (one readv where the store allows it, so a chunk's
   * payload lands where it belongs, uncopied) and returns the object's size: larger than the
   * buffers when they could not hold it all (then only its beginning was read). NOT_FOUND if none.
   * Optional: without it, callers read() and copy.
   */
  readInto?(key: string, buffers: readonly Buffer[]): Promise<number>;
  /**
   * Atomic; `exclusive`: fail with CONFLICT if the object exists (a lock, a new repository).
   * `data` may come in parts (a chunk's header and payload), written as one object.
   */
  write(key: string, data: Uint8Array | readonly Uint8Array[], opts?: { exclusive?: boolean }): Promise<void>;
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
  /**
   * Makes every object written so far durable (before a manifest that refers to them), also those
   * written by other instances of this backend in this process (the chunk workers').
   */
  sync(): Promise<void>;
  /**
   * How another thread opens this same backend (openBackend): the backup's worker threads then
   * read and write chunks themselves, off the main thread. Undefined: workers only encode and
   * decode, and this instance moves the bytes.
   */
  describe?(): BackendDescription | undefined;
  /**
   * An object store (S3): each write is whole and durable when it returns (no torn object after a
   * crash, nothing to recover), and claim() cannot mark an object, so garbage collection sweeps
   * only while no backup writes (gc.ts, Repository.beginSession).
   */
  readonly objectStore?: boolean;
  /** Drops what the backend remembers of the store (a new session: a gc may have run meanwhile). */
  forget?(): void;
  /**
   * A backend that keeps data of its own about the objects (the S3 backend's pack index) encrypts
   * it with this key in an encrypted repository; the repository sets it when it is opened, before
   * any object is read or written.
   */
  metadataKey?: Buffer | undefined;
  /**
   * A backend that stores chunks in pack files: deletes the packs none of whose chunks is in
   * `live` (digests, hex) and older than `cutoffMs`, and packs no index names. gc calls it after
   * its mark, with its lock held; chunks listed with a `pack` are left to it.
   */
  sweepPacks?(live: ReadonlySet<string>, cutoffMs: number): Promise<PackSweep>;
}

/** A backend as plain data, for a worker thread to open its own instance of (openBackend). */
export type BackendDescription = { kind: 'local'; location: string };

/**
 * Opens a described backend. `blocking`: for a worker thread, whose own time it is — I/O is done
 * with synchronous calls, without a hop through libuv's thread pool per call.
 */
export function openBackend(d: BackendDescription, opts: { blocking?: boolean } = {}): RepositoryBackend {
  if (d.kind === 'local') return new LocalBackend(d.location, opts);
  throw new HavenError('INVALID_ARGUMENT', `unknown repository backend ${(d as { kind: string }).kind}`);
}

/** Objects a list looks up at once. */
const LIST_BATCH = 64;

const isChunkKey = (key: string) => key.startsWith('chunks/');

/**
 * A repository in a local directory. Every object is written to a unique temporary name,
 * flushed to the disk, then renamed into place, so a crash leaves either the whole object or
 * nothing under its name (never a torn chunk that a later backup would deduplicate against).
 */
export class LocalBackend implements RepositoryBackend {
  private readonly blocking: boolean;
  private readonly madeDirs = new Set<string>();

  constructor(
    readonly location: string,
    opts: { blocking?: boolean } = {},
  ) {
    this.blocking = !!opts.blocking;
  }

  describe(): BackendDescription {
    return { kind: 'local', location: this.location };
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

  async read(key: string, scratch?: Buffer): Promise<Buffer> {
    try {
      if (this.blocking) return this.readSync(this.path(key), scratch);
      return await readFile(this.path(key));
    } catch (err) {
      throw fromSystemError(err, `repository ${this.location}: cannot read ${key}`);
    }
  }

  async readInto(key: string, buffers: readonly Buffer[]): Promise<number> {
    try {
      return this.blocking
        ? readIntoSync(this.path(key), buffers)
        : await readIntoAsync(this.path(key), buffers);
    } catch (err) {
      if (err instanceof HavenError) throw err;
      throw fromSystemError(err, `repository ${this.location}: cannot read ${key}`);
    }
  }

  private readSync(path: string, scratch?: Buffer): Buffer {
    const fd = openSync(path, 'r');
    try {
      const size = fstatSync(fd).size;
      const buf = scratch && scratch.length >= size ? scratch : Buffer.allocUnsafe(size);
      let at = 0;
      while (at < size) {
        const n = readSync(fd, buf, at, size - at, at);
        if (n === 0) break;
        at += n;
      }
      return buf.subarray(0, at);
    } finally {
      closeSync(fd);
    }
  }

  async write(
    key: string,
    data: Uint8Array | readonly Uint8Array[],
    opts: { exclusive?: boolean } = {},
  ): Promise<void> {
    const parts = data instanceof Uint8Array ? [data] : data;
    if (isChunkKey(key) && !opts.exclusive) {
      if (this.blocking) return this.writeChunkSync(key, parts);
      return this.writeChunk(key, parts);
    }
    const whole = parts.length === 1 ? parts[0]! : Buffer.concat(parts);
    const target = this.path(key);
    const dir = dirname(target);
    const tmp = join(this.location, 'tmp', `${randomBytes(8).toString('hex')}.tmp`);
    try {
      await mkdir(dir, { recursive: true });
      const fh = await open(tmp, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL, 0o600);
      try {
        await fh.writeFile(whole);
        await fh.datasync();
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
      await syncDir(dir);
    } catch (err) {
      await rm(tmp, { force: true }).catch(() => undefined);
      if (err instanceof HavenError) throw err;
      throw fromSystemError(err, `repository ${this.location}: cannot write ${key}`);
    }
  }

  /**
   * A chunk: written to a temporary name in its own folder (new inodes spread over the
   * filesystem's groups instead of contending for one), not flushed one by one — the disk is
   * asked to start on it at once, and sync() makes all durable before a manifest needs them —
   * then renamed into place.
   */
  private writeChunkSync(key: string, parts: readonly Uint8Array[]): void {
    const target = this.path(key);
    const dir = dirname(target);
    const tmp = join(dir, `${TMP_PREFIX}${randomBytes(8).toString('hex')}`);
    const total = parts.reduce((n, p) => n + p.length, 0);
    try {
      if (!this.madeDirs.has(dir)) {
        mkdirSync(dir, { recursive: true });
        this.madeDirs.add(dir);
      }
      const fd = openSync(tmp, 'wx', 0o600);
      try {
        let at = writevSync(fd, parts as Uint8Array[]);
        if (at < total) {
          const rest = Buffer.concat(parts);
          while (at < total) at += writeSync(fd, rest, at);
        }
        nativeIo()?.startWriteback(fd, 0, 0);
      } finally {
        closeSync(fd);
      }
      renameSync(tmp, target);
    } catch (err) {
      rmSync(tmp, { force: true });
      throw fromSystemError(err, `repository ${this.location}: cannot write ${key}`);
    }
  }

  private async writeChunk(key: string, parts: readonly Uint8Array[]): Promise<void> {
    const target = this.path(key);
    const dir = dirname(target);
    const tmp = join(dir, `${TMP_PREFIX}${randomBytes(8).toString('hex')}`);
    try {
      if (!this.madeDirs.has(dir)) {
        await mkdir(dir, { recursive: true });
        this.madeDirs.add(dir);
      }
      const fh = await open(tmp, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL, 0o600);
      try {
        await fh.writev(parts as Uint8Array[]);
        nativeIo()?.startWriteback(fh.fd, 0, 0);
      } finally {
        await fh.close();
      }
      await rename(tmp, target);
    } catch (err) {
      await rm(tmp, { force: true }).catch(() => undefined);
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
    const files = entries.filter((e) => e.isFile());
    // Looked up side by side, a batch at a time: one by one, a round trip through libuv's pool
    // each, listing the snapshots (every backup does, to find its parent) took tens of ms.
    for (let i = 0; i < files.length; i += LIST_BATCH) {
      const batch = await Promise.all(
        files.slice(i, i + LIST_BATCH).map(async (e) => {
          const full = join(e.parentPath, e.name);
          try {
            const s = await stat(full);
            return {
              key: relative(this.location, full).split(sep).join('/'),
              size: s.size,
              mtimeMs: s.mtimeMs,
            };
          } catch {
            return undefined; // deleted meanwhile
          }
        }),
      );
      for (const o of batch) if (o) yield o;
    }
  }

  async claim(key: string): Promise<boolean> {
    try {
      if (this.blocking) return claimFileSync(this.path(key));
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

/** The byte ranges of `buffers` still to fill after `got` bytes (a short readv's rest). */
function rest(buffers: readonly Buffer[], got: number): Buffer[] {
  const out: Buffer[] = [];
  for (const b of buffers) {
    if (got >= b.length) got -= b.length;
    else {
      out.push(b.subarray(got));
      got = 0;
    }
  }
  return out;
}

const capacity = (buffers: readonly Buffer[]) => buffers.reduce((n, b) => n + b.length, 0);

function readIntoSync(path: string, buffers: readonly Buffer[]): number {
  const fd = openSync(path, 'r');
  try {
    const size = fstatSync(fd).size;
    const want = Math.min(size, capacity(buffers));
    let got = 0;
    while (got < want) {
      const n = readvSync(fd, rest(buffers, got), got);
      if (n === 0) throw new HavenError('CORRUPT', `${path} shrank while it was read`);
      got += n;
    }
    return size;
  } finally {
    closeSync(fd);
  }
}

async function readIntoAsync(path: string, buffers: readonly Buffer[]): Promise<number> {
  const fh = await open(path, 'r');
  try {
    const size = (await fh.stat()).size;
    const want = Math.min(size, capacity(buffers));
    let got = 0;
    while (got < want) {
      const { bytesRead } = await fh.readv(rest(buffers, got), got);
      if (bytesRead === 0) throw new HavenError('CORRUPT', `${path} shrank while it was read`);
      got += bytesRead;
    }
    return size;
  } finally {
    await fh.close();
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
