// A repository in an S3-compatible bucket (docs/decisions/0023-s3-repository.md): one object per
// repository object under `prefix/`, the same keys as a local directory's paths. What S3 gives
// and what this relies on:
//
// - A PUT is atomic and durable when it returns: no torn object, no sync needed (sync() is a no-op).
// - Exclusive create (locks, config, manifests): If-None-Match: * where the bucket is unversioned;
//   in a versioned bucket (every object-locked bucket is) RGW 16.2 ignores it, so the writer puts
//   its own version, then lists the key's versions: it holds the key only if its version is the
//   only one. Two racing writers may both lose (both see two versions and take theirs back), never
//   both win: whichever listed second saw the other's version.
// - Claims: an object's time cannot be touched cheaply, so claim() only says whether the chunk is
//   there, and garbage collection runs only while no backup writes (gc.ts: `objectStore`).
// - Pack files (docs/decisions/0024-s3-pack-files.md): chunks are not objects of their own. The
//   chunks written are appended into pack objects (packs/…, ~16 MiB, one PUT each, a few in flight),
//   and index objects (index/…, pack-index.ts) say which chunk is where; an index is written only
//   once every pack it names is stored, and before any manifest that needs them (sync()). Readers
//   take a chunk with a ranged GET, adjacent chunks of a pack in one GET, and read ahead while they
//   read a pack in order. Chunk objects of the one-object-per-chunk layout (chunks/…) still read.
// - Object Lock: with `retention` set, packs, index objects and a snapshot's index and manifest are
//   written with a retain-until date (single PUTs: RGW ignores lock headers on multipart uploads,
//   which this never uses); extendRetention() lengthens the packs a snapshot uses (and their index
//   objects) to the snapshot's date.
// Every request has a connection and a request timeout and is retried with backoff (the SDK's
// standard retry strategy); at most `maxSockets` requests are in flight.
import { createHash } from 'node:crypto';
import { closeSync, fstatSync, mkdirSync, openSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import {
  DeleteObjectCommand,
  GetBucketVersioningCommand,
  GetObjectCommand,
  GetObjectLockConfigurationCommand,
  HeadBucketCommand,
  HeadObjectCommand,
  ListObjectVersionsCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  PutObjectRetentionCommand,
  S3Client,
  S3ServiceException,
  type PutObjectCommandInput,
} from '@aws-sdk/client-s3';
import { writeFileAtomic } from '../common/atomic-file.js';
import { HavenError } from '../common/errors.js';
import type { ObjectInfo, PackSweep, RepositoryBackend } from './backend.js';
import { chunkKey, readChunk } from './format.js';
import {
  encodePackIndex,
  openPackIndex,
  sealPackIndex,
  indexKey,
  newPackId,
  packIdOf,
  packKey,
  type PackEntry,
  type PackRecord,
} from './pack-index.js';
import { s3Settings, type Retention, type RetainingBackend, type S3Settings } from './s3-settings.js';

/** Requests in flight at once, per backend. */
const MAX_SOCKETS = 32;
/** Deletes and HEADs done side by side by the bulk helpers. */
const PARALLEL = 16;
const MiB = 1024 * 1024;

/** A positive whole number from the environment (tuning knobs, measured in 0024), else `dflt`. */
function envNumber(name: string, dflt: number): number {
  const v = process.env[name];
  if (!v) return dflt;
  const m = /^(\d+)([KMG]?)$/i.exec(v.trim());
  if (!m || Number(m[1]) <= 0)
    throw new HavenError('INVALID_ARGUMENT', `${name}=${v}: a positive number (K, M, G)`);
  return Number(m[1]) * ({ '': 1, k: 1024, m: MiB, g: 1024 * MiB }[m[2]!.toLowerCase()] ?? 1);
}

/** A pack is sealed and sent when the next chunk would take it past this. */
const PACK_BYTES = () => envNumber('HAVEN_S3_PACK_SIZE', 16 * MiB);
/** Packs uploading at once; a writer waits beyond (memory: this many + 1 packs). */
const PACK_UPLOADS = () => envNumber('HAVEN_S3_PACK_UPLOADS', 4);
/** Packs stored before an index object names them (also at every sync): what a killed backup left is found. */
const INDEX_EVERY = 32;
/** One ranged GET takes at most this much of a pack (adjacent chunks). */
const RUN_BYTES = 4 * MiB;
/** A reader going through a pack in order has this much ahead of it fetched or in flight. */
const READ_AHEAD = () => envNumber('HAVEN_S3_READ_AHEAD', 16 * MiB);
/** gc writes the used chunks of a pack again, and deletes it, when more than this share of it is unused. */
const REPACK_GARBAGE = () => envNumber('HAVEN_S3_REPACK_PERCENT', 50) / 100;
/**
 * Every backup writes its own index objects (a few packs each): past this many small ones (naming
 * fewer than MERGE_PACKS packs), gc merges them into index objects of MERGE_PACKS packs (~4 GiB of
 * data, ~0.6 MiB of index each), so that a new process's LIST and reads of index/ stay few.
 */
const MERGE_AT = () => envNumber('HAVEN_S3_INDEX_MERGE_AT', 16);
const MERGE_PACKS = 256;
/** A read within this many entries after the last one read of its pack counts as in order. */
const NEAR = 8;
/** Chunks fetched ahead and not yet taken, at most (the oldest are dropped). */
const AHEAD_CACHE = 64 * MiB;

const isChunkKey = (key: string) => key.startsWith('chunks/');
const hexOf = (key: string) => key.slice(key.lastIndexOf('/') + 1);

/** A pack this backend knows: indexed (named by index objects), or written by this process. */
interface Pack extends PackRecord {
  key: string;
  bytes: number;
  /** The index objects that name it (none: not indexed yet). */
  indexes: Set<string>;
  /** Its bytes while it is being filled or uploaded (read from memory meanwhile). */
  mem?: Buffer;
}

interface Located {
  pack: Pack;
  /** Its entry in pack.entries. */
  i: number;
}

/** Runs `work` on each item, `n` at a time. */
async function parallel<T>(items: readonly T[], n: number, work: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < items.length) await work(items[next++]!);
  };
  await Promise.all(Array.from({ length: Math.min(n, items.length) }, worker));
}

