import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import { HavenError, type HavenErrorCode } from '../../common/index.js';
import type { BackendDescription, ChunkKeys } from '../../repository/index.js';
import type { WorkerReply, WorkerRequest } from './chunk-worker.js';

export type Hashed = { zero: true } | { zero: false; digest: Buffer };
export interface Stored {
  /** The chunk was in the repository already (it was touched, not written). */
  existed: boolean;
  storedBytes: number;
  /** The stored form, when the workers have no backend of their own (the caller writes it). */
  stored?: Buffer;
}

export interface ChunkPoolOptions {
  workers?: number;
  slots?: number;
  /**
   * The repository's backend, as a worker can open it (RepositoryBackend.describe): workers then
   * read and write chunks through their own instance. Absent: they only encode and decode.
   */
  backend?: BackendDescription;
}

interface Pending {
  resolve: (r: WorkerReply) => void;
  reject: (e: Error) => void;
  worker: number;
}

/**
 * Worker threads that encode (hash, compress, encrypt) and decode chunks, and the shared arena
 * of chunk-sized slots they work on. The main thread reads a chunk straight into a slot, so
 * nothing is copied on the way in; the number of slots bounds memory whatever the disk size,
 * and waiting for a free slot is the pipeline's backpressure.
 */
export class ChunkPool {
  private readonly workers: Worker[] = [];
  private readonly inFlight: number[] = [];
  private readonly pending = new Map<number, Pending>();
  private readonly arena: SharedArrayBuffer;
  private readonly view: Buffer;
  private readonly free: number[] = [];
  private readonly waiters: ((slot: number) => void)[] = [];
  private seq = 0;
  private failed: Error | undefined;

  /** Whether the workers read and write the repository themselves (through their own backend). */
  readonly ownBackend: boolean;

  constructor(
    keys: ChunkKeys | undefined,
    readonly slotSize: number,
    opts: ChunkPoolOptions = {},
  ) {
    this.ownBackend = !!opts.backend;
    const n = opts.workers ?? Math.max(1, availableParallelism());
    const slots = opts.slots ?? n * 6;
    this.arena = new SharedArrayBuffer(slotSize * slots);
    this.view = Buffer.from(this.arena);
    for (let i = 0; i < slots; i++) this.free.push(i);
    for (let i = 0; i < n; i++) {
      const w = new Worker(new URL('./chunk-worker.js', import.meta.url), {
        workerData: {
          arena: this.arena,
          slotSize,
          ...(keys ? { keys: { id: keys.id, data: keys.data } } : {}),
          ...(opts.backend ? { backend: opts.backend } : {}),
        },
      });
      w.on('message', (r: WorkerReply) => this.onReply(i, r));
      w.on('error', (e) => this.fail(e));
      this.workers.push(w);
      this.inFlight.push(0);
    }
  }

  private backups = 0;

  /** A number for a backup starting on this pool: what `put` remembered for another is forgotten. */
  newBackup(): number {
    return ++this.backups;
  }

  /** A free slot; waits while all are in use. */
  acquire(): Promise<number> {
    if (this.failed) return Promise.reject(this.failed);
    const s = this.free.pop();
    if (s !== undefined) return Promise.resolve(s);
    return new Promise((r) => this.waiters.push(r));
  }

  release(slot: number): void {
    const w = this.waiters.shift();
    if (w) w(slot);
    else this.free.push(slot);
  }

  buffer(slot: number, length = this.slotSize): Buffer {
    return this.view.subarray(slot * this.slotSize, slot * this.slotSize + length);
  }

  /** The digest of the chunk in `slot`, or that it is all zeroes. */
  async hash(slot: number, length: number): Promise<Hashed> {
    const r = await this.send({ op: 'hash', seq: 0, slot, length });
    if (!('zero' in r)) throw new HavenError('INTERNAL', 'chunk worker gave no digest');
    return r.zero ? r : { zero: false, digest: toBuffer(r.digest) };
  }

