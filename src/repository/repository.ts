import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { mkdirSync, existsSync, readdirSync, rmSync } from 'node:fs';
import { hostname } from 'node:os';
import { resolve } from 'node:path';
import { HavenError, conflict, errorMessage, invalidArgument, notFound } from '../common/index.js';
import { LocalBackend, type RepositoryBackend } from './backend.js';
import { isRetaining, isS3Url, type Retention } from './s3-settings.js';
import { ChunkCodec } from './chunk-codec.js';
import { isAsideName } from './chunk-claim.js';
import { asideKey, readStoredChunk } from './chunks.js';
import { liveSessions, recordSession, type SessionRecord } from './sessions.js';
import {
  DEFAULT_CHUNK_SIZE,
  FORMAT_VERSION,
  PACKED_VERSION,
  ZERO_DIGEST,
  checkChunkSize,
  chunkKey,
  isTemporaryKey,
} from './format.js';
import { DiskIndex } from './disk-index.js';
import { newEncryption, openEncryption, type EncryptionConfig, type RepositoryKeys } from './keys.js';

export interface RepositoryConfig {
  format: 'haven-repository';
  version: number;
  id: string;
  createdAt: string;
  chunkSize: number;
  encryption?: EncryptionConfig;
  /** S3 Object Lock: every object of a snapshot is retained this long from the snapshot's commit. */
  objectLock?: Retention;
  /**
   * "packed": a bucket created packed (format 2 from its init), so without chunk objects of the
   * one-object-per-chunk layout: its chunks/ is not listed at each session (decision 0024). Only
   * init sets it; a bucket converted from the old layout never has it.
   */
  layout?: 'packed';
}

/** How to reach an s3:// repository (the rest comes from the environment: s3Settings). */
export interface RemoteOptions {
  endpoint?: string;
}

export interface DiskManifest {
  /** "disk0", … or the volume's name. */
  name: string;
  size: number;
  chunkSize: number;
  /** Index version 2: the unit the index addresses (64 KiB); dataChunks and zeroChunks count these. */
  granule?: number;
  /** Object key of the index. */
  index: string;
  indexSha256: string;
  dataChunks: number;
  zeroChunks: number;
}

export interface SnapshotManifest {
  id: string;
  version: number;
  createdAt: string;
  source: { kind: string; name: string };
  disks: DiskManifest[];
  /** The previous snapshot an incremental took unchanged chunks from. */
  parent?: string;
  /** The changed-block tracking epoch this snapshot ends (the next incremental reads what changed since). */
  bitmap?: { name: string; epoch?: string };
  /** How the data was read: file, nbd, nbds, san, hotadd. */
  transport?: string;
  /**
   * application: the guest's file systems were frozen at the snapshot (through its guest agent);
   * crash: what a power cut would leave. Manifests written before Haven recorded it read as crash.
   */
  consistency: 'application' | 'crash';
  /** Why a snapshot is crash-consistent. */
  consistencyReason?: string;
  /** A VM backup: its configuration at the time. */
  vm?: unknown;
  stats: BackupStats;
  tags: string[];
  /** S3 Object Lock: every object of this snapshot is retained (undeletable) until then. */
  retainUntil?: string;
}

export interface BackupStats {
  /** Bytes read from the source. */
  readBytes: number;
  /** Chunks of this snapshot (data and index pages) that were not in the repository yet, and their stored bytes. */
  newChunks: number;
  storedBytes: number;
  /** Those new chunks' bytes before compression (storedBytes / newBytes: what compression left); absent before Haven recorded it. */
  newBytes?: number;
  /**
   * Chunks found in the repository already (deduplicated). An incremental's unchanged data, taken
   * from its parent's index without being looked at, is not counted.
   */
  reusedChunks: number;
  seconds: number;
}

export interface SnapshotInfo extends SnapshotManifest {
  protected: boolean;
}

export interface DamagedSnapshot {
  id: string;
  reason: string;
}

const CONFIG = 'config.json';
/** The folders of a new repository ('' is the repository's own). */
const LAYOUT = ['', 'tmp', 'chunks', 'snapshots', 'sessions', 'locks'];
const MANIFEST = 'manifest.json';
/** Present in a snapshot's folder while a forget of it runs (or after one was interrupted). */
const FORGETTING = 'forgetting';