export class S3Backend implements RepositoryBackend, RetainingBackend {
  readonly location: string;
  readonly objectStore = true;
  private readonly client: S3Client;
  private readonly bucket: string;
  private readonly prefix: string;
  private versioned?: boolean;
  /** Retain-until times this process set or saw, per key (so that a key is extended once). */
  private readonly retainedUntil = new Map<string, number>();
  /** Set by the repository from its config: what every snapshot object is retained for. */
  retention: Retention | undefined;

  // What the bucket holds, read once per session (a LIST of index/, a GET of each index object
  // not read yet, a LIST of chunks/ for chunk objects of the one-object-per-chunk layout) and kept
  // up to date with what this instance writes and deletes. Refreshed at each session's start
  // (forget()): a gc elsewhere may have run in between. About 200 bytes a chunk.
  /** Pack id → pack. */
  private readonly packs = new Map<string, Pack>();
  /** Chunk digest (hex) → where it is. */
  private readonly where = new Map<string, Located>();
  /** Index object key → the ids of the packs it names. */
  private readonly indexes = new Map<string, string[]>();
  /** Chunk objects (chunks/…): the one-object-per-chunk layout. */
  private legacy = new Set<string>();
  private legacyStale = true;
  /**
   * Whether the bucket may hold chunk objects (chunks/…) of the one-object-per-chunk layout: set
   * false by the repository only for a bucket created packed (config.json `"layout": "packed"`),
   * whose chunks/ is then not listed at each session's start. A bucket converted from the old
   * layout never has that mark (repository.ts).
   */
  chunkObjects = true;
  private loading: Promise<void> | undefined;
  private loadedAt = 0;

  // The pack being filled, those uploading, and those stored but not yet named by an index object.
  private cur: Pack | undefined;
  private curUsed = 0;
  private readonly uploads = new Set<Promise<void>>();
  private readonly indexing = new Set<Promise<void>>();
  private unindexed: Pack[] = [];
  /** A pack or index upload failed: what this session wrote is not all stored (sync() says so). */
  private failed: HavenError | undefined;

  // Readers: chunks fetched ahead (a ranged GET takes adjacent chunks together), per pack where the
  // last read ended and how far it is fetched.
  private readonly ahead = new Map<string, { data: Promise<Buffer>; length: number }>();
  private aheadBytes = 0;
  private readonly cursors = new Map<string, { last: number; fetched: Set<number> }>();
  /** Counters, for tests and measurements. */
  readonly counters = { packPuts: 0, rangeGets: 0, retentionPuts: 0, indexGets: 0, chunkLists: 0 };
  /** Where index objects read before are kept (undefined: not kept). */
  private readonly cacheDir: string | undefined;
  /** The repository's metadata key (an encrypted repository): index objects are sealed with it. */
  metadataKey: Buffer | undefined = undefined;

  constructor(private readonly settings: S3Settings) {
    this.bucket = settings.bucket;
    this.prefix = settings.prefix;
    this.location = `s3://${settings.bucket}/${settings.prefix.replace(/\/$/, '')}`;
    this.cacheDir = indexCacheDir(settings);
    this.client = new S3Client({
      endpoint: settings.endpoint,
      region: settings.region,
      forcePathStyle: true,
      credentials: { accessKeyId: settings.accessKeyId, secretAccessKey: settings.secretAccessKey },
      maxAttempts: settings.maxAttempts ?? 4,
      retryMode: 'standard',
      // RGW 16.2 knows neither the trailing checksums nor aws-chunked bodies newer SDKs send.
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
      requestHandler: {
        requestTimeout: settings.requestTimeoutMs ?? 30_000,
        connectionTimeout: settings.connectTimeoutMs ?? 5_000,
        httpAgent: { keepAlive: true, maxSockets: MAX_SOCKETS },
        httpsAgent: { keepAlive: true, maxSockets: MAX_SOCKETS },
      },
    });
  }

  /**
   * Checks that the bucket answers with these credentials (a clear error naming what is wrong, in
   * bounded time) and learns whether it is versioned; `needLock`: that Object Lock is enabled.
   */
  async connect(opts: { needLock?: boolean } = {}): Promise<void> {
    await this.call('reach', () => this.client.send(new HeadBucketCommand({ Bucket: this.bucket })));
    const v = await this.call('read the versioning of', () =>
      this.client.send(new GetBucketVersioningCommand({ Bucket: this.bucket })),
    );
    this.versioned = v.Status === 'Enabled' || v.Status === 'Suspended';
    if (opts.needLock) {
      const lock = await this.call('read the object lock configuration of', () =>
        this.client.send(new GetObjectLockConfigurationCommand({ Bucket: this.bucket })),
      ).catch((err: unknown) => {
        if (err instanceof HavenError && err.code === 'NOT_FOUND') return undefined;
        throw err;
      });
      if (lock?.ObjectLockConfiguration?.ObjectLockEnabled !== 'Enabled')
        throw new HavenError(
          'UNSUPPORTED',
          `bucket ${this.bucket} at ${this.settings.endpoint} has no S3 Object Lock: immutable snapshots need a bucket created with object lock enabled`,
        );
    }
  }

  close(): void {
    this.client.destroy();
  }

  private k(key: string): string {
    if (key.includes('..') || key.startsWith('/'))
      throw new HavenError('INVALID_ARGUMENT', `bad object key ${key}`);
    return this.prefix + key;
  }

  /** Sends a request; S3's and the network's errors become HavenErrors naming the store and the object. */
  private async call<T>(what: string, send: () => Promise<T>, key?: string): Promise<T> {
    try {
      return await send();
    } catch (err) {
      throw this.translate(err, what, key);
    }
  }

