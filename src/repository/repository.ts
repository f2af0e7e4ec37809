import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { mkdirSync, existsSync, readdirSync, readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { resolve } from 'node:path';
import { HavenError, conflict, errorMessage, notFound } from '../common/index.js';
import { LocalBackend, type RepositoryBackend } from './backend.js';
import { ChunkCodec } from './chunk-codec.js';
import {
  DEFAULT_CHUNK_SIZE,
  DIGEST_BYTES,
  FORMAT_VERSION,
  ZERO_DIGEST,
  checkChunkSize,
  chunkKey,
  isTemporaryKey,
  readChunk,
  readIndex,
} from './format.js';
import { newEncryption, openEncryption, type EncryptionConfig, type RepositoryKeys } from './keys.js';
import { selectRetained, type RetentionPolicy } from './retention.js';

export interface RepositoryConfig {
  format: 'haven-repository';
  version: number;
  id: string;
  createdAt: string;
  chunkSize: number;
  encryption?: EncryptionConfig;
}

export interface DiskManifest {
  /** "disk0", … or the volume's name. */
  name: string;
  size: number;
  chunkSize: number;
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
}

export interface BackupStats {
  /** Bytes read from the source. */
  readBytes: number;
  /** Chunks of this snapshot that were not in the repository yet, and their stored bytes. */
  newChunks: number;
  storedBytes: number;
  /** Chunks found in the repository already (deduplicated) or taken from the parent. */
  reusedChunks: number;
  seconds: number;
}

export interface SnapshotInfo extends SnapshotManifest {
  protected: boolean;
}

interface SessionRecord {
  id: string;
  pid: number;
  host: string;
  /** The kernel's boot id: a record from an earlier boot is dead whatever its pid is now. */
  boot?: string;
  startedAt: number;
  parent?: string;
}

const CONFIG = 'config.json';
/** Where a rolling verify is up to. */
const ROLLING_CURSOR = 'state/verify-rolling.json';
/** Chunks younger than this before a GC began are kept even if unreferenced: writes may be in flight. */
const GC_GRACE_MS = 5 * 60 * 1000;

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

  /** The local directory chunk files live in, when the repository has one (see ChunkPool). */
  get chunkDirectory(): string | undefined {
    return this.backend.directory;
  }

  get encrypted(): boolean {
    return !!this.config.encryption;
  }

  static async init(
    path: string,
    opts: { chunkSize?: number; passphrase?: string } = {},
  ): Promise<Repository> {
    const dir = resolve(path);
    if (existsSync(dir) && readdirSync(dir).length > 0 && !existsSync(`${dir}/${CONFIG}`))
      throw conflict(`${dir} is not empty and not a Haven repository`);
    const chunkSize = opts.chunkSize ?? DEFAULT_CHUNK_SIZE;
    checkChunkSize(chunkSize);
    for (const d of ['', 'tmp', 'chunks', 'snapshots', 'sessions', 'locks'])
      mkdirSync(`${dir}/${d}`, { recursive: true, mode: 0o700 });
    const enc = opts.passphrase !== undefined ? newEncryption(opts.passphrase) : undefined;
    const config: RepositoryConfig = {
      format: 'haven-repository',
      version: FORMAT_VERSION,
      id: randomUUID(),
      createdAt: new Date().toISOString(),
      chunkSize,
      ...(enc ? { encryption: enc.config } : {}),
    };
    const backend = new LocalBackend(dir);
    try {
      await backend.write(CONFIG, Buffer.from(JSON.stringify(config, null, 2) + '\n'), { exclusive: true });
    } catch (err) {
      if (err instanceof HavenError && err.code === 'CONFLICT')
        throw conflict(`${dir} is already a Haven repository`);
      throw err;
    }
    return new Repository(backend, config, enc?.keys);
  }

  static async open(path: string, opts: { passphrase?: string } = {}): Promise<Repository> {
    const dir = resolve(path);
    const backend = new LocalBackend(dir);
    let config: RepositoryConfig;
    try {
      config = JSON.parse((await backend.read(CONFIG)).toString('utf8')) as RepositoryConfig;
    } catch (err) {
      if (err instanceof HavenError && err.code === 'NOT_FOUND')
        throw notFound(`${dir} is not a Haven repository (no ${CONFIG}; create one with "haven repo init")`);
      throw new HavenError('CORRUPT', `${dir}/${CONFIG} cannot be read: ${errorMessage(err)}`);
    }
    if (config.format !== 'haven-repository')
      throw new HavenError('CORRUPT', `${dir}/${CONFIG} is not a Haven repository's`);
    if (config.version > FORMAT_VERSION)
      throw new HavenError(
        'UNSUPPORTED',
        `repository ${dir} has format ${config.version}; this Haven reads up to ${FORMAT_VERSION}`,
      );
    let keys: RepositoryKeys | undefined;
    if (config.encryption) {
      if (opts.passphrase === undefined)
        throw new HavenError(
          'UNAUTHENTICATED',
          `repository ${dir} is encrypted: give its passphrase (HAVEN_PASSPHRASE or --passphrase-file)`,
        );
      keys = openEncryption(config.encryption, opts.passphrase);
    }
    return new Repository(backend, config, keys);
  }

  codec(): ChunkCodec {
    return new ChunkCodec(this.keys);
  }

  // ---- chunks ------------------------------------------------------------------------------

  /** Stores a chunk unless it is there; a chunk found is touched so a running GC keeps it. */
  async putChunk(digest: Buffer, stored: Uint8Array): Promise<boolean> {
    const key = chunkKey(digest);
    if (await this.backend.exists(key)) {
      await this.backend.touch(key);
      return false;
    }
    await this.backend.write(key, stored);
    return true;
  }

  async hasChunk(digest: Buffer): Promise<boolean> {
    const key = chunkKey(digest);
    if (!(await this.backend.exists(key))) return false;
    await this.backend.touch(key);
    return true;
  }

  getChunk(digest: Buffer): Promise<Buffer> {
    return this.backend.read(chunkKey(digest)).catch((err: unknown) => {
      if (err instanceof HavenError && err.code === 'NOT_FOUND')
        throw new HavenError(
          'CORRUPT',
          `chunk ${digest.toString('hex')} is missing from repository ${this.location}`,
        );
      throw err;
    });
  }

  // ---- sessions: what a running backup holds ------------------------------------------------

  /** Registers a running backup (GC keeps what it writes, prune keeps its parent). */
  async beginSession(parent?: string): Promise<{ id: string; end: () => Promise<void> }> {
    const rec: SessionRecord = {
      id: randomUUID(),
      pid: process.pid,
      host: hostname(),
      boot: bootId(),
      startedAt: Date.now(),
      ...(parent ? { parent } : {}),
    };
    // A backup that died may have left chunk files that never reached the disk whole; they are
    // checked before this backup could deduplicate against them.
    await this.activeSessions();
    await this.backend.write(`sessions/${rec.id}.json`, Buffer.from(JSON.stringify(rec)));
    return { id: rec.id, end: () => this.backend.delete(`sessions/${rec.id}.json`) };
  }

  private async activeSessions(): Promise<SessionRecord[]> {
    const out: SessionRecord[] = [];
    const dead: { key: string; rec: SessionRecord }[] = [];
    for await (const o of this.backend.list('sessions/')) {
      let rec: SessionRecord;
      try {
        rec = JSON.parse((await this.backend.read(o.key)).toString('utf8')) as SessionRecord;
      } catch {
        continue; // being written or removed
      }
      if (rec.host === hostname() && ((rec.boot && rec.boot !== bootId()) || !pidAlive(rec.pid)))
        dead.push({ key: o.key, rec }); // its backup died
      else out.push(rec);
    }
    if (dead.length) {
      // One pass over the chunks for all of them; their records go once it is done.
      await this.recoverDeadSessions(Math.min(...dead.map((d) => d.rec.startedAt)));
      for (const d of dead) await this.backend.delete(d.key);
    }
    return out;
  }

  /**
   * Checks the chunks dead backups may have written (those modified since the first began): a chunk
   * renamed into place but not yet flushed when the machine went down can be empty or torn after
   * the reboot, and a later backup must not deduplicate against it. Damaged ones are deleted; no
   * snapshot refers to them, since a manifest is written only after a filesystem sync.
   */
  private async recoverDeadSessions(startedAt: number): Promise<number> {
    let removed = 0;
    const since = startedAt - 2000; // mtime granularity and clock steps
    for await (const o of this.backend.list('chunks/')) {
      if (o.mtimeMs < since || isTemporaryKey(o.key)) continue; // temporaries: gc()
      try {
        readChunk(await this.backend.read(o.key), o.key);
      } catch (err) {
        if (err instanceof HavenError && err.code === 'NOT_FOUND') continue;
        await this.backend.delete(o.key);
        removed++;
      }
    }
    if (removed) await this.backend.sync();
    return removed;
  }

  // ---- snapshots ---------------------------------------------------------------------------

  newSnapshotId(): string {
    const t = new Date()
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
  async commitSnapshot(manifest: SnapshotManifest): Promise<void> {
    await this.backend.sync();
    await this.backend.write(
      `snapshots/${manifest.id}/manifest.json`,
      Buffer.from(JSON.stringify(manifest, null, 2) + '\n'),
      {
        exclusive: true,
      },
    );
  }

  async listSnapshots(): Promise<SnapshotInfo[]> {
    const out: SnapshotInfo[] = [];
    for await (const o of this.backend.list('snapshots/')) {
      if (!o.key.endsWith('/manifest.json')) continue;
      const id = o.key.split('/')[1]!;
      out.push(await this.snapshot(id));
    }
    return out.sort((a, b) => a.createdAt.localeCompare(b.createdAt) || a.id.localeCompare(b.id));
  }

  async snapshot(id: string): Promise<SnapshotInfo> {
    if (!/^[A-Za-z0-9-]+$/.test(id)) throw notFound(`no snapshot ${id}`);
    let m: SnapshotManifest;
    try {
      m = JSON.parse(
        (await this.backend.read(`snapshots/${id}/manifest.json`)).toString('utf8'),
      ) as SnapshotManifest;
    } catch (err) {
      if (err instanceof HavenError && err.code === 'NOT_FOUND')
        throw notFound(`no snapshot ${id} in repository ${this.location}`);
      throw new HavenError('CORRUPT', `snapshot ${id}: manifest cannot be read: ${errorMessage(err)}`);
    }
    if (!m.consistency) {
      m.consistency = 'crash';
      m.consistencyReason = 'not recorded (a backup made before Haven recorded consistency)';
    }
    return { ...m, protected: await this.backend.exists(`snapshots/${id}/protected`) };
  }

  /** A disk's chunk digests, checked against the hash the manifest recorded. */
  async readIndex(
    m: SnapshotManifest,
    disk: number,
  ): Promise<{ chunkSize: number; size: number; count: number; digests: Buffer }> {
    const d = m.disks[disk];
    if (!d) throw notFound(`snapshot ${m.id} has no disk ${disk}`);
    const data = await this.backend.read(d.index);
    if (createHash('sha256').update(data).digest('hex') !== d.indexSha256)
      throw new HavenError('CORRUPT', `snapshot ${m.id}: index of ${d.name} does not match its manifest`);
    return readIndex(data, `snapshot ${m.id} ${d.name}`);
  }

  async setProtected(id: string, on: boolean): Promise<void> {
    await this.snapshot(id);
    if (on) await this.backend.write(`snapshots/${id}/protected`, Buffer.from('protected\n'));
    else await this.backend.delete(`snapshots/${id}/protected`);
  }

  async deleteSnapshot(id: string): Promise<void> {
    const s = await this.snapshot(id);
    if (s.protected) throw conflict(`snapshot ${id} is protected`);
    const users = (await this.activeSessions()).filter((x) => x.parent === id);
    if (users.length) throw conflict(`snapshot ${id} is the base of a backup running now`);
    // The manifest goes first: from then on the snapshot does not exist.
    await this.backend.delete(`snapshots/${id}/manifest.json`);
    for await (const o of this.backend.list(`snapshots/${id}/`)) await this.backend.delete(o.key);
  }

  /** Deletes what the policy does not keep; returns what was kept (with why) and removed. */
  async prune(policy: RetentionPolicy, opts: { dryRun?: boolean; source?: string } = {}) {
    const all = (await this.listSnapshots()).filter((s) => !opts.source || s.source.name === opts.source);
    const keep = selectRetained(all, policy);
    const removed: string[] = [];
    for (const s of all)
      if (!keep.has(s.id)) {
        if (!opts.dryRun) await this.deleteSnapshot(s.id);
        removed.push(s.id);
      }
    return { kept: [...keep].map(([id, reasons]) => ({ id, reasons })), removed };
  }

  // ---- verify ------------------------------------------------------------------------------

  /**
   * Reads and checks every chunk the chosen snapshots use (each chunk once), and the indexes.
   * Damage is reported per snapshot with the disk and byte offsets that depend on it.
   */
  async verify(
    ids?: string[],
    opts: {
      onProgress?: (done: number, total: number) => void;
      concurrency?: number;
      /**
       * Check one slice of the chunks out of `rolling` per run (by digest), the next slice each
       * run, so that `rolling` runs check them all: a bounded verify for large repositories.
       */
      rolling?: number;
    } = {},
  ): Promise<VerifyReport> {
    let slice: { index: number; of: number } | undefined;
    if (opts.rolling !== undefined) {
      if (!Number.isInteger(opts.rolling) || opts.rolling < 1 || opts.rolling > 65536)
        throw new HavenError(
          'INVALID_ARGUMENT',
          `--rolling must be a whole number from 1 to 65536, not ${opts.rolling}`,
        );
      slice = { index: await this.rollingCursor(opts.rolling), of: opts.rolling };
    }
    const snaps = ids ? await Promise.all(ids.map((id) => this.snapshot(id))) : await this.listSnapshots();
    // digest → where it is used
    const uses = new Map<string, { snapshot: string; disk: string; offset: number }[]>();
    const damaged: VerifyReport['damaged'] = [];
    for (const s of snaps)
      for (let d = 0; d < s.disks.length; d++) {
        let idx;
        try {
          idx = await this.readIndex(s, d);
        } catch (err) {
          damaged.push({ snapshot: s.id, disk: s.disks[d]!.name, offsets: [], reason: errorMessage(err) });
          continue;
        }
        for (let i = 0; i < idx.count; i++) {
          const dg = idx.digests.subarray(i * DIGEST_BYTES, (i + 1) * DIGEST_BYTES);
          if (dg.equals(ZERO_DIGEST)) continue;
          if (slice && Math.floor((dg.readUInt16BE(0) * slice.of) / 65536) !== slice.index) continue;
          const hex = dg.toString('hex');
          let list = uses.get(hex);
          if (!list) uses.set(hex, (list = []));
          list.push({ snapshot: s.id, disk: s.disks[d]!.name, offset: i * idx.chunkSize });
        }
      }
    const codec = this.codec();
    const bad = new Map<string, string>();
    const digests = [...uses.keys()];
    let next = 0;
    let done = 0;
    let bytes = 0;
    const worker = async () => {
      while (next < digests.length) {
        const hex = digests[next++]!;
        const digest = Buffer.from(hex, 'hex');
        try {
          const stored = await this.getChunk(digest);
          bytes += codec.decode(stored, digest).length;
        } catch (err) {
          bad.set(hex, errorMessage(err));
        }
        opts.onProgress?.(++done, digests.length);
      }
    };
    await Promise.all(Array.from({ length: opts.concurrency ?? 4 }, worker));
    const bySnap = new Map<string, { snapshot: string; disk: string; offsets: number[]; reason: string }>();
    for (const [hex, reason] of bad)
      for (const u of uses.get(hex)!) {
        const k = `${u.snapshot}/${u.disk}`;
        let e = bySnap.get(k);
        if (!e) bySnap.set(k, (e = { snapshot: u.snapshot, disk: u.disk, offsets: [], reason }));
        e.offsets.push(u.offset);
      }
    for (const e of bySnap.values()) damaged.push({ ...e, offsets: e.offsets.sort((a, b) => a - b) });
    if (slice)
      await this.backend.write(
        ROLLING_CURSOR,
        Buffer.from(JSON.stringify({ of: slice.of, next: (slice.index + 1) % slice.of }) + '\n'),
      );
    return {
      ...(slice ? { slice } : {}),
      snapshots: snaps.map((s) => s.id),
      chunks: digests.length,
      bytes,
      damagedChunks: bad.size,
      damaged,
    };
  }

  /** The slice a rolling verify checks next (restarting at 0 when the number of slices changes). */
  private async rollingCursor(of: number): Promise<number> {
    try {
      const c = JSON.parse((await this.backend.read(ROLLING_CURSOR)).toString('utf8')) as {
        of: number;
        next: number;
      };
      return c.of === of && Number.isInteger(c.next) && c.next >= 0 && c.next < of ? c.next : 0;
    } catch {
      return 0;
    }
  }

  // ---- garbage collection --------------------------------------------------------------------

  /**
   * Two phases, as Proxmox Backup Server does: mark every chunk the snapshots (and the bases of
   * running backups) reference, then delete unmarked chunks older than the cutoff — the start of
   * this GC or of the oldest running backup, whichever is earlier, less a grace period. A backup
   * that reuses a chunk touches it, so a chunk a running backup is about to reference is never
   * older than the cutoff. Also removes the indexes of backups that died before their manifest.
   */
  async gc(opts: { graceMs?: number } = {}): Promise<GcReport> {
    const lock = 'locks/gc';
    try {
      await this.backend.write(lock, Buffer.from(JSON.stringify({ pid: process.pid, host: hostname() })), {
        exclusive: true,
      });
    } catch (err) {
      if (!(err instanceof HavenError && err.code === 'CONFLICT')) throw err;
      const holder = JSON.parse((await this.backend.read(lock)).toString('utf8')) as {
        pid: number;
        host: string;
      };
      if (holder.host === hostname() && !pidAlive(holder.pid)) {
        await this.backend.delete(lock);
        return this.gc(opts);
      }
      throw conflict(
        `garbage collection is already running on repository ${this.location} (process ${holder.pid} on ${holder.host})`,
      );
    }
    try {
      const started = Date.now();
      const sessions = await this.activeSessions();
      const oldest = Math.min(started, ...sessions.map((s) => s.startedAt));
      const cutoff = oldest - (opts.graceMs ?? GC_GRACE_MS);
      const marked = new Set<string>();
      const snaps = await this.listSnapshots();
      const live = new Set(snaps.map((s) => s.id));
      for (const s of snaps)
        for (let d = 0; d < s.disks.length; d++) {
          const idx = await this.readIndex(s, d);
          for (let i = 0; i < idx.count; i++)
            marked.add(idx.digests.subarray(i * DIGEST_BYTES, (i + 1) * DIGEST_BYTES).toString('hex'));
        }
      let removedChunks = 0;
      let removedBytes = 0;
      let keptChunks = 0;
      let keptBytes = 0;
      for await (const o of this.backend.list('chunks/')) {
        const hex = o.key.slice(o.key.lastIndexOf('/') + 1);
        if (marked.has(hex) || o.mtimeMs >= cutoff) {
          keptChunks++;
          keptBytes += o.size;
          continue;
        }
        await this.backend.delete(o.key);
        removedChunks++;
        removedBytes += o.size;
      }
      // (Unmarked chunks include the temporary chunk files of backups that died.)
      // Indexes of backups that died before their manifest, and temporary files.
      let removedPartial = 0;
      const partial = new Set<string>();
      for await (const o of this.backend.list('snapshots/')) {
        const id = o.key.split('/')[1]!;
        if (!live.has(id) && o.mtimeMs < cutoff) partial.add(o.key);
      }
      for (const key of partial) {
        await this.backend.delete(key);
        removedPartial++;
      }
      for await (const o of this.backend.list('tmp/'))
        if (o.mtimeMs < cutoff) await this.backend.delete(o.key);
      return {
        removedChunks,
        removedBytes,
        keptChunks,
        keptBytes,
        removedPartial,
        seconds: (Date.now() - started) / 1000,
      };
    } finally {
      await this.backend.delete(lock);
    }
  }

  async stats(): Promise<RepositoryStats> {
    let chunks = 0;
    let storedBytes = 0;
    for await (const o of this.backend.list('chunks/')) {
      if (isTemporaryKey(o.key)) continue;
      chunks++;
      storedBytes += o.size;
    }
    const snaps = await this.listSnapshots();
    const logicalBytes = snaps.reduce((n, s) => n + s.disks.reduce((m, d) => m + d.size, 0), 0);
    return {
      location: this.location,
      encrypted: this.encrypted,
      chunkSize: this.config.chunkSize,
      snapshots: snaps.length,
      chunks,
      storedBytes,
      logicalBytes,
      ratio: storedBytes ? logicalBytes / storedBytes : 0,
    };
  }
}

export interface VerifyReport {
  /** A rolling verify: the slice of the chunks this run checked (the next run checks the next). */
  slice?: { index: number; of: number };
  snapshots: string[];
  chunks: number;
  bytes: number;
  damagedChunks: number;
  /** Per damaged snapshot and disk: the byte offsets whose data is lost, and why. */
  damaged: { snapshot: string; disk: string; offsets: number[]; reason: string }[];
}

export interface GcReport {
  removedChunks: number;
  removedBytes: number;
  keptChunks: number;
  keptBytes: number;
  removedPartial: number;
  seconds: number;
}

export interface RepositoryStats {
  location: string;
  encrypted: boolean;
  chunkSize: number;
  snapshots: number;
  chunks: number;
  storedBytes: number;
  /** Sum of the disk sizes of all snapshots (what full copies would take). */
  logicalBytes: number;
  ratio: number;
}

let boot: string | undefined;
function bootId(): string {
  try {
    boot ??= readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
  } catch {
    boot = '';
  }
  return boot;
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}