/** The backend of a repository address: a local directory or s3://BUCKET/PREFIX. */
async function backendFor(
  where: string,
  opts: RemoteOptions & { needLock?: boolean },
): Promise<RepositoryBackend> {
  if (!isS3Url(where)) return new LocalBackend(resolve(where));
  // The AWS SDK loads only now: about 130 ms that no other command pays.
  const { openS3Backend } = await import('./s3-backend.js');
  return openS3Backend(where, opts);
}

/**
 * A backup repository: deduplicated, compressed, optionally encrypted chunks, and snapshots
 * (an index of chunk digests per disk, plus a manifest written last: a snapshot exists when its
 * manifest does). Several backups may write at once; garbage collection never deletes a chunk
 * that a running backup may reference (see gc()). Format: docs/repository-format.md.
 */
export class Repository {
  private constructor(
    readonly backend: RepositoryBackend,
    readonly config: RepositoryConfig,
    readonly keys: RepositoryKeys | undefined,
  ) {}

  get location(): string {
    return this.backend.location;
  }

  get encrypted(): boolean {
    return !!this.config.encryption;
  }

  /**
   * Creates a repository: in a local directory `path` (new, empty, or holding only the empty
   * folders an earlier init that failed left; everything is checked before anything is created,
   * and a failure removes what this init made, so that a retry finds the directory as it was),
   * or in any backend (its config object is created exclusively: an existing repository is refused).
   */
  static async init(
    where: string | RepositoryBackend,
    opts: { chunkSize?: number; passphrase?: string; objectLock?: Retention } & RemoteOptions = {},
  ): Promise<Repository> {
    const chunkSize = opts.chunkSize ?? DEFAULT_CHUNK_SIZE;
    checkChunkSize(chunkSize);
    if (opts.objectLock) {
      if (!['COMPLIANCE', 'GOVERNANCE'].includes(opts.objectLock.mode))
        throw invalidArgument(`object lock mode ${opts.objectLock.mode}: COMPLIANCE or GOVERNANCE`);
      if (!(Number.isInteger(opts.objectLock.days) && opts.objectLock.days > 0))
        throw invalidArgument(`object lock days ${opts.objectLock.days}: a whole number of days, 1 or more`);
      if (typeof where === 'string' && !isS3Url(where))
        throw invalidArgument('object lock (immutable snapshots) needs an s3:// repository');
    }
    if (typeof where === 'string' && isS3Url(where))
      where = await backendFor(where, { ...opts, needLock: !!opts.objectLock });
    if (typeof where === 'string') {
      const dir = resolve(where);
      if (existsSync(dir) && !existsSync(`${dir}/${CONFIG}`) && !onlyEmptyFolders(dir))
        throw conflict(`${dir} is not empty and not a Haven repository`);
    }
    const enc = opts.passphrase !== undefined ? await newEncryption(opts.passphrase) : undefined;
    const config: RepositoryConfig = {
      format: 'haven-repository',
      version: typeof where !== 'string' && where.sweepPacks ? PACKED_VERSION : FORMAT_VERSION,
      id: randomUUID(),
      createdAt: new Date().toISOString(),
      chunkSize,
      ...(enc ? { encryption: enc.config } : {}),
      ...(opts.objectLock ? { objectLock: opts.objectLock } : {}),
      ...(typeof where !== 'string' && where.sweepPacks ? { layout: 'packed' as const } : {}),
    };
    const body = Buffer.from(JSON.stringify(config, null, 2) + '\n');
    if (typeof where !== 'string') {
      try {
        await where.write(CONFIG, body, { exclusive: true });
      } catch (err) {
        if (err instanceof HavenError && err.code === 'CONFLICT')
          throw conflict(`${where.location} is already a Haven repository`);
        throw err;
      }
      return Repository.make(where, config, enc?.keys);
    }
    const dir = resolve(where);
    const existed = existsSync(dir);
    const backend = new LocalBackend(dir);
    const made = LAYOUT.filter((d) => !existsSync(`${dir}/${d}`));
    try {
      for (const d of LAYOUT) mkdirSync(`${dir}/${d}`, { recursive: true, mode: 0o700 });
      await backend.write(CONFIG, body, { exclusive: true });
    } catch (err) {
      if (err instanceof HavenError && err.code === 'CONFLICT')
        throw conflict(`${dir} is already a Haven repository`);
      // Leave the directory as it was: what this init made goes (deepest first).
      for (const d of made.reverse())
        if (d || !existed) rmSync(`${dir}/${d}`, { recursive: true, force: true });
      throw err;
    }
    return new Repository(backend, config, enc?.keys);
  }