  private translate(err: unknown, what: string, key?: string): HavenError {
    const where =
      key !== undefined
        ? `${this.location}: cannot ${what} ${key}`
        : `cannot ${what} bucket ${this.bucket} at ${this.settings.endpoint}`;
    if (err instanceof S3ServiceException) {
      const status = err.$metadata?.httpStatusCode;
      const name = err.name;
      const msg = `${where}: ${name}${err.message && err.message !== name && err.message !== 'UnknownError' ? ` (${err.message})` : ''}`;
      if (status === 404 || name === 'NoSuchKey' || name === 'NotFound' || name === 'NoSuchBucket')
        return new HavenError(
          'NOT_FOUND',
          name === 'NoSuchBucket' || (key === undefined && status === 404) ? `${where}: no such bucket` : msg,
        );
      if (name === 'InvalidAccessKeyId' || name === 'SignatureDoesNotMatch')
        return new HavenError('UNAUTHENTICATED', `${where}: the store refused the credentials (${name})`);
      if (status === 403 && key === undefined)
        return new HavenError(
          'UNAUTHENTICATED',
          `${where}: access denied (wrong credentials, or no right to the bucket)`,
        );
      if (status === 412) return new HavenError('CONFLICT', `${where}: it exists already`);
      if (name === 'ObjectLockConfigurationNotFoundError') return new HavenError('NOT_FOUND', msg);
      if (status === 403)
        return new HavenError(
          'CONFLICT',
          `${where}: refused by the store (${name}: object lock retention, or no right)`,
        );
      return new HavenError('IO', msg);
    }
    const e = err as { name?: string; code?: string; message?: string };
    if (e.name === 'TimeoutError' || e.code === 'ETIMEDOUT' || /timed? ?out/i.test(e.message ?? ''))
      return new HavenError('TIMEOUT', `${where}: no answer in time (${e.message ?? e.name})`);
    return new HavenError('IO', `${where}: ${e.code ?? e.name ?? ''} ${e.message ?? ''}`.trim());
  }

  private async getObject(key: string, range?: [number, number]): Promise<Buffer> {
    const out = await this.call(
      'read',
      () =>
        this.client.send(
          new GetObjectCommand({
            Bucket: this.bucket,
            Key: this.k(key),
            ...(range ? { Range: `bytes=${range[0]}-${range[1] - 1}` } : {}),
          }),
        ),
      key,
    );
    const length = out.ContentLength;
    const body = out.Body as unknown as AsyncIterable<Uint8Array> | undefined;
    if (length === undefined || !body || typeof body[Symbol.asyncIterator] !== 'function') {
      const u = await out.Body!.transformToByteArray();
      return Buffer.from(u.buffer, u.byteOffset, u.byteLength);
    }
    // Straight into one buffer of the announced size: no concatenation, no copy after.
    const buf = Buffer.allocUnsafe(length);
    let at = 0;
    try {
      for await (const part of body) {
        if (at + part.length > length) throw new Error(`more than the ${length} bytes announced`);
        buf.set(part, at);
        at += part.length;
      }
    } catch (err) {
      throw this.translate(err, 'read', key);
    }
    return at === length ? buf : buf.subarray(0, at);
  }

  async read(key: string): Promise<Buffer> {
    if (isChunkKey(key)) return this.readChunk(key);
    return this.getObject(key);
  }

  /** Whether `key` takes retention: the objects a snapshot is made of. */
  private retained(key: string): boolean {
    return (
      !!this.retention &&
      (key.startsWith('chunks/') ||
        key.startsWith('packs/') ||
        key.startsWith('index/') ||
        /^snapshots\/[^/]+\/(manifest\.json|disk\d+\.idx)$/.test(key))
    );
  }

  private retainUntil(): Date {
    // A day more than asked: a snapshot committed a while after its objects were written still
    // has every object retained for its whole period.
    return new Date(Date.now() + (this.retention!.days + 1) * 86_400_000);
  }

  async write(
    key: string,
    data: Uint8Array | readonly Uint8Array[],
    opts: { exclusive?: boolean } = {},
  ): Promise<void> {
    if (isChunkKey(key) && !opts.exclusive) return this.writeChunk(hexOf(key), data);
    await this.put(key, data instanceof Uint8Array ? data : Buffer.concat(data), opts);
  }

  private async put(
    key: string,
    body: Uint8Array,
    opts: { exclusive?: boolean; retainUntil?: Date } = {},
  ): Promise<void> {
    const input: PutObjectCommandInput = {
      Bucket: this.bucket,
      Key: this.k(key),
      Body: body,
      ContentLength: body.length,
    };
    if (this.retained(key)) {
      const until = opts.retainUntil ?? this.retainUntil();
      input.ObjectLockMode = this.retention!.mode;
      input.ObjectLockRetainUntilDate = until;
      input.ContentMD5 = createHash('md5').update(body).digest('base64'); // required with lock headers
      this.retainedUntil.set(key, until.getTime());
    }
    if (opts.exclusive && this.versioned === undefined) await this.connect();
    if (opts.exclusive && !this.versioned) input.IfNoneMatch = '*';
    const put = await this.call('write', () => this.client.send(new PutObjectCommand(input)), key);
    if (isChunkKey(key)) this.legacy.add(key);
    if (opts.exclusive && this.versioned) {
      const versions = await this.versionsOf(key);
      if (versions.length > 1 || (versions[0] && put.VersionId && versions[0].versionId !== put.VersionId)) {
        if (put.VersionId) await this.deleteVersion(key, put.VersionId).catch(() => undefined);
        throw new HavenError('CONFLICT', `${this.location}: ${key} already exists`);
      }
    }
  }

  // ---- packs: writing -----------------------------------------------------------------------

  /**
   * Appends a chunk to the pack being filled; a full pack is sent (in the background, at most
   * PACK_UPLOADS at once: past that the writer waits). Durable only after sync().
   */
  private async writeChunk(
    hex: string,
    data: Uint8Array | readonly Uint8Array[],
    opts: { again?: boolean } = {},
  ): Promise<void> {
    if (this.failed) throw this.failed;
    if (this.where.has(hex) && !opts.again) return;
    const parts = data instanceof Uint8Array ? [data] : data;
    const length = parts.reduce((n, p) => n + p.length, 0);
    if (this.cur && this.curUsed + length > this.cur.mem!.length) this.seal();
    if (!this.cur) {
      const id = newPackId();
      this.cur = {
        id,
        key: packKey(id),
        writtenAt: 0,
        retainUntil: 0,
        entries: [],
        bytes: 0,
        indexes: new Set(),
        mem: Buffer.allocUnsafe(Math.max(PACK_BYTES(), length)),
      };
      this.curUsed = 0;
      this.packs.set(id, this.cur);
    }
    const p = this.cur;
    const offset = this.curUsed;
    for (const part of parts) {
      p.mem!.set(part, this.curUsed);
      this.curUsed += part.length;
    }
    p.entries.push({ hex, offset, length });
    this.where.set(hex, { pack: p, i: p.entries.length - 1 });
    if (this.curUsed >= p.mem!.length) this.seal();
    while (this.uploads.size >= PACK_UPLOADS()) await Promise.race(this.uploads);
    if (this.failed) throw this.failed;
  }

