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
// - Object Lock: with `retention` set, chunks and a snapshot's index and manifest are written with
//   a retain-until date (single PUTs: RGW ignores lock headers on multipart uploads, which this
//   never uses); extendRetention() lengthens an existing object's.
// Every request has a connection and a request timeout and is retried with backoff (the SDK's
// standard retry strategy); at most `maxSockets` requests are in flight.
import { createHash } from 'node:crypto';
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
import { HavenError } from '../common/errors.js';
import type { ObjectInfo, RepositoryBackend } from './backend.js';
import { s3Settings, type Retention, type RetainingBackend, type S3Settings } from './s3-settings.js';

/** Requests in flight at once, per backend. */
const MAX_SOCKETS = 32;
/** Deletes and HEADs done side by side by the bulk helpers. */
const PARALLEL = 16;

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
  /**
   * The chunks the bucket holds, listed once per session (one LIST per 1000 chunks instead of a
   * HEAD per chunk) and kept up to date with what this instance writes and deletes. Dropped at
   * each session's start (forget()): a gc elsewhere may have run in between. About 150 bytes a chunk.
   */
  private chunks: Set<string> | undefined;
  private listing: Promise<Set<string>> | undefined;

  constructor(private readonly settings: S3Settings) {
    this.bucket = settings.bucket;
    this.prefix = settings.prefix;
    this.location = `s3://${settings.bucket}/${settings.prefix.replace(/\/$/, '')}`;
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

  async read(key: string): Promise<Buffer> {
    const out = await this.call(
      'read',
      () => this.client.send(new GetObjectCommand({ Bucket: this.bucket, Key: this.k(key) })),
      key,
    );
    return Buffer.from(await out.Body!.transformToByteArray());
  }

  /** Whether `key` takes retention: the objects a snapshot is made of. */
  private retained(key: string): boolean {
    return (
      !!this.retention &&
      (key.startsWith('chunks/') || /^snapshots\/[^/]+\/(manifest\.json|disk\d+\.idx)$/.test(key))
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
    const body = data instanceof Uint8Array ? data : Buffer.concat(data);
    const input: PutObjectCommandInput = {
      Bucket: this.bucket,
      Key: this.k(key),
      Body: body,
      ContentLength: body.length,
    };
    if (this.retained(key)) {
      const until = this.retainUntil();
      input.ObjectLockMode = this.retention!.mode;
      input.ObjectLockRetainUntilDate = until;
      input.ContentMD5 = createHash('md5').update(body).digest('base64'); // required with lock headers
      this.retainedUntil.set(key, until.getTime());
    }
    if (opts.exclusive && this.versioned === undefined) await this.connect();
    if (opts.exclusive && !this.versioned) input.IfNoneMatch = '*';
    const put = await this.call('write', () => this.client.send(new PutObjectCommand(input)), key);
    if (key.startsWith('chunks/')) this.chunks?.add(key);
    if (opts.exclusive && this.versioned) {
      const versions = await this.versionsOf(key);
      if (versions.length > 1 || (versions[0] && put.VersionId && versions[0].versionId !== put.VersionId)) {
        if (put.VersionId) await this.deleteVersion(key, put.VersionId).catch(() => undefined);
        throw new HavenError('CONFLICT', `${this.location}: ${key} already exists`);
      }
    }
  }

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
   */
  async delete(key: string): Promise<void> {
    this.chunks?.delete(key);
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

  async *list(prefix: string): AsyncIterable<ObjectInfo> {
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

  /** Whether the chunk is there (gc runs only while no backup writes: see the head of this file). */
  async claim(key: string): Promise<boolean> {
    if (key.startsWith('chunks/')) {
      this.listing ??= (async () => {
        const set = new Set<string>();
        for await (const o of this.list('chunks/')) set.add(o.key);
        return (this.chunks = set);
      })();
      const known = await this.listing;
      if (!known.has(key)) return false;
      if (!this.retention) return true;
    }
    const h = await this.head(key);
    if (h?.retainUntil !== undefined) this.retainedUntil.set(key, h.retainUntil);
    return !!h;
  }

  forget(): void {
    this.chunks = undefined;
    this.listing = undefined;
  }

  async deleteUnclaimed(key: string, cutoffMs: number): Promise<'deleted' | 'kept' | 'absent'> {
    const s = await this.stat(key);
    if (!s) return 'absent';
    if (s.mtimeMs >= cutoffMs) return 'kept';
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

  async sync(): Promise<void> {
    // A PUT is durable when it returns.
  }

  describe(): undefined {
    return undefined;
  }

  /**
   * Makes sure each object in `keys` is retained until at least `untilMs` (PutObjectRetention on
   * those that are not; a retention is only ever lengthened). Returns how many were extended.
   */
  async extendRetention(keys: Iterable<string>, untilMs: number): Promise<number> {
    if (!this.retention) return 0;
    const todo = [...keys].filter((k) => (this.retainedUntil.get(k) ?? 0) < untilMs);
    let extended = 0;
    let next = 0;
    const worker = async () => {
      while (next < todo.length) {
        const key = todo[next++]!;
        const h = await this.head(key);
        if (!h) throw new HavenError('CORRUPT', `${this.location}: ${key} is missing`);
        if ((h.retainUntil ?? 0) >= untilMs) {
          this.retainedUntil.set(key, h.retainUntil!);
          continue;
        }
        const until = this.retainUntil();
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
        this.retainedUntil.set(key, until.getTime());
        extended++;
      }
    };
    await Promise.all(Array.from({ length: Math.min(PARALLEL, todo.length) }, worker));
    return extended;
  }
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