  /** Opens a repository: a local directory `path`, or one in any backend. */
  static async open(
    where: string | RepositoryBackend,
    opts: { passphrase?: string } & RemoteOptions = {},
  ): Promise<Repository> {
    const backend = typeof where === 'string' ? await backendFor(where, opts) : where;
    const dir = backend.location;
    let data: Buffer;
    try {
      data = await backend.read(CONFIG);
    } catch (err) {
      if (err instanceof HavenError && err.code === 'NOT_FOUND')
        throw notFound(`${dir} is not a Haven repository (no ${CONFIG}; create one with "haven repo init")`);
      throw err; // not readable by this user, an I/O error: not damage
    }
    let config: RepositoryConfig;
    try {
      config = JSON.parse(data.toString('utf8')) as RepositoryConfig;
    } catch (err) {
      throw new HavenError('CORRUPT', `${dir}/${CONFIG} is damaged: ${errorMessage(err)}`);
    }
    if (config.format !== 'haven-repository')
      throw new HavenError('CORRUPT', `${dir}/${CONFIG} is not a Haven repository's`);
    if (config.version > PACKED_VERSION)
      throw new HavenError(
        'UNSUPPORTED',
        `repository ${dir} has format ${config.version}; this Haven reads up to ${PACKED_VERSION}`,
      );
    let keys: RepositoryKeys | undefined;
    if (config.encryption) {
      if (opts.passphrase === undefined)
        throw new HavenError(
          'UNAUTHENTICATED',
          `repository ${dir} is encrypted: give its passphrase (HAVEN_PASSPHRASE or --passphrase-file)`,
        );
      keys = await openEncryption(config.encryption, opts.passphrase);
    }
    return Repository.make(backend, config, keys);
  }

  private static make(
    backend: RepositoryBackend,
    config: RepositoryConfig,
    keys?: RepositoryKeys,
  ): Repository {
    if (config.objectLock) {
      if (!isRetaining(backend))
        throw new HavenError(
          'UNSUPPORTED',
          `repository ${backend.location} has object lock but is not in S3`,
        );
      backend.retention = config.objectLock;
    }
    if (keys && 'metadataKey' in backend) backend.metadataKey = keys.meta;
    // Created packed: no chunk objects to list (only then; the LIST finds those of an old bucket).
    if (config.version >= PACKED_VERSION && config.layout === 'packed' && 'chunkObjects' in backend)
      (backend as { chunkObjects: boolean }).chunkObjects = false;
    return new Repository(backend, config, keys);
  }

  /** Releases what the backend holds (an S3 client's connections). */
  close(): void {
    if (isRetaining(this.backend)) this.backend.close();
  }

  codec(): ChunkCodec {
    return new ChunkCodec(this.keys);
  }

  // ---- chunks ------------------------------------------------------------------------------

  /**
   * Stores a chunk unless it is there; a chunk found is claimed (marked used now), so that a
   * garbage collection running now or later keeps it (docs/decisions/0008-gc-and-writers.md).
   * Call it only inside a session (beginSession).
   */
  async putChunk(digest: Buffer, stored: Uint8Array): Promise<boolean> {
    const key = chunkKey(digest);
    if (await this.backend.claim(key)) return false;
    await this.backend.write(key, stored);
    return true;
  }

  /** Whether the repository has a chunk, for a writer: a chunk found is claimed, as putChunk does. */
  hasChunk(digest: Buffer): Promise<boolean> {
    return this.backend.claim(chunkKey(digest));
  }

