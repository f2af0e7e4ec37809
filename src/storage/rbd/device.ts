import {
  EXTENT_HOLE,
  EXTENT_ZERO,
  checkRange,
  type BlockDevice,
  type BlockSizes,
  type Extent,
  type WriteFlags,
  type ZeroFlags,
} from '../../block/index.js';
import { HavenError } from '../../common/index.js';
import type { RbdImage } from './image.js';

/** Block status asks librbd about at most this much at once (whole objects, from the object map). */
const STATUS_SPAN = 1 << 30;

/**
 * An RBD image (a volume, or a snapshot read-only) as a BlockDevice: every request is an
 * asynchronous librbd request whose completion arrives on the JS thread. librbd runs without a
 * client cache (cluster.ts), so a write is on the OSDs when it completes: FUA is implied, and a
 * flush only confirms it. Block status comes from rbd_diff_iterate2 from nothing (whole objects:
 * the object map answers), so unwritten objects are holes that read as zeroes.
 *
 * The image may be shared by several devices (every handle of one volume): `owned` says whether
 * close() closes it.
 */
export class RbdDevice implements BlockDevice {
  readonly blockSizes: BlockSizes;
  /** One image handle per volume, every write durable at completion: a flush covers every handle. */
  readonly flushCoversAll = true;
  readonly readOnly: boolean;
  private closed = false;

  constructor(
    private readonly image: RbdImage,
    opts: { readOnly?: boolean; owned?: boolean } = {},
  ) {
    this.readOnly = image.readOnly || (opts.readOnly ?? false);
    this.owned = opts.owned ?? false;
    this.blockSizes = { minimum: 1, preferred: 4096, maximum: 32 * 1024 * 1024 };
  }

  private readonly owned: boolean;

  get size(): number {
    return this.image.size;
  }

  async read(buf: Uint8Array, offset: number): Promise<void> {
    this.range(offset, buf.length);
    if (buf.length === 0) return;
    const n = await this.image.read(buf, offset);
    if (n < buf.length) buf.fill(0, n);
  }

  async write(data: Uint8Array | readonly Uint8Array[], offset: number, flags?: WriteFlags): Promise<void> {
    void flags; // every completed write is durable (no client cache)
    const parts = Array.isArray(data) ? (data as readonly Uint8Array[]) : [data as Uint8Array];
    let length = 0;
    for (const p of parts) length += p.length;
    this.writable(offset, length);
    if (length === 0) return;
    await this.image.write(parts, offset);
  }

  async flush(): Promise<void> {
    this.open();
    if (this.readOnly) return;
    await this.image.flush();
  }

  async trim(offset: number, length: number, flags?: WriteFlags): Promise<void> {
    void flags;
    this.writable(offset, length);
    if (length === 0) return;
    // Reads as zeroes afterwards, also where the range covers part of an object (cluster.ts
    // turns off rbd_skip_partial_discard); whole objects are freed.
    await this.image.discard(offset, length);
  }

  async writeZeroes(offset: number, length: number, flags?: ZeroFlags): Promise<void> {
    this.writable(offset, length);
    if (length === 0) return;
    // librbd zeroes by discarding (fast), or allocates with noHole: fastZero is honoured either way.
    await this.image.writeZeroes(offset, length, flags?.noHole === true);
  }

  async blockStatus(offset: number, length: number): Promise<Extent[]> {
    this.range(offset, length);
    const end = Math.min(offset + Math.max(length, 1), this.size, offset + STATUS_SPAN);
    if (end <= offset) return [{ offset, length: Math.max(length, 0), flags: EXTENT_HOLE | EXTENT_ZERO }];
    const found = await this.image.diff(offset, end - offset, { wholeObject: true });
    const out: Extent[] = [];
    let at = offset;
    const push = (to: number, flags: number) => {
      if (to <= at) return;
      const last = out[out.length - 1];
      if (last && last.flags === flags) last.length += to - at;
      else out.push({ offset: at, length: to - at, flags });
      at = to;
    };
    for (const e of found) {
      const s = Math.max(e.offset, offset);
      const t = Math.min(e.offset + e.length, end);
      if (t <= at) continue;
      push(s, EXTENT_HOLE | EXTENT_ZERO);
      push(t, e.exists ? 0 : EXTENT_HOLE | EXTENT_ZERO);
    }
    push(end, EXTENT_HOLE | EXTENT_ZERO);
    return out;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.owned) await this.image.close();
  }

  private open(): void {
    if (this.closed || this.image.isClosed)
      throw new HavenError('CONFLICT', `${this.image.label}: the device is closed`);
  }

  private range(offset: number, length: number): void {
    this.open();
    checkRange(offset, length, this.size, this.image.label);
  }

  private writable(offset: number, length: number): void {
    this.range(offset, length);
    if (this.readOnly) throw new HavenError('READ_ONLY', `${this.image.label} is read-only`);
  }
}
