import type { BlockDevice } from '../../../block/index.js';
import { invalidArgument, notFound, unsupported } from '../../../common/index.js';
import { Debugfs } from './debugfs.js';
import { exposeAsFile } from './fuse-file.js';
import { probeFilesystem, READABLE_FILESYSTEMS } from './fs-probe.js';
import { readPartitionTable } from './partitions.js';

/** A filesystem (or an unrecognised partition) of a disk. */
export interface DiskFilesystem {
  /** The partition's number, or null for a filesystem on the whole disk. */
  partition: number | null;
  start: number;
  size: number;
  /** As blkid names it (ext4, xfs, vfat, swap, …), or null when nothing is recognised. */
  type: string | null;
  /** Whether Haven can list and extract its files. */
  readable: boolean;
  /** The partition's type (MBR byte or GPT GUID) and GPT name. */
  partitionType?: string;
  name?: string;
}

export interface DiskLayout {
  scheme: 'gpt' | 'mbr' | 'none';
  filesystems: DiskFilesystem[];
}

const readable = (t: string | undefined) => !!t && (READABLE_FILESYSTEMS as readonly string[]).includes(t);

/** The partition table of a disk and what each partition (or the whole disk) holds. */
export async function diskLayout(device: BlockDevice): Promise<DiskLayout> {
  const table = await readPartitionTable(device);
  if (table.scheme === 'none') {
    const type = await probeFilesystem(device, 0, device.size);
    return {
      scheme: 'none',
      filesystems: [
        { partition: null, start: 0, size: device.size, type: type ?? null, readable: readable(type) },
      ],
    };
  }
  const filesystems: DiskFilesystem[] = [];
  for (const p of table.partitions) {
    const type = await probeFilesystem(device, p.start, p.size);
    filesystems.push({
      partition: p.number,
      start: p.start,
      size: p.size,
      type: type ?? null,
      readable: readable(type),
      partitionType: p.type,
      ...(p.name ? { name: p.name } : {}),
    });
  }
  return { scheme: table.scheme, filesystems };
}

/**
 * The filesystem to read: partition `partition` if given, else the whole disk's, else the only
 * readable partition. Anything else is an error that says what the disk holds and what to give.
 */
export function pickFilesystem(layout: DiskLayout, what: string, partition?: number): DiskFilesystem {
  const describe = (f: DiskFilesystem) =>
    `${f.partition === null ? 'the whole disk' : `partition ${f.partition}`}: ${f.type ?? 'nothing recognised'}`;
  const holds = layout.filesystems.map(describe).join('; ');
  let fs: DiskFilesystem | undefined;
  if (partition !== undefined) {
    if (layout.scheme === 'none')
      throw invalidArgument(`${what} has no partition table (${holds}): leave out --partition`);
    fs = layout.filesystems.find((f) => f.partition === partition);
    if (!fs)
      throw notFound(
        `${what} has no partition ${partition}; it has ${layout.filesystems.map((f) => f.partition).join(', ') || 'none'}`,
      );
  } else if (layout.scheme === 'none') fs = layout.filesystems[0]!;
  else {
    const ok = layout.filesystems.filter((f) => f.readable);
    if (ok.length !== 1)
      throw invalidArgument(
        `${what} has ${ok.length ? `${ok.length} readable partitions` : 'no readable partition'} (${holds}): ${ok.length ? 'name one with --partition N' : 'file-level restore reads ext2, ext3 and ext4'}`,
      );
    fs = ok[0]!;
  }
  if (!fs.readable)
    throw unsupported(
      fs.type
        ? `${what} ${describe(fs)}: file-level restore reads ext2, ext3 and ext4 only (restore or mount the disk to read ${fs.type})`
        : `${what} (${describe(fs)}) holds no filesystem Haven recognises: is it unformatted, or encrypted?`,
    );
  return fs;
}

/**
 * Runs `fn` with the chosen filesystem of `device` open through debugfs, the device exposed as
 * a file under `workDir` for the duration; the mount and every process are gone when it returns
 * or throws.
 */
export async function withFilesystem<T>(
  device: BlockDevice,
  fs: DiskFilesystem,
  workDir: string,
  what: string,
  fn: (debugfs: Debugfs) => Promise<T>,
  signal?: AbortSignal,
): Promise<T> {
  const file = await exposeAsFile(device, workDir, signal);
  try {
    return await fn(new Debugfs(file.path, fs.start, what, signal));
  } finally {
    await file.close();
  }
}