  /**
   * Whether the repository has a chunk, for a reader (restore checks): nothing is written, and a
   * chunk a gc sweep holds aside for a moment counts (see getChunk).
   */
  async chunkStored(digest: Buffer): Promise<boolean> {
    const key = chunkKey(digest);
    return (
      (await this.backend.exists(key)) ||
      (await this.backend.exists(asideKey(key))) ||
      (await this.backend.exists(key))
    );
  }

  getChunk(digest: Buffer): Promise<Buffer> {
    return readStoredChunk(this.backend, digest);
  }

  // ---- sessions: what a running backup holds ------------------------------------------------

  /**
   * Registers a running backup: gc keeps what it writes and claims (its cutoff is no later than
   * the session's start), and forget refuses its parent. The session is recorded before the
   * parent is looked at, so that a forget running now either sees the session or is seen.
   */
  async beginSession(parent?: string): Promise<{ id: string; end: () => Promise<void> }> {
    // A backup that died may have left chunk files that never reached the disk whole; they are
    // checked before this backup could deduplicate against them.
    await this.liveSessions();
    this.backend.forget?.();
    const session = await recordSession(this.backend, parent ? { parent } : {});
    if (this.backend.sweepPacks && this.config.version < PACKED_VERSION) {
      // A bucket of the one-object-per-chunk layout about to get packs: a Haven that does not know
      // packs must refuse it from now on (decision 0024).
      (this.config as { version: number }).version = PACKED_VERSION;
      // It has chunk objects: never marked as created packed (they would not be listed).
      delete (this.config as { layout?: string }).layout;
      if ('chunkObjects' in this.backend) (this.backend as { chunkObjects: boolean }).chunkObjects = true;
      await this.backend
        .write(CONFIG, Buffer.from(JSON.stringify(this.config, null, 2) + '\n'))
        .catch(async (err: unknown) => {
          await session.end();
          throw err;
        });
    }
    // Both only read, after the session is recorded; neither depends on the other: at once.
    const [gcRunning, parentErr] = await Promise.all([
      this.backend.objectStore ? this.backend.exists('locks/gc').catch((err: unknown) => err) : false,
      parent
        ? this.usable(parent).then(
            () => undefined,
            (err: unknown) => err,
          )
        : undefined,
    ]);
    if (gcRunning === true) {
      // gc sweeps an object store only while no backup writes (gc.ts): this one waits for it.
      await session.end();
      throw conflict(`garbage collection is running on repository ${this.location}: back up when it ends`);
    }
    const err = gcRunning !== false ? gcRunning : parentErr;
    if (err !== undefined) {
      await session.end();
      throw err;
    }
    return session;
  }

  /**
   * Opens a snapshot for reading (restore, mount): forget refuses it until `end`. In a repository
   * this process cannot write, the snapshot is opened without a session (nothing here can forget it).
   */
  async useSnapshot(id: string): Promise<{ snapshot: SnapshotInfo; end: () => Promise<void> }> {
    let session: { end: () => Promise<void> } | undefined;
    try {
      session = await recordSession(this.backend, { reads: id });
    } catch (err) {
      if (!(err instanceof HavenError && err.code === 'READ_ONLY')) throw err;
    }
    try {
      return { snapshot: await this.usable(id), end: () => session?.end() ?? Promise.resolve() };
    } catch (err) {
      await session?.end();
      throw err;
    }
  }

  /** A snapshot that may be used: its manifest reads, and no forget of it is under way. */
  private async usable(id: string): Promise<SnapshotInfo> {
    // The manifest and the forget mark, at once (the session is recorded before either is read).
    const forgetting = this.backend.exists(`snapshots/${id}/${FORGETTING}`);
    forgetting.catch(() => undefined); // awaited below
    const s = await this.snapshot(id);
    if (await forgetting)
      throw conflict(
        `snapshot ${id} is being forgotten (if no forget runs now, one was interrupted: run "haven repo forget ${id}" again)`,
      );
    return s;
  }

  /** The sessions of running backups and readers; those of dead processes are removed (sessions.ts). */
  liveSessions(): Promise<SessionRecord[]> {
    return liveSessions(this.backend);
  }

