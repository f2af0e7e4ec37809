import { resolve } from 'node:path';
import { HavenError, invalidArgument, outOfRange, outputTarget, stageFile } from '../common/index.js';
import { NullDevice, openRawFile, type BlockDevice } from '../block/index.js';
import { connectNbd, isNbdUri, type TlsCredentials } from './client/index.js';
import { checkReadable } from './image-file.js';

/**
 * The ends of `haven nbd copy` and `haven nbd info`: an NBD URI, a local file (raw) or `null:`
 * (a sink that drops what it is given, to measure a source).
 * Local files are raw images (src/block/raw-file.ts), whose holes are known from SEEK_HOLE.
 */
export interface EndpointOptions {
  tls?: TlsCredentials;
  /** NBD connections per endpoint (used only when the server allows several). */
  connections?: number;
}

export interface DestinationOptions extends EndpointOptions {
  /** Replace an existing file, or write over an existing block device (refused otherwise). */
  force?: boolean;
}

export interface Endpoint {
  device: BlockDevice;
  /** What the user named it. */
  name: string;
  kind: 'nbd' | 'file' | 'null';
  /** Reads as zeroes everywhere (a file created or truncated by us): zero ranges need no writes. */
  fresh: boolean;
  /**
   * After the copy, once `device` is closed: a new file is renamed into place when `ok` (it was
   * written under a temporary name), or removed. Absent for ends that are written in place.
   */
  finish?(ok: boolean): void;
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
  checkReadable(resolve(spec)); // a FIFO would block the open for ever
  return { device: openRawFile(spec, { readOnly: true }), name: spec, kind: 'file', fresh: false };
}

/**
 * Opens the destination for `size` bytes. A file is written under a temporary name beside it and
 * put in place by `finish(true)` (an existing one is replaced only with `force`); an existing
 * block device (with `force`) and an NBD export are written in place and must hold `size` bytes.
 */
export async function openDestination(
  spec: string,
  size: number,
  opts: DestinationOptions = {},
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
  const out = outputTarget(resolve(spec), opts.force);
  if (out.kind === 'block') {
    const device = openRawFile(out.path);
    if (device.size < size) {
      device.close();
      throw outOfRange(`destination ${spec} holds ${device.size} bytes, less than the source's ${size}`);
    }
    return { device, name: spec, kind: 'file', fresh: false };
  }
  // A new file is fresh (reads as zeroes) and sparse.
  const staged = stageFile(out.path, size);
  let device: BlockDevice;
  try {
    device = openRawFile(staged.tmp);
  } catch (err) {
    staged.abort();
    throw err;
  }
  return {
    device,
    name: spec,
    kind: 'file',
    fresh: true,
    finish: (ok) => (ok ? staged.commit() : staged.abort()),
  };
}