  /** Sends the pack being filled. */
  private seal(): void {
    const p = this.cur;
    if (!p) return;
    this.cur = undefined;
    p.mem = p.mem!.subarray(0, this.curUsed);
    p.bytes = this.curUsed;
    p.writtenAt = Date.now();
    const until = this.retention ? this.retainUntil() : undefined;
    p.retainUntil = until?.getTime() ?? 0;
    const up = this.put(p.key, p.mem, until ? { retainUntil: until } : {}).then(
      () => {
        this.counters.packPuts++;
        p.mem = undefined;
        this.unindexed.push(p);
        if (this.unindexed.length >= INDEX_EVERY) this.writeIndex();
      },
      (err: unknown) => {
        this.failed ??= err instanceof HavenError ? err : new HavenError('IO', String(err));
        this.dropPack(p);
      },
    );
    const tracked = up.finally(() => this.uploads.delete(tracked));
    this.uploads.add(tracked);
  }

  /** Index object `key` naming `packs`, as stored (sealed in an encrypted repository). */
  private indexBody(key: string, packs: readonly Pack[]): Buffer {
    return sealPackIndex(encodePackIndex(packs), this.metadataKey, key);
  }

  /** A pack that is not stored: its chunks are not there. */
  private dropPack(p: Pack): void {
    for (const e of p.entries) if (this.where.get(e.hex)?.pack === p) this.where.delete(e.hex);
    this.packs.delete(p.id);
  }

  /** Writes an index object naming the packs stored and not yet named (in the background). */
  private writeIndex(packs = this.unindexed.splice(0)): void {
    if (!packs.length) return;
    const key = indexKey(newPackId());
    const until = Math.max(0, ...packs.map((p) => p.retainUntil));
    const body = this.indexBody(key, packs);
    const job = this.put(key, body, until ? { retainUntil: new Date(until) } : {}).then(
      () => {
        this.addIndex(key, packs);
        this.cacheIndex(key, body);
      },
      (err: unknown) => {
        this.failed ??= err instanceof HavenError ? err : new HavenError('IO', String(err));
        this.unindexed.unshift(...packs); // stored: named by the next index written
      },
    );
    const tracked = job.finally(() => this.indexing.delete(tracked));
    this.indexing.add(tracked);
  }

  private addIndex(key: string, packs: readonly Pack[]): void {
    this.indexes.set(
      key,
      packs.map((p) => p.id),
    );
    for (const p of packs) p.indexes.add(key);
    this.retainedUntil.set(
      key,
      Math.max(this.retainedUntil.get(key) ?? 0, ...packs.map((p) => p.retainUntil)),
    );
  }

  /**
   * Makes every chunk written so far durable and findable: the pack being filled is sent, every
   * upload awaited, and an index object written for the packs not named yet. Then a manifest may
   * refer to them.
   */
  async sync(): Promise<void> {
    if (this.cur && this.curUsed) this.seal();
    while (this.uploads.size) await Promise.allSettled([...this.uploads]);
    if (this.failed) throw this.failed;
    this.writeIndex();
    while (this.indexing.size) await Promise.allSettled([...this.indexing]);
    if (this.failed) throw this.failed;
  }

  // ---- packs: what the bucket holds ----------------------------------------------------------

  private ensureIndex(): Promise<void> {
    this.loading ??= this.loadIndex().catch((err: unknown) => {
      this.loading = undefined;
      throw err;
    });
    return this.loading;
  }

  /** Reads the index objects not read yet, drops those gone (a gc), and lists the chunk objects. */
  private async loadIndex(): Promise<void> {
    // The LIST of chunk objects does not depend on the index objects: both go at once.
    const legacy = this.legacyStale ? this.listLegacy() : undefined;
    legacy?.catch(() => undefined); // awaited below
    await this.loadPacks();
    if (legacy) {
      this.legacy = await legacy;
      this.legacyStale = false;
    }
    this.loadedAt = Date.now();
  }

  /** The chunk objects (listed at each session's start, a gc may have deleted some); none in a bucket created packed. */
  private async listLegacy(): Promise<Set<string>> {
    const legacy = new Set<string>();
    if (!this.chunkObjects) return legacy;
    this.counters.chunkLists++;
    for await (const o of this.listObjects('chunks/')) legacy.add(o.key);
    return legacy;
  }

  private async loadPacks(): Promise<void> {
    const listed = new Set<string>();
    for await (const o of this.listObjects('index/')) listed.add(o.key);
    const gone = [...this.indexes.keys()].filter((k) => !listed.has(k));
    const fresh = [...listed].filter((k) => !this.indexes.has(k));
    await parallel(fresh, PARALLEL, async (key) => {
      let records = this.cachedIndex(key);
      if (!records) {
        let data: Buffer;
        try {
          this.counters.indexGets++;
          data = await this.getObject(key);
        } catch (err) {
          if (err instanceof HavenError && err.code === 'NOT_FOUND') return; // a gc rewrote it meanwhile
          throw err;
        }
        records = openPackIndex(data, this.metadataKey, key, `${this.location}: pack index ${key}`);
        this.cacheIndex(key, data);
      }
      const packs = records.map((r) => {
        const p = this.packs.get(r.id);
        if (p) return p;
        const last = r.entries[r.entries.length - 1];
        const n: Pack = {
          ...r,
          key: packKey(r.id),
          bytes: last ? last.offset + last.length : 0,
          indexes: new Set(),
        };
        this.packs.set(r.id, n);
        return n;
      });
      this.addIndex(key, packs);
      for (const p of packs)
        p.entries.forEach((e, i) => this.where.has(e.hex) || this.where.set(e.hex, { pack: p, i }));
    });
    this.pruneIndexCache(listed);
    if (gone.length) {
      for (const k of gone) {
        for (const id of this.indexes.get(k) ?? []) this.packs.get(id)?.indexes.delete(k);
        this.indexes.delete(k);
      }
      this.rebuild();
    }
  }

