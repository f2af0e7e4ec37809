import type { BlockDevice } from '../../../block/index.js';

/** One partition of a disk's partition table: `number` as Linux names it (sda1 is 1). */
export interface Partition {
  number: number;
  /** Byte offset and length on the disk. */
  start: number;
  size: number;
  /** MBR: the type byte as two hex digits ("83"); GPT: the type GUID. */
  type: string;
  name?: string;
}

export interface PartitionTable {
  scheme: 'gpt' | 'mbr' | 'none';
  partitions: Partition[];
}

const SECTOR = 512; // logical sector size: what QEMU's virtio and IDE disks present by default
const GPT_PROTECTIVE = 0xee;
const EXTENDED = new Set([0x05, 0x0f, 0x85]);

/**
 * Reads a disk's partition table: GPT (behind its protective MBR), else MBR primaries and the
 * logical partitions of an extended one (numbered from 5, as Linux does), else none. Partitions
 * that reach past the end of the disk are left out; nothing is guessed from a damaged table.
 */
export async function readPartitionTable(device: BlockDevice): Promise<PartitionTable> {
  if (device.size < 2 * SECTOR) return { scheme: 'none', partitions: [] };
  const mbr = Buffer.alloc(SECTOR);
  await device.read(mbr, 0);
  if (mbr[510] !== 0x55 || mbr[511] !== 0xaa) return { scheme: 'none', partitions: [] };
  const entries = [0, 1, 2, 3].map((i) => mbrEntry(mbr, i));
  if (entries.some((e) => e.type === GPT_PROTECTIVE)) {
    const gpt = await readGpt(device);
    if (gpt) return { scheme: 'gpt', partitions: gpt };
  }
  // A boot sector of a bare FAT/NTFS filesystem also ends in 55 AA: its "entries" are code and
  // data, so an MBR counts only if every used entry has a status byte of 0x00 or 0x80.
  if (entries.some((e) => e.type !== 0 && e.status !== 0 && e.status !== 0x80))
    return { scheme: 'none', partitions: [] };
  const out: Partition[] = [];
  for (const [i, e] of entries.entries()) {
    if (e.type === 0 || e.sectors === 0) continue;
    if (EXTENDED.has(e.type)) out.push(...(await readLogical(device, e.lba)));
    else out.push(part(i + 1, e.lba, e.sectors, e.type.toString(16).padStart(2, '0')));
  }
  const fits = out.filter((p) => p.start + p.size <= device.size);
  return { scheme: fits.length ? 'mbr' : 'none', partitions: fits.sort((a, b) => a.number - b.number) };
}

function mbrEntry(b: Buffer, i: number): { status: number; type: number; lba: number; sectors: number } {
  const at = 446 + 16 * i;
  return { status: b[at]!, type: b[at + 4]!, lba: b.readUInt32LE(at + 8), sectors: b.readUInt32LE(at + 12) };
}

function part(number: number, lba: number, sectors: number, type: string, name?: string): Partition {
  return { number, start: lba * SECTOR, size: sectors * SECTOR, type, ...(name ? { name } : {}) };
}

/** The chain of extended boot records: each holds one logical partition and a link to the next. */
async function readLogical(device: BlockDevice, extendedLba: number): Promise<Partition[]> {
  const out: Partition[] = [];
  const ebr = Buffer.alloc(SECTOR);
  let at = extendedLba;
  for (let n = 5; n < 5 + 128 && (at + 1) * SECTOR <= device.size; n++) {
    await device.read(ebr, at * SECTOR);
    if (ebr[510] !== 0x55 || ebr[511] !== 0xaa) break;
    const [self, next] = [mbrEntry(ebr, 0), mbrEntry(ebr, 1)];
    if (self.type !== 0 && self.sectors)
      out.push(part(n, at + self.lba, self.sectors, self.type.toString(16).padStart(2, '0')));
    if (!next.type || !next.lba) break;
    at = extendedLba + next.lba;
  }
  return out;
}

async function readGpt(device: BlockDevice): Promise<Partition[] | undefined> {
  const header = Buffer.alloc(SECTOR);
  await device.read(header, SECTOR);
  if (header.toString('latin1', 0, 8) !== 'EFI PART') return undefined;
  const entriesLba = Number(header.readBigUInt64LE(72));
  const count = header.readUInt32LE(80);
  const entrySize = header.readUInt32LE(84);
  if (entrySize < 128 || count > 1024) return undefined;
  const bytes = count * entrySize;
  if (entriesLba * SECTOR + bytes > device.size) return undefined;
  const table = Buffer.alloc(Math.ceil(bytes / SECTOR) * SECTOR);
  await device.read(table, entriesLba * SECTOR);
  const out: Partition[] = [];
  for (let i = 0; i < count; i++) {
    const e = table.subarray(i * entrySize, (i + 1) * entrySize);
    if (e.subarray(0, 16).every((x) => x === 0)) continue;
    const first = Number(e.readBigUInt64LE(32));
    const last = Number(e.readBigUInt64LE(40));
    if (last < first || (last + 1) * SECTOR > device.size) continue;
    const name = e.toString('utf16le', 56, 128).replace(/\0.*$/s, '');
    out.push(part(i + 1, first, last - first + 1, guid(e.subarray(0, 16)), name));
  }
  return out;
}

/** A GUID as text: its first three fields are little-endian on disk. */
function guid(b: Buffer): string {
  const h = (s: Buffer) => s.toString('hex');
  const le = (s: Buffer) => h(Buffer.from(s).reverse());
  return `${le(b.subarray(0, 4))}-${le(b.subarray(4, 6))}-${le(b.subarray(6, 8))}-${h(b.subarray(8, 10))}-${h(b.subarray(10, 16))}`;
}