  /**
   * The digest of the chunk in `slot` (or that it is all zeroes) and, when the workers reach the repository's backend (ownBackend),
   * the chunk stored unless it was there already: `stored` says which. Without `stored` the caller stores it (see `store`). `backup` (see newBackup) scopes what
   * the workers remember having stored.
   */
  async put(slot: number, length: number, backup: number): Promise<Hashed & { stored?: Stored }> {
    const r = await this.send({ op: 'put', seq: 0, slot, length, backup });
    if (!('zero' in r)) throw new HavenError('INTERNAL', 'chunk worker gave no digest');
    if (r.zero) return r;
    const digest = toBuffer(r.digest);
    return r.existed === undefined
      ? { zero: false, digest }
      : { zero: false, digest, stored: { existed: r.existed, storedBytes: r.storedBytes ?? 0 } };
  }

  /** Compresses, encrypts and (ownBackend) writes the chunk in `slot` unless it exists. */
  async store(slot: number, length: number, digest: Buffer): Promise<Stored> {
    const r = await this.send({ op: 'store', seq: 0, slot, length, digest: small(digest) });
    if (!('existed' in r) || 'zero' in r) throw new HavenError('INTERNAL', 'chunk worker did not store');
    return {
      existed: r.existed,
      storedBytes: r.storedBytes,
      ...(r.stored ? { stored: toBuffer(r.stored) } : {}),
    };
  }

  /**
   * Decodes a chunk into `slot`, checked against `digest`; returns its length. The worker reads
   * it through its backend unless `stored` is given.
   */
  async load(slot: number, digest: Buffer, stored?: Buffer): Promise<number> {
    const r = await this.send({
      op: 'load',
      seq: 0,
      slot,
      digest: small(digest),
      // A view (a chunk of a pack read in one GET with its neighbours) is copied alone: a message
      // would clone its whole backing buffer.
      ...(stored ? { stored: stored.byteLength === stored.buffer.byteLength ? stored : small(stored) } : {}),
    });
    if (!('loaded' in r)) throw new HavenError('INTERNAL', 'chunk worker did not load');
    return r.loaded;
  }

  async close(): Promise<void> {
    await Promise.all(this.workers.map((w) => w.terminate()));
  }

  private send(req: WorkerRequest): Promise<WorkerReply> {
    if (this.failed) return Promise.reject(this.failed);
    const seq = ++this.seq;
    let best = 0;
    for (let i = 1; i < this.workers.length; i++) if (this.inFlight[i]! < this.inFlight[best]!) best = i;
    this.inFlight[best]!++;
    return new Promise<WorkerReply>((resolve, reject) => {
      this.pending.set(seq, { resolve, reject, worker: best });
      this.workers[best]!.postMessage({ ...req, seq });
    }).then((r) => {
      if ('error' in r) throw new HavenError((r.code as HavenErrorCode | undefined) ?? 'INTERNAL', r.error);
      return r;
    });
  }

  private onReply(worker: number, r: WorkerReply): void {
    const p = this.pending.get(r.seq);
    if (!p) return;
    this.pending.delete(r.seq);
    this.inFlight[worker]!--;
    p.resolve(r);
  }

  private fail(e: Error): void {
    this.failed = new HavenError('INTERNAL', `a chunk worker failed: ${e.message}`);
    for (const p of this.pending.values()) p.reject(this.failed);
    this.pending.clear();
  }
}

function toBuffer(u: Uint8Array): Buffer {
  return Buffer.from(u.buffer, u.byteOffset, u.byteLength);
}

/**
 * A copy of a digest in its own small buffer: a message clones a view's whole backing buffer
 * (an index of thousands of digests, or Node's 8 KiB pool), not just the view.
 */
function small(digest: Uint8Array): Uint8Array {
  return new Uint8Array(digest);
}
