import { createHash } from 'node:crypto';
import { setImmediate as turn } from 'node:timers/promises';
import { EXTENT_ZERO, walkExtents, type BlockDevice } from '../../block/index.js';
import { HavenError } from '../../common/index.js';
import type { StorageService } from '../../storage/index.js';

/**
 * Checksums per extent of a group's volumes (verify, and the compare sync): SHA-256 of each
 * fixed-size extent (the last one may be shorter), 32 bytes each, concatenated per volume. SHA-256
 * because node:crypto runs it at ~1.5 GB/s with the CPU's SHA extensions (faster here than
 * blake2b512; xxhash is not available). An extent that block status reports all zero is not read:
 * its sum is the known sum of zeroes, so a thin 4 GiB volume costs its allocated bytes.
 */
export const DIGEST_BYTES = 32;
export const DEFAULT_EXTENT_BYTES = 1024 * 1024;
const MAX_EXTENT_BYTES = 64 * 1024 * 1024;

/** What the source asks the target for (over the site's RPC channel). */
export interface ChecksumRequest {
  /** The checkpoint whose snapshots (`cp-SEQ`) to sum; absent: the live replica volumes (a compare sync). */
  checkpoint?: number;
  extentBytes: number;
}

/** The target's answer: JSON-friendly (the sums in base64). */
export interface ChecksumList {
  checkpoint?: number;
  extentBytes: number;
  /** Per volume of the group, in its order: the size and the extents' SHA-256 sums, concatenated. */
  volumes: { size: number; sha256: string }[];
}

const zeroSums = new Map<number, Buffer>();

/** The sum of `length` zero bytes (cached: one per extent size). */
export function zeroSum(length: number): Buffer {
  let s = zeroSums.get(length);
  if (!s) {
    s = createHash('sha256').update(Buffer.alloc(length)).digest();
    zeroSums.set(length, s);
  }
  return s;
}

/** Refuses an extent size that is not a positive multiple of 4 KiB up to 64 MiB. */
export function checkExtentBytes(extentBytes: number): void {
  if (
    !Number.isInteger(extentBytes) ||
    extentBytes <= 0 ||
    extentBytes % 4096 ||
    extentBytes > MAX_EXTENT_BYTES
  )
    throw new HavenError(
      'INVALID_ARGUMENT',
      `extent size ${extentBytes} for replication checksums: give a multiple of 4096 up to ${MAX_EXTENT_BYTES}`,
    );
}

/** Whether [offset, offset+length) of `device` is all zero by block status (nothing read). */
export async function allZero(device: BlockDevice, offset: number, length: number): Promise<boolean> {
  for await (const e of walkExtents((o, l) => device.blockStatus(o, l), offset + length, { from: offset }))
    if (!(e.flags & EXTENT_ZERO)) return false;
  return true;
}

/**
 * The sums of a device's extents. Reads one extent at a time into `buf` (extentBytes long) and
 * lets the event loop run between extents: the guests' I/O on the same loop goes on.
 */
export async function checksumDevice(
  device: BlockDevice,
  extentBytes: number,
  opts: { buf?: Buffer; signal?: AbortSignal } = {},
): Promise<Buffer> {
  checkExtentBytes(extentBytes);
  const size = device.size;
  const count = Math.ceil(size / extentBytes);
  const out = Buffer.alloc(count * DIGEST_BYTES);
  const buf = opts.buf ?? Buffer.alloc(extentBytes);
  for (let i = 0; i < count; i++) {
    opts.signal?.throwIfAborted();
    const at = i * extentBytes;
    const length = Math.min(extentBytes, size - at);
    if (await allZero(device, at, length)) zeroSum(length).copy(out, i * DIGEST_BYTES);
    else {
      const data = buf.subarray(0, length);
      await device.read(data, at);
      createHash('sha256')
        .update(data)
        .digest()
        .copy(out, i * DIGEST_BYTES);
      await turn();
    }
  }
  return out;
}

/**
 * The target side of verify and of the compare sync: the sums of each replica volume at
 * checkpoint `checkpoint` (its snapshot `cp-SEQ`, which the applier took), or of the live replica
 * volumes when it is undefined. The site calls it for the source over its RPC channel.
 */
export async function checksumReplica(
  storage: StorageService,
  volumes: readonly string[],
  checkpoint: number | undefined,
  extentBytes: number,
  signal?: AbortSignal,
): Promise<ChecksumList> {
  checkExtentBytes(extentBytes);
  const buf = Buffer.alloc(extentBytes);
  const out: ChecksumList['volumes'] = [];
  for (const v of volumes) {
    const target = checkpoint === undefined ? v : `${v}@cp-${checkpoint}`;
    if (checkpoint !== undefined && !storage.listSnapshots(v).some((s) => s.name === `cp-${checkpoint}`))
      throw new HavenError(
        'NOT_FOUND',
        `replica volume ${v} has no checkpoint ${checkpoint} (not applied yet, or expired): verify again at a newer checkpoint`,
      );
    const device = storage.openDevice(target, { readOnly: true });
    try {
      const sums = await checksumDevice(device, extentBytes, { buf, ...(signal ? { signal } : {}) });
      out.push({ size: device.size, sha256: sums.toString('base64') });
    } finally {
      await device.close();
    }
  }
  return { ...(checkpoint !== undefined ? { checkpoint } : {}), extentBytes, volumes: out };
}

/** The sums of a ChecksumList, decoded and checked against the group's volume sizes. */
export function decodeChecksums(list: ChecksumList, sizes: readonly number[], extentBytes: number): Buffer[] {
  if (list.extentBytes !== extentBytes || list.volumes.length !== sizes.length)
    throw new HavenError(
      'PROTOCOL',
      `the target's checksums are of ${list.volumes.length} volumes in extents of ${list.extentBytes} bytes; asked for ${sizes.length} in ${extentBytes}`,
    );
  return list.volumes.map((v, i) => {
    if (v.size !== sizes[i])
      throw new HavenError(
        'CONFLICT',
        `replica volume ${i} of the group has ${v.size} bytes and its source ${sizes[i]}: resize the replica to the source's size`,
      );
    const sums = Buffer.from(v.sha256, 'base64');
    if (sums.length !== Math.ceil(v.size / extentBytes) * DIGEST_BYTES)
      throw new HavenError('PROTOCOL', `the target's checksums of volume ${i} have ${sums.length} bytes`);
    return sums;
  });
}

/** Extent `i`'s sum in a volume's concatenated sums. */
export const sumAt = (sums: Buffer, i: number) => sums.subarray(i * DIGEST_BYTES, (i + 1) * DIGEST_BYTES);
