import type { BlockDevice } from '../../../block/index.js';

/** Filesystems whose files Haven can list and extract (through e2fsprogs' debugfs). */
export const READABLE_FILESYSTEMS = ['ext2', 'ext3', 'ext4'] as const;

const PROBE = 68 * 1024; // reaches btrfs's superblock at 64 KiB

/**
 * What a byte range of a disk holds, from the magic numbers of its first 68 KiB: a filesystem's
 * type (the names blkid uses), or undefined when nothing is recognised (unformatted, or unknown).
 */
export async function probeFilesystem(
  device: BlockDevice,
  start: number,
  size: number,
): Promise<string | undefined> {
  const n = Math.min(PROBE, size, device.size - start);
  if (n < 2048) return undefined;
  const b = Buffer.alloc(n);
  await device.read(b, start);
  if (b.readUInt16LE(1024 + 56) === 0xef53) {
    const compat = b.readUInt32LE(1024 + 92);
    const incompat = b.readUInt32LE(1024 + 96);
    const roCompat = b.readUInt32LE(1024 + 100);
    // extents, 64bit, flex_bg, or huge_file/dir_nlink/extra_isize/metadata_csum: ext4; a journal: ext3.
    if (incompat & (0x40 | 0x80 | 0x200) || roCompat & (0x08 | 0x20 | 0x40 | 0x400)) return 'ext4';
    return compat & 0x4 ? 'ext3' : 'ext2';
  }
  const at = (off: number, magic: string) =>
    off + magic.length <= n && b.toString('latin1', off, off + magic.length) === magic;
  if (at(0, 'XFSB')) return 'xfs';
  if (at(65536 + 64, '_BHRfS_M')) return 'btrfs';
  if (at(3, 'NTFS    ')) return 'ntfs';
  if (at(3, 'EXFAT   ')) return 'exfat';
  if (at(82, 'FAT32   ') || at(54, 'FAT16   ') || at(54, 'FAT12   ')) return 'vfat';
  if (at(512 + 24, 'LVM2 001')) return 'LVM2_member';
  if (at(0, 'LUKS\xba\xbe')) return 'crypto_LUKS';
  if (at(32769, 'CD001')) return 'iso9660';
  if (at(4096 - 10, 'SWAPSPACE2') || at(4096 - 10, 'SWAP-SPACE')) return 'swap';
  return undefined;
}
