import {
  closeSync,
  fstatSync,
  fsyncSync,
  ftruncateSync,
  openSync,
  readSync,
  statSync,
  writeSync,
} from 'node:fs';
import { HavenError, fromSystemError, invalidArgument, outOfRange } from '../../common/index.js';
import { DEFAULT_BLOCK_SIZES, type BlockDevice, type BlockSizes, type Extent } from '../../block/index.js';
import { connectNbd, isNbdUri, type TlsCredentials } from '../../nbd/index.js';

/**
 * The ends of `haven nbd copy` and `haven nbd info`: an NBD URI, a local file (raw) or `null:`
 * (a sink that drops what it is given, to measure a source).
 *
 * TODO(raw-file): local files use the small synchronous device below until src/block/raw-file.ts
 * lands; then openEndpoint switches to openRawFile (which also knows SEEK_HOLE extents).
 */
export interface EndpointOptions {
  tls?: TlsCredentials;
  /** NBD connections per endpoint (used only when the server allows several). */
  connections?: number;
}

export interface Endpoint {
  device: BlockDevice;
  /** What the user named it. */
  name: string;
  kind: 'nbd' | 'file' | 'null';
  /** Reads as zeroes everywhere (a file created or truncated by us): zero ranges need no writes. */
  fresh: boolean;
}

export async function openSource(spec: string, opts: EndpointOptions = {}): Promise<Endpoint> {
  if (spec === 'null:') throw invalidArgument("'null:' can only be a destination");
  if (isNbdUri(spec))
    return {
      device: await connectNbd(spec, { tls: opts.tls, connections: opts.connections, readOnly: true }),
      name: spec,
      kind: 'nbd',
      fresh: false,
    };
  return { device: FileDevice.open(spec, { readOnly: true }), name: spec, kind: 'file', fresh: false };
}

/**
 * Opens the destination for `size` bytes. A regular file is created, or emptied and sized (so it
 * is fresh and sparse); an NBD export must be at least `size` bytes.
 */
export async function openDestination(
  spec: string,
  size: number,
  opts: EndpointOptions = {},
): Promise<Endpoint> {
  if (spec === 'null:') return { device: new NullDevice(size), name: spec, kind: 'null', fresh: true };
  if (isNbdUri(spec)) {
    const device = await connectNbd(spec, { tls: opts.tls, connections: opts.connections });
    if (device.readOnly) {
      await device.close();
      throw new HavenError('READ_ONLY', `destination ${spec} is read-only`);
    }
    if (device.size < size) {
      await device.close();
      throw outOfRange(`destination ${spec} holds ${device.size} bytes, less than the source's ${size}`);
    }
    return { device, name: spec, kind: 'nbd', fresh: false };
  }
  return { device: FileDevice.open(spec, { create: true, size }), name: spec, kind: 'file', fresh: true };
}

/** A raw local file through synchronous positional I/O (fast on page-cached files). */
export class FileDevice implements BlockDevice {
  readonly blockSizes: BlockSizes = { ...DEFAULT_BLOCK_SIZES };
  readonly flushCoversAll = true;
  private fd: number;

  private constructor(
    private readonly path: string,
    fd: number,
    readonly size: number,
    readonly readOnly: boolean,
    private readonly regular: boolean,
  ) {
    this.fd = fd;
  }

  static open(path: string, opts: { readOnly?: boolean; create?: boolean; size?: number }): FileDevice {
    let fd: number;
    try {
      if (opts.readOnly) fd = openSync(path, 'r');
      else {
        let exists = true;
        try {
          statSync(path);
        } catch {
          exists = false;
        }
        if (!exists && !opts.create) throw new HavenError('NOT_FOUND', `${path}: no such file`);
        fd = openSync(path, exists ? 'r+' : 'w+');
      }
    } catch (e) {
      throw fromSystemError(e, `cannot open ${path}`);
    }
    const st = fstatSync(fd);
    const regular = st.isFile();
    let size = st.size;
    if (!regular && !st.isBlockDevice()) {
      closeSync(fd);
      throw invalidArgument(`${path} is neither a regular file nor a block device`);
    }
    if (!regular) {
      // A block device: its size is where the end is.
      size = blockDeviceSize(fd);
    } else if (!opts.readOnly && opts.size !== undefined) {
      ftruncateSync(fd, 0);
      ftruncateSync(fd, opts.size);
      size = opts.size;
    }
    return new FileDevice(path, fd, size, !!opts.readOnly, regular);
  }

  private check(what: string, offset: number, length: number) {
    if (offset < 0 || length < 0 || offset + length > this.size)
      throw outOfRange(
        `${this.path}: ${what} of ${length} bytes at ${offset} is beyond the size of ${this.size}`,
      );
  }

  read(buf: Uint8Array, offset: number): void {
    this.check('read', offset, buf.length);
    let done = 0;
    while (done < buf.length) {
      const n = readSync(this.fd, buf, done, buf.length - done, offset + done);
      if (n === 0) {
        buf.fill(0, done);
        return;
      }
      done += n;
    }
  }

  write(data: Uint8Array | readonly Uint8Array[], offset: number): void {
    if (this.readOnly) throw new HavenError('READ_ONLY', `${this.path} is open read-only`);
    const chunks = data instanceof Uint8Array ? [data] : data;
    let at = offset;
    for (const c of chunks) {
      this.check('write', at, c.length);
      let done = 0;
      while (done < c.length) done += writeSync(this.fd, c, done, c.length - done, at + done);
      at += c.length;
    }
  }

  flush(): void {
    if (!this.readOnly) fsyncSync(this.fd);
  }

  trim(offset: number, length: number): void {
    this.writeZeroes(offset, length);
  }

  writeZeroes(offset: number, length: number): void {
    this.check('write zeroes', offset, length);
    const zero = new Uint8Array(Math.min(length, 1024 * 1024));
    for (let at = 0; at < length; at += zero.length)
      this.write(zero.subarray(0, Math.min(zero.length, length - at)), offset + at);
  }

  /** Everything is data: sparseness of a file source is found by the copy's zero detection. */
  blockStatus(offset: number, length: number): Extent[] {
    this.check('block status', offset, length);
    return length ? [{ offset, length, flags: 0 }] : [];
  }

  close(): void {
    if (this.fd < 0) return;
    if (!this.readOnly && this.regular) fsyncSync(this.fd);
    closeSync(this.fd);
    this.fd = -1;
  }
}

function blockDeviceSize(fd: number): number {
  // Read the end by seeking is not available in Node; probe with a binary search on reads.
  const one = new Uint8Array(1);
  let lo = 0;
  let hi = 1;
  while (readSync(fd, one, 0, 1, hi * 512 - 1) === 1) hi *= 2;
  while (hi - lo > 1) {
    const mid = Math.floor((lo + hi) / 2);
    if (readSync(fd, one, 0, 1, mid * 512 - 1) === 1) lo = mid;
    else hi = mid;
  }
  return lo * 512;
}

/** A destination that drops everything (`null:`), for measuring a source. */
export class NullDevice implements BlockDevice {
  readonly readOnly = false;
  readonly blockSizes: BlockSizes = { ...DEFAULT_BLOCK_SIZES };
  readonly flushCoversAll = true;
  constructor(readonly size: number) {}
  read(buf: Uint8Array): void {
    buf.fill(0);
  }
  write(): void {}
  flush(): void {}
  trim(): void {}
  writeZeroes(): void {}
  blockStatus(offset: number, length: number): Extent[] {
    return length ? [{ offset, length, flags: 3 }] : [];
  }
  close(): void {}
}
