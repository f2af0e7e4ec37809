import { HavenError } from '../../common/index.js';
import { check, rbdError, request, type ImageHandle, type IoctxHandle, type NativeRbd } from './native.js';

export interface RbdSnapshot {
  id: number;
  name: string;
  size: number;
  createdAt: string;
}

/** One extent of a diff: `exists` false means it reads as zeroes now. */
export interface RbdDiffExtent {
  offset: number;
  length: number;
  exists: boolean;
}

/** At most this many buffers go to one rbd_aio_writev (the addon's MAX_IOV); more are joined. */
const MAX_IOV = 64;

/**
 * An open RBD image (or one of its snapshots, read-only): asynchronous I/O whose completions
 * arrive on the JS thread, and the image's control operations. `label` names it in errors.
 * close() waits for the requests in flight, then closes the image.
 */
export class RbdImage {
  private inflight = 0;
  private drained: (() => void) | undefined;
  private closing: Promise<void> | undefined;
  private cachedSize: number;

  private constructor(
    private readonly rbd: NativeRbd,
    private readonly handle: ImageHandle,
    readonly label: string,
    readonly readOnly: boolean,
    readonly id: string,
    readonly createdAt: string,
    readonly objectSize: number,
    size: number,
  ) {
    this.cachedSize = size;
  }

  static open(
    rbd: NativeRbd,
    io: IoctxHandle,
    name: string,
    opts: { snapshot?: string; readOnly?: boolean; label?: string } = {},
  ): RbdImage {
    const label = opts.label ?? (opts.snapshot ? `RBD image ${name}@${opts.snapshot}` : `RBD image ${name}`);
    const h = rbd.open(io, name, opts.snapshot ?? null, opts.readOnly ?? false);
    if (typeof h === 'number') throw rbdError(rbd, h, `cannot open ${label}`);
    const st = rbd.stat(h);
    if (typeof st === 'number') {
      rbd.close(h);
      throw rbdError(rbd, st, `cannot stat ${label}`);
    }
    const [size, id, created, objectSize] = st;
    return new RbdImage(
      rbd,
      h,
      label,
      !!opts.snapshot || !!opts.readOnly,
      id,
      new Date(created * 1000).toISOString(),
      objectSize,
      size,
    );
  }

  get size(): number {
    return this.cachedSize;
  }

  get isClosed(): boolean {
    return this.closing !== undefined;
  }

  // ---- data path ----------------------------------------------------------------------------

  read(buf: Uint8Array, offset: number): Promise<number> {
    return this.io((id) => this.rbd.read(this.handle, buf, offset, id), 'read', offset, buf.length);
  }

  write(data: readonly Uint8Array[], offset: number): Promise<number> {
    const bufs = data.length > MAX_IOV ? [Buffer.concat(data)] : data;
    return this.io((id) => this.rbd.writev(this.handle, bufs, offset, id), 'write', offset);
  }

  flush(): Promise<number> {
    return this.io((id) => this.rbd.flush(this.handle, id), 'flush');
  }

  discard(offset: number, length: number): Promise<number> {
    return this.io((id) => this.rbd.discard(this.handle, offset, length, id), 'discard', offset, length);
  }

  writeZeroes(offset: number, length: number, thick: boolean): Promise<number> {
    return this.io(
      (id) => this.rbd.writeZeroes(this.handle, offset, length, thick, id),
      'write zeroes',
      offset,
      length,
    );
  }

  /**
   * Extents changed since `fromSnapshot` (undefined: every allocated extent), within the range,
   * off the event loop. `wholeObject`: whole objects (fast with the object map; coarser).
   */
  async diff(
    offset: number,
    length: number,
    opts: { fromSnapshot?: string; wholeObject?: boolean; includeParent?: boolean } = {},
  ): Promise<RbdDiffExtent[]> {
    this.usable();
    this.began();
    try {
      const flat = await new Promise<Float64Array>((resolve, reject) =>
        this.rbd.diff(
          this.handle,
          opts.fromSnapshot ?? null,
          offset,
          length,
          opts.wholeObject ?? false,
          opts.includeParent ?? true,
          (err, ext) => (err < 0 ? reject(rbdError(this.rbd, err, `${this.label}: diff`)) : resolve(ext)),
        ),
      );
      const out: RbdDiffExtent[] = [];
      for (let i = 0; i + 2 < flat.length; i += 3)
        out.push({ offset: flat[i]!, length: flat[i + 1]!, exists: flat[i + 2] === 1 });
      return out;
    } finally {
      this.ended();
    }
  }