  // ---- snapshots ---------------------------------------------------------------------------

  /** A new snapshot's id: its time (`at`, default now) and a random suffix. */
  newSnapshotId(at = new Date()): string {
    const t = at
      .toISOString()
      .replace(/[-:]/g, '')
      .replace(/\.\d+Z$/, 'Z');
    return `${t}-${randomBytes(3).toString('hex')}`;
  }

  /** Writes a disk's index for a snapshot being made (invisible until commit). */
  async writeIndex(
    snapshotId: string,
    diskNo: number,
    index: Buffer,
  ): Promise<{ key: string; sha256: string }> {
    const key = `snapshots/${snapshotId}/disk${diskNo}.idx`;
    await this.backend.write(key, index);
    return { key, sha256: createHash('sha256').update(index).digest('hex') };
  }

  /** Makes a snapshot visible: everything it refers to is made durable first, the manifest last. */
  /** Makes the chunks written so far durable and findable (commitSnapshot does it again). */
  sync(): Promise<void> {
    return this.backend.sync();
  }

  async commitSnapshot(manifest: SnapshotManifest): Promise<void> {
    await this.backend.sync();
    const lock = this.config.objectLock;
    if (lock && isRetaining(this.backend)) {
      // Every object the snapshot uses — also those an incremental took from its parent unread —
      // retained for the whole period from now; the manifest says until when.
      const until = Date.now() + lock.days * 86_400_000;
      const keys = new Set<string>();
      const partial = { ...manifest, retainUntil: undefined };
      for (let d = 0; d < manifest.disks.length; d++) {
        keys.add(manifest.disks[d]!.index);
        const idx = await this.openIndex(partial, d);
        for (let p = 0; p < idx.pages; p++) {
          const pd = idx.pageDigest(p);
          if (pd && !pd.equals(ZERO_DIGEST)) keys.add(chunkKey(pd));
          const pg = await idx.page(p);
          for (let i = 0; i < pg.count; i++) {
            const dg = pg.digest(i);
            if (!dg.equals(ZERO_DIGEST)) keys.add(chunkKey(dg));
          }
        }
      }
      await this.backend.extendRetention(keys, until);
      manifest.retainUntil = new Date(until).toISOString();
    }
    await this.backend.write(
      `snapshots/${manifest.id}/manifest.json`,
      Buffer.from(JSON.stringify(manifest, null, 2) + '\n'),
      {
        exclusive: true,
      },
    );
  }

  /** The snapshots whose manifests read, oldest first (scanSnapshots also names the damaged). */
  async listSnapshots(): Promise<SnapshotInfo[]> {
    return (await this.scanSnapshots()).snapshots;
  }

  /**
   * Every snapshot: those whose manifest reads, oldest first, and those whose manifest is damaged
   * (with why), so that one bad manifest never hides the others.
   */
  async scanSnapshots(): Promise<{ snapshots: SnapshotInfo[]; damaged: DamagedSnapshot[] }> {
    const snapshots: SnapshotInfo[] = [];
    const damaged: DamagedSnapshot[] = [];
    const ids: string[] = [];
    for await (const o of this.backend.list('snapshots/'))
      if (o.key.endsWith(`/${MANIFEST}`)) ids.push(o.key.split('/')[1]!);
    // Read side by side: each is a round trip to the backend (a few on a local disk, one
    // request each on object storage), and every backup lists them to find its parent.
    let next = 0;
    const reader = async () => {
      while (next < ids.length) {
        const id = ids[next++]!;
        try {
          snapshots.push(await this.snapshot(id));
        } catch (err) {
          if (err instanceof HavenError && err.code === 'NOT_FOUND') continue; // forgotten meanwhile
          if (!(err instanceof HavenError && err.code === 'CORRUPT')) throw err; // cannot read: not damage
          damaged.push({ id, reason: errorMessage(err) });
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(16, ids.length) }, reader));
    snapshots.sort((a, b) => a.createdAt.localeCompare(b.createdAt) || a.id.localeCompare(b.id));
    return { snapshots, damaged: damaged.sort((a, b) => a.id.localeCompare(b.id)) };
  }