  // Index objects never change (a gc writes new ones and deletes the old), so one read before is
  // read from the local cache: a new process asks the store only for the index objects new since.
  // Only a file of this user that nobody else may write is believed, and only if its checksum holds.

  private cachedIndex(key: string): PackRecord[] | undefined {
    if (!this.cacheDir) return undefined;
    let fd: number | undefined;
    try {
      fd = openSync(join(this.cacheDir, hexOf(key)), 'r');
      const st = fstatSync(fd);
      if (st.uid !== process.getuid?.() || (st.mode & 0o022) !== 0) return undefined;
      return openPackIndex(readFileSync(fd), this.metadataKey, key, key);
    } catch {
      return undefined;
    } finally {
      if (fd !== undefined) closeSync(fd);
    }
  }

  private cacheIndex(key: string, data: Buffer): void {
    if (!this.cacheDir) return;
    try {
      mkdirSync(this.cacheDir, { recursive: true, mode: 0o700 });
      writeFileAtomic(join(this.cacheDir, hexOf(key)), data);
    } catch {
      // an unwritable cache only costs the next process the GET again
    }
  }

  private pruneIndexCache(listed: ReadonlySet<string>): void {
    if (!this.cacheDir) return;
    try {
      for (const name of readdirSync(this.cacheDir))
        if (/^[0-9a-f]{32}$/.test(name) && !listed.has(indexKey(name)))
          rmSync(join(this.cacheDir, name), { force: true });
    } catch {
      // no cache yet
    }
  }

  /** After index objects went: packs no index names and this process is not writing are gone. */
  private rebuild(): void {
    const pending = new Set<Pack>([...this.unindexed, ...(this.cur ? [this.cur] : [])]);
    for (const [id, p] of this.packs) if (!p.indexes.size && !p.mem && !pending.has(p)) this.packs.delete(id);
    this.where.clear();
    for (const p of this.packs.values())
      p.entries.forEach((e, i) => this.where.has(e.hex) || this.where.set(e.hex, { pack: p, i }));
  }

  /** Where a chunk is; a chunk not known is looked for again if the index was read a while ago. */
  private async locate(hex: string): Promise<Located | undefined> {
    await this.ensureIndex();
    let at = this.where.get(hex);
    if (!at && Date.now() - this.loadedAt > 1000) {
      this.loading = undefined;
      await this.ensureIndex();
      at = this.where.get(hex);
    }
    return at;
  }

  /** The pack a chunk is in and where (tests: to damage it; undefined: not in a pack). */
  async chunkLocation(
    digest: Buffer | string,
  ): Promise<{ pack: string; offset: number; length: number } | undefined> {
    const at = await this.locate(typeof digest === 'string' ? digest : digest.toString('hex'));
    if (!at) return undefined;
    const e = at.pack.entries[at.i]!;
    return { pack: at.pack.key, offset: e.offset, length: e.length };
  }

  // ---- packs: reading ------------------------------------------------------------------------

  private async readChunk(key: string): Promise<Buffer> {
    const hex = hexOf(key);
    const at = await this.locate(hex);
    if (!at) return this.getObject(key); // a chunk object (one-object-per-chunk layout), or NOT_FOUND
    try {
      return await this.readPacked(at);
    } catch (err) {
      if (!(err instanceof HavenError && err.code === 'NOT_FOUND')) throw err;
      // Its pack went (a gc repacked or deleted it since the index was read): look again.
      this.loading = undefined;
      await this.ensureIndex();
      const again = this.where.get(hex);
      if (!again || again.pack === at.pack) throw err;
      return this.readPacked(again);
    }
  }

  /**
   * A chunk from its pack: from memory while the pack is being written; else from what was
   * fetched ahead, or with a ranged GET. A pack is read in segments of RUN_BYTES: a reader that
   * takes a pack's chunks roughly in order (restore, verify, copy: disk order is about the order a
   * backup wrote) gets each segment in one GET, and the next READ_AHEAD of the pack fetched ahead
   * of it; a reader that jumps about gets each chunk alone.
   */
  private readPacked(at: Located): Promise<Buffer> {
    const { pack } = at;
    const e = pack.entries[at.i]!;
    if (pack.mem) return Promise.resolve(Buffer.from(pack.mem.subarray(e.offset, endOf(e))));
    let cur = this.cursors.get(pack.id);
    if (!cur) {
      if (this.cursors.size > 256) this.cursors.clear();
      this.cursors.set(pack.id, (cur = { last: -NEAR - 2, fetched: new Set() }));
    }
    const seg = Math.floor(e.offset / RUN_BYTES);
    let got = this.take(e.hex);
    // In order: the entry is one of the few after the last one read (a backup's workers store a
    // disk's chunks about in order). A reader taking chunks far apart in one pack (an incremental
    // reading its parent's index pages) gets each alone, not segments it will not use.
    const inOrder = !!got || (at.i > cur.last && at.i <= cur.last + NEAR);
    cur.last = at.i;
    if (!got && inOrder && !cur.fetched.has(seg)) {
      this.fetchSegment(pack, cur.fetched, seg);
      got = this.take(e.hex);
    }
    if (!got) {
      this.fetch(pack, at.i, at.i + 1);
      got = this.take(e.hex)!;
    }
    if (inOrder)
      for (let s = seg + 1; s <= seg + READ_AHEAD() / RUN_BYTES && this.aheadBytes < AHEAD_CACHE; s++)
        if (!cur.fetched.has(s) && !this.fetchSegment(pack, cur.fetched, s)) break;
    return got;
  }

  private take(hex: string): Promise<Buffer> | undefined {
    const a = this.ahead.get(hex);
    if (!a) return undefined;
    this.ahead.delete(hex);
    this.aheadBytes -= a.length;
    return a.data;
  }

  /** Fetches the chunks starting in segment `seg` of a pack (one GET); false: there are none. */
  private fetchSegment(pack: Pack, fetched: Set<number>, seg: number): boolean {
    const i = firstAt(pack.entries, seg * RUN_BYTES);
    const end = firstAt(pack.entries, (seg + 1) * RUN_BYTES);
    if (i >= end) return false;
    fetched.add(seg);
    this.fetch(pack, i, end);
    return true;
  }