  /**
   * Bytes of the objects the image (with its parent's, for a clone) holds, on the calling thread:
   * the object map answers (fast-diff), a round trip to the OSDs.
   */
  allocatedBytes(): number {
    const flat = check(
      this.rbd,
      this.rbd.diffSync(this.usable(), null, 0, this.cachedSize, true, true),
      `${this.label}: allocated extents`,
    );
    let n = 0;
    for (let i = 0; i + 2 < flat.length; i += 3) if (flat[i + 2] === 1) n += flat[i + 1]!;
    return n;
  }

  // ---- control --------------------------------------------------------------------------------

  resize(size: number): void {
    this.control(this.rbd.resize(this.handle, size), `resize to ${size} bytes`);
    this.cachedSize = size;
  }

  snapshots(): RbdSnapshot[] {
    return check(this.rbd, this.rbd.snapList(this.usable()), `${this.label}: list snapshots`).map(
      ([id, name, size, created]) => ({ id, name, size, createdAt: new Date(created * 1000).toISOString() }),
    );
  }

  snapCreate(name: string): void {
    this.control(this.rbd.snapCreate(this.usable(), name), `create snapshot ${name}`);
  }

  snapRemove(name: string): void {
    this.control(this.rbd.snapRemove(this.usable(), name), `remove snapshot ${name}`);
  }

  snapRollback(name: string): void {
    this.control(this.rbd.snapRollback(this.usable(), name), `roll back to snapshot ${name}`);
  }

  /** The clone's origin: { pool, image, snapshot }, or undefined for an image that is no clone. */
  parent(): { pool: string; image: string; snapshot: string } | undefined {
    const p = check(this.rbd, this.rbd.parent(this.usable()), `${this.label}: parent`);
    return p ? { pool: p[0], image: p[1], snapshot: p[2] } : undefined;
  }

  /** Of an image opened at a snapshot: the clones made from it (not those in the trash). */
  children(): { pool: string; image: string }[] {
    return check(this.rbd, this.rbd.children(this.usable()), `${this.label}: list children`)
      .filter(([, , trash]) => !trash)
      .map(([pool, image]) => ({ pool, image }));
  }

  metadata(): Record<string, string> {
    const flat = check(this.rbd, this.rbd.metaList(this.usable()), `${this.label}: list metadata`);
    const out: Record<string, string> = {};
    for (let i = 0; i + 1 < flat.length; i += 2) out[flat[i]!] = flat[i + 1]!;
    return out;
  }

  setMetadata(key: string, value: string | undefined): void {
    const h = this.usable();
    const r = value === undefined ? this.rbd.metaRemove(h, key) : this.rbd.metaSet(h, key, value);
    if (r < 0 && !(value === undefined && r === -2))
      throw rbdError(this.rbd, r, `${this.label}: metadata ${key}`);
  }

  /** Closes the image at once; refused while requests are in flight (use close() to wait for them). */
  closeNow(): void {
    if (this.closing) return;
    if (this.inflight > 0) throw new HavenError('CONFLICT', `${this.label} has requests in flight`);
    this.closing = Promise.resolve();
    const r = this.rbd.close(this.handle);
    if (r < 0) throw rbdError(this.rbd, r, `cannot close ${this.label}`);
  }

  /** Waits for the requests in flight, then closes the image (once; later calls wait for it). */
  close(): Promise<void> {
    this.closing ??= (async () => {
      if (this.inflight > 0) await new Promise<void>((r) => (this.drained = r));
      const r = this.rbd.close(this.handle);
      if (r < 0) throw rbdError(this.rbd, r, `cannot close ${this.label}`);
    })();
    return this.closing;
  }

  // ---- internals ------------------------------------------------------------------------------

  /** One request; its error names the image, the operation and the range. */
  private io(issue: (id: number) => number, op: string, offset?: number, length?: number): Promise<number> {
    this.usable();
    this.began();
    const fail = (errno: number) =>
      rbdError(
        this.rbd,
        errno,
        `${this.label}: ${op}${length !== undefined ? ` of ${length} bytes` : ''}${offset !== undefined ? ` at ${offset}` : ''}`,
      );
    return request(this.rbd, issue, fail, this.settled);
  }

  private began(): void {
    this.inflight++;
  }

  private readonly settled = () => this.ended();

  private ended(): void {
    if (--this.inflight === 0 && this.drained) {
      const d = this.drained;
      this.drained = undefined;
      d();
    }
  }

  private control(r: number, what: string): void {
    if (r < 0) throw rbdError(this.rbd, r, `${this.label}: ${what}`);
  }

  private usable(): ImageHandle {
    if (this.closing) throw new HavenError('CONFLICT', `${this.label} is closed`);
    return this.handle;
  }
}