  async snapshot(id: string): Promise<SnapshotInfo> {
    checkSnapshotId(id);
    let data: Buffer;
    try {
      data = await this.backend.read(`snapshots/${id}/${MANIFEST}`);
    } catch (err) {
      if (err instanceof HavenError && err.code === 'NOT_FOUND')
        throw notFound(`no snapshot ${id} in repository ${this.location}`);
      throw err;
    }
    let m: SnapshotManifest;
    try {
      m = JSON.parse(data.toString('utf8')) as SnapshotManifest;
      checkManifest(m, id);
    } catch (err) {
      throw new HavenError(
        'CORRUPT',
        `snapshot ${id}: its manifest is damaged (${errorMessage(err)}); "haven repo forget ${id}" removes it`,
      );
    }
    if (!m.consistency) {
      m.consistency = 'crash';
      m.consistencyReason = 'not recorded (a backup made before Haven recorded consistency)';
    }
    return { ...m, protected: await this.backend.exists(`snapshots/${id}/protected`) };
  }

  /**
   * A disk's index (disk-index.ts: the one view every reader uses), its object checked against
   * the hash the manifest recorded; its pages are read as they are needed.
   */
  async openIndex(
    m: SnapshotManifest,
    disk: number,
    /** Reads and decodes a page (a chunk) by digest, e.g. through a backup's chunk workers. */
    readPage?: (digest: Buffer) => Promise<Buffer>,
  ): Promise<DiskIndex> {
    const d = m.disks[disk];
    if (!d) throw notFound(`snapshot ${m.id} has no disk ${disk}`);
    const data = await this.backend.read(d.index);
    if (createHash('sha256').update(data).digest('hex') !== d.indexSha256)
      throw new HavenError('CORRUPT', `snapshot ${m.id}: index of ${d.name} does not match its manifest`);
    if (readPage) return DiskIndex.parse(data, `snapshot ${m.id} ${d.name}`, readPage);
    const codec = this.codec();
    return DiskIndex.parse(data, `snapshot ${m.id} ${d.name}`, async (digest) =>
      codec.decode(await this.getChunk(digest), digest),
    );
  }

  async setProtected(id: string, on: boolean): Promise<void> {
    await this.snapshot(id);
    if (on) await this.backend.write(`snapshots/${id}/protected`, Buffer.from('protected\n'));
    else await this.backend.delete(`snapshots/${id}/protected`);
  }

  /**
   * Deletes a snapshot (its chunks go at the next gc), also one whose manifest is damaged. Refused
   * while the snapshot is protected, the parent of a running backup, or read by a restore or
   * mount. A "forgetting" marker is written before the sessions are read a second time, and users
   * record their session before they check for the marker: either this sees the user's session
   * and backs off, or the user sees the marker and stops (docs/decisions/0008-gc-and-writers.md).
   */
  /** Whether snapshot `id` exists now (its manifest does: a forget deletes that first). */
  async hasSnapshot(id: string): Promise<boolean> {
    return this.backend.exists(`snapshots/${id}/${MANIFEST}`);
  }

  async deleteSnapshot(id: string): Promise<void> {
    checkSnapshotId(id);
    const dir = `snapshots/${id}/`;
    if (!(await this.backend.exists(dir + MANIFEST)))
      throw notFound(`no snapshot ${id} in repository ${this.location}`);
    if (await this.backend.exists(dir + 'protected'))
      throw conflict(`snapshot ${id} is protected (lift it with "haven repo protect ${id} --off")`);
    const retained = await this.snapshot(id).then(
      (s) => s.retainUntil,
      () => undefined,
    );
    if (retained && Date.parse(retained) > Date.now())
      throw conflict(
        `snapshot ${id} is retained by S3 Object Lock until ${retained}: it cannot be forgotten before`,
      );
    await this.refuseInUse(id);
    const marker = dir + FORGETTING;
    await this.backend.write(marker, Buffer.from(JSON.stringify({ pid: process.pid, host: hostname() })));
    try {
      await this.refuseInUse(id);
    } catch (err) {
      await this.backend.delete(marker);
      throw err;
    }
    // The manifest goes first: from then on the snapshot does not exist.
    await this.backend.delete(dir + MANIFEST);
    for await (const o of this.backend.list(dir)) if (o.key !== marker) await this.backend.delete(o.key);
    await this.backend.delete(marker);
  }