  /** One ranged GET of entries [i, end) of a pack (adjacent); each entry is then taken from `ahead`. */
  private fetch(pack: Pack, i: number, end: number): void {
    const es = pack.entries;
    const start = es[i]!.offset;
    const stop = endOf(es[end - 1]!);
    this.counters.rangeGets++;
    const whole = this.getObject(pack.key, [start, stop]).then((b) => {
      if (b.length !== stop - start)
        throw new HavenError(
          'CORRUPT',
          `${this.location}: pack ${pack.key} is short (${b.length} of ${stop - start} bytes at ${start})`,
        );
      return b;
    });
    for (let j = i; j < end; j++) {
      const e = es[j]!;
      const data = whole.then((b) => b.subarray(e.offset - start, endOf(e) - start));
      data.catch(() => undefined); // seen by whoever takes it
      this.take(e.hex);
      this.ahead.set(e.hex, { data, length: e.length });
      this.aheadBytes += e.length;
    }
    // The oldest fetched ahead and never taken go first (not those just fetched).
    for (const [hex] of this.ahead) {
      if (this.aheadBytes <= AHEAD_CACHE || hex === es[i]!.hex) break;
      this.take(hex);
    }
  }

  // ---- objects -------------------------------------------------------------------------------

  /** The versions of exactly `key` (no delete markers). */
  private async versionsOf(key: string): Promise<{ versionId: string; retainUntil?: Date }[]> {
    const out: { versionId: string }[] = [];
    let keyMarker: string | undefined;
    let versionMarker: string | undefined;
    for (;;) {
      const r = await this.call(
        'list the versions of',
        () =>
          this.client.send(
            new ListObjectVersionsCommand({
              Bucket: this.bucket,
              Prefix: this.k(key),
              ...(keyMarker ? { KeyMarker: keyMarker } : {}),
              ...(versionMarker ? { VersionIdMarker: versionMarker } : {}),
            }),
          ),
        key,
      );
      for (const v of r.Versions ?? [])
        if (v.Key === this.k(key) && v.VersionId) out.push({ versionId: v.VersionId });
      for (const d of r.DeleteMarkers ?? [])
        if (d.Key === this.k(key) && d.VersionId)
          await this.deleteVersion(key, d.VersionId).catch(() => undefined);
      if (!r.IsTruncated) return out;
      keyMarker = r.NextKeyMarker;
      versionMarker = r.NextVersionIdMarker;
    }
  }

  private async deleteVersion(key: string, versionId: string): Promise<void> {
    await this.call(
      'delete',
      () =>
        this.client.send(
          new DeleteObjectCommand({ Bucket: this.bucket, Key: this.k(key), VersionId: versionId }),
        ),
      key,
    );
  }

  async exists(key: string): Promise<boolean> {
    return (await this.stat(key)) !== undefined;
  }

  async stat(key: string): Promise<ObjectInfo | undefined> {
    if (isChunkKey(key)) {
      const at = await this.locate(hexOf(key));
      if (at)
        return { key, size: at.pack.entries[at.i]!.length, mtimeMs: at.pack.writtenAt, pack: at.pack.key };
    }
    return (await this.head(key))?.info;
  }

  private async head(key: string): Promise<{ info: ObjectInfo; retainUntil?: number } | undefined> {
    try {
      const h = await this.call(
        'look up',
        () => this.client.send(new HeadObjectCommand({ Bucket: this.bucket, Key: this.k(key) })),
        key,
      );
      return {
        info: { key, size: h.ContentLength ?? 0, mtimeMs: h.LastModified?.getTime() ?? 0 },
        ...(h.ObjectLockRetainUntilDate ? { retainUntil: h.ObjectLockRetainUntilDate.getTime() } : {}),
      };
    } catch (err) {
      if (err instanceof HavenError && err.code === 'NOT_FOUND') return undefined;
      throw err;
    }
  }

