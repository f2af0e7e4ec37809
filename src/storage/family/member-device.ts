import type { BlockDevice, BlockSizes, Extent, WriteFlags, ZeroFlags } from '../../block/index.js';
import { HavenError } from '../../common/index.js';
import type { VolumeFamily } from './family.js';

/** Reads of a snapshot at least this large go to the thread pool (VolumeFamily.readAsync). */
const ASYNC_READ = 128 * 1024;

/**
 * A volume, snapshot or clone of a family as a BlockDevice. Synchronous (every call completes
 * before it returns, so the NBD server answers without a promise per request) — except large
 * reads of a snapshot, a backup's: from a cold disk each would hold the event loop, and with it
 * every guest's I/O, for the disk's time; they run on the thread pool, several at once.
 */
export class MemberDevice implements BlockDevice {
  readonly blockSizes: BlockSizes = { minimum: 1, preferred: 4096, maximum: 32 * 1024 * 1024 };
  /** A flush commits the whole family, whichever handle it came through. */
  readonly flushCoversAll = true;
  readonly readOnly: boolean;
  private readonly snapshot: boolean;
  private closed = false;

  constructor(
    private readonly family: VolumeFamily,
    readonly id: string,
    readOnly = false,
  ) {
    const rec = family.find(id);
    if (!rec) throw new HavenError('NOT_FOUND', `no member ${id}`);
    this.snapshot = rec.kind === 'snapshot';
    this.readOnly = readOnly || this.snapshot;
  }

  get size(): number {
    return this.family.find(this.id)?.size ?? 0;
  }

  read(buf: Uint8Array, offset: number): void | Promise<void> {
    this.open();
    if (this.snapshot && buf.length >= ASYNC_READ) return this.family.readAsync(this.id, buf, offset);
    this.family.read(this.id, buf, offset);
  }

  write(data: Uint8Array | readonly Uint8Array[], offset: number, flags?: WriteFlags): void {
    this.writable();
    this.family.write(this.id, data, offset);
    if (flags?.fua) this.family.commit();
  }

  flush(): void {
    this.open();
    this.family.commit();
  }

  writeBack(): Promise<void> {
    this.open();
    return this.family.writeBack();
  }

  trim(offset: number, length: number, flags?: WriteFlags): void {
    this.writeZeroes(offset, length, flags);
  }

  writeZeroes(offset: number, length: number, flags?: ZeroFlags): void {
    this.writable();
    // Unmapping whole clusters is a metadata change: always fast, so fastZero is honoured.
    this.family.zero(this.id, offset, length, flags?.noHole === true);
    if (flags?.fua) this.family.commit();
  }

  blockStatus(offset: number, length: number): Extent[] {
    this.open();
    return this.family.status(this.id, offset, length);
  }

  close(): void {
    this.closed = true;
  }

  private open(): void {
    if (this.closed) throw new HavenError('CONFLICT', `volume device ${this.id} is closed`);
  }

  private writable(): void {
    this.open();
    if (this.readOnly)
      throw new HavenError('READ_ONLY', `${this.family.find(this.id)?.name ?? this.id} is read-only`);
  }
}
