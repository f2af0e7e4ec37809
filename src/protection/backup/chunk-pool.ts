import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import { HavenError, type HavenErrorCode } from '../../common/index.js';
import type { RepositoryKeys } from '../../repository/index.js';
import type { WorkerReply, WorkerRequest } from './chunk-worker.js';

export type Encoded = { zero: true } | { zero: false; digest: Buffer; stored: Buffer };

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

  constructor(
    keys: RepositoryKeys | undefined,
    readonly slotSize: number,
    opts: { workers?: number; slots?: number } = {},
  ) {
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
        },
      });
      w.on('message', (r: WorkerReply) => this.onReply(i, r));
      w.on('error', (e) => this.fail(e));
      this.workers.push(w);
      this.inFlight.push(0);
    }
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

  async encode(slot: number, length: number): Promise<Encoded> {
    const r = await this.send({ op: 'encode', seq: 0, slot, length });
    if ('zero' in r)
      return r.zero
        ? { zero: true }
        : {
            zero: false,
            digest: Buffer.from(r.digest.buffer, r.digest.byteOffset, r.digest.byteLength),
            stored: Buffer.from(r.stored.buffer, r.stored.byteOffset, r.stored.byteLength),
          };
    throw new HavenError('INTERNAL', 'chunk worker gave no encoding');
  }

  /** Decodes a stored chunk into `slot`, checked against `digest`; returns its length. */
  async decode(slot: number, stored: Buffer, digest: Buffer): Promise<number> {
    const r = await this.send({ op: 'decode', seq: 0, slot, stored, digest });
    if ('decoded' in r) return r.decoded;
    throw new HavenError('INTERNAL', 'chunk worker gave no decoding');
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