  /**
   * Deletes the object: in a versioned bucket every version of it (a plain DELETE there only adds
   * a delete marker). CONFLICT when the store refuses (a version under Object Lock retention).
   * A chunk in a pack cannot be deleted alone (sweepPacks deletes whole packs).
   */
  async delete(key: string): Promise<void> {
    if (isChunkKey(key)) {
      const at = this.where.get(hexOf(key));
      if (at && at.pack.indexes.size)
        throw new HavenError(
          'UNSUPPORTED',
          `${this.location}: ${key} is in pack ${at.pack.key}: only whole packs are deleted (gc)`,
        );
      this.legacy.delete(key);
    }
    if (this.versioned === undefined) await this.connect();
    if (!this.versioned) {
      await this.call(
        'delete',
        () => this.client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key: this.k(key) })),
        key,
      );
      return;
    }
    for (const v of await this.versionsOf(key)) await this.deleteVersion(key, v.versionId);
  }

  /**
   * Every object under `prefix`. Under chunks/: the chunk objects, and each chunk in an indexed
   * pack as if it were one (its `pack` named), so that counting chunks works on either layout.
   */
  async *list(prefix: string): AsyncIterable<ObjectInfo> {
    yield* this.listObjects(prefix);
    if (isChunkKey(prefix) || prefix === 'chunks' || 'chunks/'.startsWith(prefix)) {
      await this.ensureIndex();
      for (const [hex, at] of this.where) {
        const key = chunkKey(hex);
        if (!at.pack.indexes.size || !key.startsWith(prefix)) continue;
        yield { key, size: at.pack.entries[at.i]!.length, mtimeMs: at.pack.writtenAt, pack: at.pack.key };
      }
    }
  }

  private async *listObjects(prefix: string): AsyncIterable<ObjectInfo> {
    let token: string | undefined;
    do {
      const r = await this.call(
        'list',
        () =>
          this.client.send(
            new ListObjectsV2Command({
              Bucket: this.bucket,
              Prefix: this.k(prefix),
              ...(token ? { ContinuationToken: token } : {}),
            }),
          ),
        prefix,
      );
      for (const o of r.Contents ?? [])
        if (o.Key)
          yield {
            key: o.Key.slice(this.prefix.length),
            size: o.Size ?? 0,
            mtimeMs: o.LastModified?.getTime() ?? 0,
          };
      token = r.IsTruncated ? r.NextContinuationToken : undefined;
    } while (token);
  }

  /**
   * Whether the chunk is there — in a pack (indexed, or written by this process) or as a chunk
   * object: a lookup in what was read at the session's start, no request (gc runs only while no
   * backup writes: see the head of this file).
   */
  async claim(key: string): Promise<boolean> {
    if (isChunkKey(key)) {
      await this.ensureIndex();
      return this.where.has(hexOf(key)) || this.legacy.has(key);
    }
    return !!(await this.head(key));
  }

  /** A new session: what the bucket holds is read again (only the index objects new since). */
  forget(): void {
    this.loading = undefined;
    this.legacyStale = true;
    if (!this.uploads.size && !this.indexing.size) this.failed = undefined;
  }

  async deleteUnclaimed(key: string, cutoffMs: number): Promise<'deleted' | 'kept' | 'absent'> {
    const s = await this.stat(key);
    if (!s) return 'absent';
    if (s.mtimeMs >= cutoffMs || s.pack) return 'kept';
    try {
      await this.delete(key);
    } catch (err) {
      if (err instanceof HavenError && err.code === 'CONFLICT') return 'kept'; // retained by Object Lock
      throw err;
    }
    return 'deleted';
  }

  async putBack(): Promise<void> {
    // Nothing is ever moved aside in a bucket.
  }

  describe(): undefined {
    return undefined;
  }

  // ---- gc ------------------------------------------------------------------------------------

  /**
   * Deletes the packs none of whose chunks is `live` and that are older than `cutoffMs`, and the
   * packs no index names (left by a backup that died) older than it. The index objects that name
   * a pack to delete are replaced first (a new one naming their other packs is written, then they
   * are deleted), so that no index ever names a missing pack. Packs under Object Lock retention
   * are not tried (nor an index object naming one). A pack mostly unused (REPACK_GARBAGE) has its
   * used chunks written into new packs first (stored and indexed), then goes like an unused one;
   * other partly used packs are kept (their garbage is reported). Called by gc only (its lock
   * held, no backup writing).
   */
  async sweepPacks(live: ReadonlySet<string>, cutoffMs: number): Promise<PackSweep> {
    this.forget();
    await this.ensureIndex();
    const r: PackSweep = {
      removedPacks: 0,
      removedChunks: 0,
      removedBytes: 0,
      keptPacks: 0,
      keptChunks: 0,
      keptBytes: 0,
      garbageBytes: 0,
      retainedPacks: 0,
    };
    const stored: ObjectInfo[] = [];
    for await (const o of this.listObjects('packs/')) stored.push(o);
    const doomed = new Map<string, ObjectInfo>();
    const repack = new Map<string, { o: ObjectInfo; p: Pack }>();
    const keep = (p: Pack | undefined, o: ObjectInfo) => {
      r.keptPacks++;
      r.keptBytes += o.size;
      for (const e of p?.entries ?? []) {
        if (live.has(e.hex)) r.keptChunks++;
        else r.garbageBytes += e.length;
      }
    };
    for (const o of stored) {
      const p = this.packs.get(packIdOf(o.key));
      const old = o.mtimeMs < cutoffMs;
      if (p && !p.indexes.size && (p.mem || this.unindexed.includes(p)))
        keep(p, o); // this process's
      else if (old && (!p || !p.indexes.size || !p.entries.some((e) => live.has(e.hex))))
        doomed.set(o.key, o);
      else if (old && p && !this.versioned && !this.retention && garbageShare(p, live) > REPACK_GARBAGE())
        repack.set(o.key, { o, p });
      else keep(p, o);
    }
    // Object Lock: what is retained is not even tried (the store would refuse).
    if (this.versioned || this.retention)
      await parallel([...doomed.values()], PARALLEL, async (o) => {
        const p = this.packs.get(packIdOf(o.key));
        const known = Math.max(p?.retainUntil ?? 0, this.retainedUntil.get(o.key) ?? 0);
        const until = known > Date.now() ? known : ((await this.head(o.key))?.retainUntil ?? 0);
        if (until > Date.now()) {
          doomed.delete(o.key);
          r.retainedPacks++;
          keep(p, o);
        }
      });
    // Mostly unused packs: their used chunks are written again into new packs (and a new index
    // object, by sync) before the old packs are doomed like the unused ones. A chunk whose bytes
    // do not check (CRC) leaves its pack as it is: verify reports it, a repack must not hide it.
    for (const { o, p } of repack.values()) {
      const data = await this.getObject(p.key);
      const used = p.entries.filter((e) => live.has(e.hex));
      const sound = used.every((e) => {
        try {
          readChunk(data.subarray(e.offset, endOf(e)), `chunk ${e.hex}`);
          return e.offset + e.length <= data.length;
        } catch {
          return false;
        }
      });
      if (!sound) {
        keep(p, o);
        continue;
      }
      for (const e of used) await this.writeChunk(e.hex, data.subarray(e.offset, endOf(e)), { again: true });
      r.repackedPacks = (r.repackedPacks ?? 0) + 1;
      r.keptChunks += used.length;
      r.removedChunks -= used.length; // counted as removed with the pack below: they moved
      doomed.set(o.key, o);
    }
    if (r.repackedPacks) await this.sync();
    // The index objects naming a doomed pack are replaced by ones naming the rest of their packs;
    // so are the small ones when there are many (not under Object Lock: retained ones stay).
    const small = (ids: readonly string[]) => ids.length < MERGE_PACKS;
    const merge =
      !this.versioned && !this.retention && [...this.indexes.values()].filter(small).length > MERGE_AT();
    const touched = [...this.indexes].filter(
      ([, ids]) => (merge && small(ids)) || ids.some((id) => doomed.has(packKey(id))),
    );
    const rest = new Map<string, Pack>();
    for (const [, ids] of touched)
      for (const id of ids) {
        const p = this.packs.get(id);
        if (p && !doomed.has(p.key)) rest.set(id, p);
      }
    const packs = [...rest.values()];
    for (let i = 0; i < packs.length; i += MERGE_PACKS) {
      const some = packs.slice(i, i + MERGE_PACKS);
      const key = indexKey(newPackId());
      const until = Math.max(
        0,
        ...some.map((p) => Math.max(p.retainUntil, this.retainedUntil.get(p.key) ?? 0)),
      );
      const body = this.indexBody(key, some);
      await this.put(key, body, until > Date.now() ? { retainUntil: new Date(until) } : {});
      this.addIndex(key, some);
      this.cacheIndex(key, body);
    }
    if (merge) r.mergedIndexes = touched.length;
    for (const [key, ids] of touched) {
      try {
        await this.delete(key);
      } catch (err) {
        if (!(err instanceof HavenError && err.code === 'CONFLICT')) throw err;
        // Retained: it still names its packs, so they stay.
        for (const id of ids) {
          const o = doomed.get(packKey(id));
          if (!o) continue;
          doomed.delete(o.key);
          r.retainedPacks++;
          keep(this.packs.get(id), o);
        }
        continue;
      }
      for (const id of ids) this.packs.get(id)?.indexes.delete(key);
      this.indexes.delete(key);
    }
    await parallel([...doomed.values()], PARALLEL, async (o) => {
      const p = this.packs.get(packIdOf(o.key));
      try {
        await this.delete(o.key);
      } catch (err) {
        if (!(err instanceof HavenError && err.code === 'CONFLICT')) throw err;
        r.retainedPacks++;
        keep(p, o);
        return;
      }
      r.removedPacks++;
      r.removedBytes += o.size;
      r.removedChunks += p?.entries.length ?? 0;
      if (p) this.packs.delete(p.id);
    });
    this.rebuild();
    return r;
  }

  // ---- Object Lock ---------------------------------------------------------------------------

  /**
   * Makes sure each object in `keys` is retained until at least `untilMs`; a retention is only
   * ever lengthened. A chunk in a pack stands for its pack and the index objects naming it: a
   * snapshot that uses one chunk of an old pack keeps the whole pack. Packs and index objects are
   * extended with one PutObjectRetention each where what is known of them (the date written in
   * their index, or set by this process) is earlier; other objects are looked up first. Returns
   * how many objects were extended.
   */
  async extendRetention(keys: Iterable<string>, untilMs: number): Promise<number> {
    if (!this.retention) return 0;
    await this.ensureIndex();
    const known = new Map<string, number | undefined>(); // undefined: look it up
    for (const k of keys) {
      const at = isChunkKey(k) ? this.where.get(hexOf(k)) : undefined;
      if (!at) {
        known.set(k, this.retainedUntil.get(k));
        continue;
      }
      const p = at.pack;
      if (!known.has(p.key)) known.set(p.key, Math.max(p.retainUntil, this.retainedUntil.get(p.key) ?? 0));
      for (const ix of p.indexes) if (!known.has(ix)) known.set(ix, this.retainedUntil.get(ix) ?? 0);
    }
    const todo = [...known].filter(([, t]) => t === undefined || t < untilMs);
    let extended = 0;
    await parallel(todo, PARALLEL, async ([key, t]) => {
      if (t === undefined) {
        const h = await this.head(key);
        if (!h) throw new HavenError('CORRUPT', `${this.location}: ${key} is missing`);
        if ((h.retainUntil ?? 0) >= untilMs) {
          this.retainedUntil.set(key, h.retainUntil!);
          return;
        }
      }
      const until = this.retainUntil();
      try {
        await this.call(
          'set the retention of',
          () =>
            this.client.send(
              new PutObjectRetentionCommand({
                Bucket: this.bucket,
                Key: this.k(key),
                Retention: { Mode: this.retention!.mode, RetainUntilDate: until },
              }),
            ),
          key,
        );
      } catch (err) {
        // Refused: retained longer already (set elsewhere), or missing.
        if (!(err instanceof HavenError && err.code === 'CONFLICT')) throw err;
        const h = await this.head(key);
        if (!h || (h.retainUntil ?? 0) < untilMs) throw err;
        this.retainedUntil.set(key, h.retainUntil!);
        return;
      }
      this.counters.retentionPuts++;
      this.retainedUntil.set(key, until.getTime());
      const p = key.startsWith('packs/') ? this.packs.get(packIdOf(key)) : undefined;
      if (p) p.retainUntil = Math.max(p.retainUntil, until.getTime());
      extended++;
    });
    return extended;
  }
}