  private async refuseInUse(id: string): Promise<void> {
    const s = (await this.liveSessions()).find((x) => x.parent === id || x.reads === id);
    if (s)
      throw conflict(
        `snapshot ${id} is in use: ${s.parent === id ? 'the base of a backup' : 'read by a restore or mount'} running now (process ${s.pid} on ${s.host}); try again when it ends`,
      );
  }

  /**
   * What the repository holds. The deduplication ratio compares the data the snapshots refer to
   * (their non-zero chunks: zero chunks and holes are never stored) with the bytes stored.
   */
  async stats(): Promise<RepositoryStats> {
    let chunks = 0;
    let storedBytes = 0;
    for await (const o of this.backend.list('chunks/')) {
      if (isTemporaryKey(o.key) || isAsideName(o.key)) continue;
      chunks++;
      storedBytes += o.size;
    }
    const scan = await this.scanSnapshots();
    let logicalBytes = 0;
    let dataBytes = 0;
    for (const s of scan.snapshots)
      for (const d of s.disks) {
        logicalBytes += d.size;
        // The last entry may be short; counted whole, the error is under one entry per disk.
        dataBytes += Math.min(d.size, (d.dataChunks ?? 0) * (d.granule ?? d.chunkSize));
      }
    return {
      location: this.location,
      encrypted: this.encrypted,
      chunkSize: this.config.chunkSize,
      snapshots: scan.snapshots.length,
      damagedSnapshots: scan.damaged,
      chunks,
      storedBytes,
      logicalBytes,
      dataBytes,
      ratio: storedBytes ? dataBytes / storedBytes : 0,
    };
  }
}

export interface RepositoryStats {
  location: string;
  encrypted: boolean;
  chunkSize: number;
  snapshots: number;
  /** Snapshots whose manifest is damaged (not counted in the rest). */
  damagedSnapshots: DamagedSnapshot[];
  chunks: number;
  storedBytes: number;
  /** Sum of the disk sizes of all snapshots (what full copies would take). */
  logicalBytes: number;
  /** The data the snapshots refer to: their non-zero chunks, counted once per snapshot. */
  dataBytes: number;
  /** dataBytes per stored byte: what deduplication and compression save together. */
  ratio: number;
}

/** An empty directory, or one holding only empty folders (what a failed init of old left). */
function onlyEmptyFolders(dir: string): boolean {
  return readdirSync(dir, { withFileTypes: true }).every(
    (e) => e.isDirectory() && LAYOUT.includes(e.name) && readdirSync(`${dir}/${e.name}`).length === 0,
  );
}

function checkSnapshotId(id: string): void {
  if (id.trim() === '') throw invalidArgument('no snapshot id given: see haven repo list');
  if (!/^[A-Za-z0-9-]+$/.test(id)) throw notFound(`no snapshot ${JSON.stringify(id)}: see haven repo list`);
}

/** The fields a reader relies on; anything else wrong is found when it is used. */
function checkManifest(m: SnapshotManifest, id: string): void {
  const str = (v: unknown) => typeof v === 'string';
  if (!m || typeof m !== 'object') throw new Error('not an object');
  if (m.id !== id) throw new Error(`it names snapshot ${String(m.id)}`);
  if (!str(m.createdAt) || Number.isNaN(Date.parse(m.createdAt))) throw new Error('no creation time');
  if (!m.source || !str(m.source.kind) || !str(m.source.name)) throw new Error('no source');
  if (!Array.isArray(m.disks)) throw new Error('no disks');
  for (const d of m.disks)
    if (
      !d ||
      !str(d.index) ||
      !str(d.indexSha256) ||
      !Number.isInteger(d.size) ||
      !Number.isInteger(d.chunkSize)
    )
      throw new Error('a disk entry is incomplete');
  if (!m.stats || typeof m.stats !== 'object') throw new Error('no stats');
  if (!Array.isArray(m.tags)) m.tags = [];
}
