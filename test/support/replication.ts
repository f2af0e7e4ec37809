import { strict as assert } from 'node:assert';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { DirtyBitmap } from '../../src/block/index.js';
import { GroupRecorder, ReplicationJournal } from '../../src/protection/index.js';
import { StorageService, type TapDevice } from '../../src/storage/index.js';

export const MiB = 1024 * 1024;
const BLOCK = 4096;
export const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

/**
 * A source site's consistency group for tests: a StorageService with volumes `names`, a
 * recorder on their taps and its journal, and a seeded writer that keeps the image each
 * checkpoint must show (hashed per volume).
 */
export class SourceGroup {
  readonly storage: StorageService;
  readonly journal: ReplicationJournal;
  readonly recorder: GroupRecorder;
  readonly taps: TapDevice[];
  /** Checkpoint sequence → the hash of each volume at it. */
  readonly expected = new Map<number, string[]>();
  private readonly images: Buffer[];
  private seed: number;
  private written = 0;

  constructor(
    dir: string,
    readonly names: string[],
    readonly size: number,
    opts: { seed?: number; segmentBytes?: number; maxBytes?: number; recording?: boolean } = {},
  ) {
    this.storage = StorageService.open(join(dir, 'source'));
    this.storage.createPool('p', {});
    for (const v of names) this.storage.createVolume(v, size, 'p');
    this.journal = ReplicationJournal.open(join(dir, 'source-journal'), {
      segmentBytes: opts.segmentBytes ?? MiB,
      ...(opts.maxBytes ? { maxBytes: opts.maxBytes } : {}),
    });
    this.taps = names.map((v) => this.storage.tap(v));
    this.recorder = new GroupRecorder(
      this.journal,
      this.taps.map((tap) => ({ tap, overflow: new DirtyBitmap('overflow', size, BLOCK) })),
    );
    if (opts.recording !== false) this.recorder.start();
    this.images = names.map(() => Buffer.alloc(size));
    this.seed = opts.seed ?? 11;
  }

  private rnd(n: number): number {
    this.seed = (Math.imul(this.seed, 1103515245) + 12345) & 0x7fffffff;
    return (this.seed >>> 4) % n;
  }

  /** `count` random writes (some zeroes) of 4–32 KiB over the volumes. */
  async write(count: number, opts: { compressible?: boolean } = {}): Promise<void> {
    for (let i = 0; i < count; i++) {
      const k = this.written++;
      const v = this.rnd(this.names.length);
      const off = this.rnd(this.size / BLOCK) * BLOCK;
      const end = Math.min(this.size, off + BLOCK * (1 + this.rnd(8)));
      if (this.rnd(8) === 0) {
        await this.taps[v]!.writeZeroes(off, end - off);
        this.images[v]!.fill(0, off, end);
      } else {
        const data = Buffer.alloc(end - off, (k % 251) + 1);
        if (!opts.compressible)
          for (let j = 0; j < data.length; j += 4) data.writeUInt32LE((k * 2654435761 + j * 40503) >>> 0, j);
        data.writeUInt32LE(k, 0);
        await this.taps[v]!.write(data, off);
        data.copy(this.images[v]!, off);
      }
    }
  }

  /** Starts the recorder (made with `recording: false`: the writes before went unjournaled). */
  startRecording(): void {
    this.recorder.start();
  }

  /** One 4 KiB write at `offset` of volume `v` (a guest write aimed at a range). */
  async writeAt(v: number, offset: number): Promise<void> {
    const data = Buffer.alloc(BLOCK, 0xee);
    data.writeUInt32LE(this.written++, 0);
    await this.taps[v]!.write(data, offset);
    data.copy(this.images[v]!, offset);
  }

  /** A checkpoint; remembers what the volumes hold at it. */
  checkpoint(name?: string): number {
    const seq = this.recorder.checkpoint(name)!;
    this.expected.set(seq, this.images.map(sha));
    return seq;
  }

  async close(): Promise<void> {
    this.recorder.stop();
    await this.journal.close();
    this.storage.close();
  }
}

/** The hash of each replica volume (`prefix` + name) at a snapshot. */
export async function snapshotHashes(
  storage: StorageService,
  volumes: string[],
  snapshot: string,
  size: number,
): Promise<string[]> {
  const out: string[] = [];
  for (const v of volumes) {
    const b = Buffer.alloc(size);
    await storage.openDevice(`${v}@${snapshot}`).read(b, 0);
    out.push(sha(b));
  }
  return out;
}

/** Copies what `to` lacks from `from`, record for record, with the same sequences (the transceiver's job, in-process). */
export function ship(from: ReplicationJournal, to: ReplicationJournal): void {
  const scratch = Buffer.alloc(MiB);
  for (let batch = from.read(to.nextSeq, scratch); batch.length; batch = from.read(to.nextSeq, scratch))
    for (const r of batch) assert.equal(to.append(r.kind, r.volume, r.offset, r.length, [r.payload]), r.seq);
}