const endOf = (e: PackEntry) => e.offset + e.length;

/** The share of a pack's bytes no live chunk uses. */
function garbageShare(p: Pack, live: ReadonlySet<string>): number {
  let dead = 0;
  let all = 0;
  for (const e of p.entries) {
    all += e.length;
    if (!live.has(e.hex)) dead += e.length;
  }
  return all ? dead / all : 0;
}

/**
 * HAVEN_S3_INDEX_CACHE (a directory, or "off"), else $XDG_CACHE_HOME/haven/s3-index, else
 * ~/.cache/haven/s3-index; one folder per store, bucket and prefix.
 */
function indexCacheDir(s: S3Settings): string | undefined {
  const env = process.env.HAVEN_S3_INDEX_CACHE;
  if (env === 'off') return undefined;
  const base = env || join(process.env.XDG_CACHE_HOME || join(homedir(), '.cache'), 'haven', 's3-index');
  const id = createHash('sha256')
    .update(`${s.endpoint}\n${s.bucket}\n${s.prefix}`)
    .digest('hex')
    .slice(0, 32);
  return join(base, id);
}

/** The first entry at or after `offset` (entries by offset). */
function firstAt(entries: readonly PackEntry[], offset: number): number {
  let lo = 0;
  let hi = entries.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (entries[mid]!.offset < offset) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/** Opens and checks an s3:// repository's backend (repository.ts imports this module only then). */
export async function openS3Backend(
  url: string,
  opts: { endpoint?: string; needLock?: boolean },
): Promise<RetainingBackend> {
  const b = new S3Backend(s3Settings(url, opts.endpoint !== undefined ? { endpoint: opts.endpoint } : {}));
  try {
    await b.connect(opts.needLock ? { needLock: true } : {});
  } catch (err) {
    b.close();
    throw err;
  }
  return b;
}
