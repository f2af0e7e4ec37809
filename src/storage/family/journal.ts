import {
  closeSync,
  constants,
  fstatSync,
  ftruncateSync,
  openSync,
  readFileSync,
  readSync,
  writeSync,
} from 'node:fs';
import { join } from 'node:path';

/**
 * The mapping journal of a volume family: every mapping change since the last commit (a cluster
 * mapped, remapped by copy on write, or unmapped), written to the file before the write that made
 * it is acknowledged, never synced. It does not survive a machine crash (the guest does not
 * either), but it does survive the storage service's: the page cache keeps it. That matters
 * because a VM outlives the service, and its NBD client sends the FLUSH that was to cover an
 * acknowledged write to the next service (QEMU's reconnect): without the journal, that flush
 * would succeed and the write be lost. A family opened on the same boot (the kernel's boot id)
 * after its commit `seq` replays the journal; on another boot it is stale and ignored.
 *
 * File: a 64-byte header (magic, the superblock seq it follows, the boot id), then 32-byte
 * records (magic, member index, logical cluster, physical cluster, birth, the seq again); a record
 * that does not check out ends the journal (a torn append).
 */
const HEADER = 64;
const RECORD = 32;
const HEADER_MAGIC = 'HVNJRNL1';
const RECORD_MAGIC = 0x4352564a; // "JVRC"
/** Records buffered within one call (one write of the journal per request, at its end). */
const BATCH = 512;

export const JOURNAL_FILE = 'journal';

export interface JournalRecord {
  member: number;
  cluster: number;
  pointer: number;
  birth: number;
}

let kernelBootId: string | undefined | null = null;
/** The kernel's boot id (Linux), or undefined where there is none: then nothing is ever replayed. */
export function currentBootId(): string | undefined {
  if (kernelBootId === null) {
    try {
      kernelBootId = readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
    } catch {
      kernelBootId = undefined;
    }
  }
  return kernelBootId;
}

export class MapJournal {
  private readonly batch = Buffer.alloc(BATCH * RECORD);
  private readonly header = Buffer.alloc(HEADER);
  private batched = 0;
  private end = HEADER;
  private seq = 0;
  /** Records since the last reset. */
  records = 0;

  private constructor(
    private readonly fd: number,
    private readonly bootId: string,
  ) {}

  /** Opens (creating) the journal of the family in `dir`, empty, following commit `seq`. */
  static open(dir: string, seq: number, bootId: string | undefined): MapJournal {
    const fd = openSync(join(dir, JOURNAL_FILE), constants.O_RDWR | constants.O_CREAT, 0o600);
    ftruncateSync(fd, 0);
    const j = new MapJournal(fd, bootId ?? '');
    j.reset(seq);
    return j;
  }

  /**
   * The records of the journal in `dir` if they follow commit `seq` on boot `bootId`, else
   * none (no journal, another boot, or a journal a later commit made stale).
   */
  static replayable(dir: string, seq: number, bootId: string | undefined): JournalRecord[] {
    if (!bootId) return [];
    let fd: number;
    try {
      fd = openSync(join(dir, JOURNAL_FILE), 'r');
    } catch {
      return [];
    }
    try {
      const size = fstatSync(fd).size;
      if (size < HEADER) return [];
      const buf = Buffer.alloc(size);
      let n = 0;
      while (n < size) {
        const r = readSync(fd, buf, n, size - n, n);
        if (r === 0) break;
        n += r;
      }
      if (buf.toString('latin1', 0, 8) !== HEADER_MAGIC || buf.readDoubleLE(8) !== seq) return [];
      if (buf.toString('latin1', 16, 16 + bootId.length) !== bootId || buf[16 + bootId.length] !== 0)
        return [];
      const out: JournalRecord[] = [];
      for (let at = HEADER; at + RECORD <= n; at += RECORD) {
        if (buf.readUInt32LE(at) !== RECORD_MAGIC || buf.readUInt32LE(at + 28) !== seq % 2 ** 32) break;
        out.push({
          member: buf.readUInt32LE(at + 4),
          cluster: buf.readDoubleLE(at + 8),
          pointer: buf.readDoubleLE(at + 16),
          birth: buf.readUInt32LE(at + 24),
        });
      }
      return out;
    } finally {
      closeSync(fd);
    }
  }

  /** Records a mapping change; written out by flushBatch() (before the request is answered). */
  add(member: number, cluster: number, pointer: number, birth: number): void {
    if (this.batched === BATCH) this.flushBatch();
    const at = this.batched * RECORD;
    const b = this.batch;
    b.writeUInt32LE(RECORD_MAGIC, at);
    b.writeUInt32LE(member, at + 4);
    b.writeDoubleLE(cluster, at + 8);
    b.writeDoubleLE(pointer, at + 16);
    b.writeUInt32LE(birth, at + 24);
    b.writeUInt32LE(this.seq % 2 ** 32, at + 28);
    this.batched++;
    this.records++;
  }

  /** Writes the buffered records to the file (the page cache: no sync). */
  flushBatch(): void {
    if (this.batched === 0) return;
    const len = this.batched * RECORD;
    for (let done = 0; done < len;) done += writeSync(this.fd, this.batch, done, len - done, this.end + done);
    this.end += len;
    this.batched = 0;
  }

  /** Empties the journal after commit `seq` made everything in it durable. */
  reset(seq: number): void {
    this.batched = 0;
    this.records = 0;
    this.seq = seq;
    ftruncateSync(this.fd, HEADER); // also what a failed append may have left beyond the end
    this.end = HEADER;
    const h = this.header.fill(0);
    h.write(HEADER_MAGIC, 0, 'latin1');
    h.writeDoubleLE(seq, 8);
    h.write(this.bootId, 16, 'latin1');
    writeSync(this.fd, h, 0, HEADER, 0);
  }

  close(): void {
    closeSync(this.fd);
  }
}
