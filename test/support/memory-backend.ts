// A repository backend that keeps its objects in this process's memory and counts the calls made
// to it: a second implementation of RepositoryBackend beside the local directory, for tests that
// prove every byte of a repository passes through the backend (nothing reaches a disk, so any
// write around it would leave the repository incomplete). Not describable: chunk workers only
// encode and decode, and the main thread moves the bytes through this instance.
import { HavenError } from '../../src/common/index.js';
import type { ObjectInfo, RepositoryBackend } from '../../src/repository/index.js';

interface Obj {
  data: Buffer;
  mtimeMs: number;
}

export class MemoryBackend implements RepositoryBackend {
  readonly location = 'memory:test';
  readonly objects = new Map<string, Obj>();
  /** Calls per method, and bytes written per key prefix ("chunks", "snapshots", …). */
  readonly calls: Record<string, number> = {};
  readonly written: Record<string, number> = {};

  private count(op: string): void {
    this.calls[op] = (this.calls[op] ?? 0) + 1;
  }

  /** The bytes of every object whose key starts with `prefix`. */
  bytes(prefix = ''): number {
    let n = 0;
    for (const [k, o] of this.objects) if (k.startsWith(prefix)) n += o.data.length;
    return n;
  }

  async read(key: string): Promise<Buffer> {
    this.count('read');
    const o = this.objects.get(key);
    if (!o) throw new HavenError('NOT_FOUND', `${this.location}: no object ${key}`);
    return Buffer.from(o.data);
  }

  async write(
    key: string,
    data: Uint8Array | readonly Uint8Array[],
    opts: { exclusive?: boolean } = {},
  ): Promise<void> {
    this.count('write');
    if (opts.exclusive && this.objects.has(key))
      throw new HavenError('CONFLICT', `${this.location}: ${key} already exists`);
    const buf = Buffer.concat(data instanceof Uint8Array ? [data] : data);
    this.objects.set(key, { data: buf, mtimeMs: Date.now() });
    const top = key.split('/')[0]!;
    this.written[top] = (this.written[top] ?? 0) + buf.length;
  }

  async exists(key: string): Promise<boolean> {
    this.count('exists');
    return this.objects.has(key);
  }

  async stat(key: string): Promise<ObjectInfo | undefined> {
    this.count('stat');
    const o = this.objects.get(key);
    return o ? { key, size: o.data.length, mtimeMs: o.mtimeMs } : undefined;
  }

  async delete(key: string): Promise<void> {
    this.count('delete');
    this.objects.delete(key);
  }

  async *list(prefix: string): AsyncIterable<ObjectInfo> {
    this.count('list');
    for (const [key, o] of [...this.objects])
      if (key.startsWith(prefix)) yield { key, size: o.data.length, mtimeMs: o.mtimeMs };
  }

  async claim(key: string): Promise<boolean> {
    this.count('claim');
    const o = this.objects.get(key);
    if (!o) return false;
    o.mtimeMs = Date.now();
    return true;
  }

  async deleteUnclaimed(key: string, cutoffMs: number): Promise<'deleted' | 'kept' | 'absent'> {
    this.count('deleteUnclaimed');
    const o = this.objects.get(key);
    if (!o) return 'absent';
    if (o.mtimeMs >= cutoffMs) return 'kept';
    this.objects.delete(key);
    return 'deleted';
  }

  async putBack(): Promise<void> {
    this.count('putBack');
  }

  async sync(): Promise<void> {
    this.count('sync');
  }
}
