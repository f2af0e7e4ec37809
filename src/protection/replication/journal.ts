import {
  close,
  closeSync,
  fdatasync,
  fdatasyncSync,
  fstatSync,
  fsync,
  open,
  rm,
  ftruncateSync,
  mkdirSync,
  openSync,
  readdirSync,
  read as readCallback,
  readSync,
  writevSync,
} from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { HavenError, fromSystemError } from '../../common/index.js';
import {
  RECORD_HEADER,
  RecordKind,
  decodeHeader,
  encodeHeader,
  recordIntact,
  type RecordHeader,
} from './journal-format.js';

const fdatasyncAsync = promisify(fdatasync);
const fsyncAsync = promisify(fsync);
const openAsync = promisify(open);
const closeAsync = promisify(close);
const rmAsync = promisify(rm);
const readAsync = promisify(readCallback);

/** fsync of a directory (a segment made in it), on the thread pool. */
async function syncDirectoryAsync(dir: string): Promise<void> {
  const fd = await openAsync(dir, 'r');
  try {
    await fsyncAsync(fd);
  } finally {
    await closeAsync(fd);
  }
}

export interface JournalOptions {
  /** A segment file is closed and a new one begun past this size. */
  segmentBytes?: number;
  /** The journal's bound: an append that would pass it is refused (the gateway goes to bitmap mode). */
  maxBytes?: number;
}

interface Segment {
  path: string;
  firstSeq: number;
  /** The sequence after its last record (firstSeq when empty). */
  endSeq: number;
  bytes: number;
}

const SUFFIX = '.seg';
const segmentName = (firstSeq: number) => `${String(firstSeq).padStart(16, '0')}${SUFFIX}`;

/** A record read back: its header and payload (a view valid until the reader's next call). */
export interface JournalEntry extends RecordHeader {
  payload: Buffer;
}

/**
 * A replication journal: the ordered records of one consistency group in segment files
 * (`DIR/0000000000000001.seg` …, named by their first sequence). Appends are synchronous
 * `writev`s of a header and the caller's own buffers (no copy): once `append` returns, a kill -9
 * of the process loses nothing (the page cache holds it); `sync` makes everything appended so far
 * durable against a power loss. Opening replays the segments, checks every record and cuts a torn
 * tail (a crash mid-append) off the last one. Bounded: `maxBytes` (decision 0012).
 */
export class ReplicationJournal {
  private readonly segments: Segment[] = [];
  private fd = -1;
  private readonly header = Buffer.alloc(RECORD_HEADER);
  private unsynced = false;
  private held = 0;
  private syncing: Promise<void> | undefined;
  /** Segments sealed since the last sync: their files are synced (then closed) by the next one. */
  private sealed: { fd: number; seg: Segment }[] = [];
  /** A segment was begun since the last sync: the directory is synced too. */
  private dirUnsynced = false;
  /** Trimmed segments' files being removed (after the directory naming their successor is durable). */
  private removing: Promise<void> = Promise.resolve();
  private readonly segmentBytes: number;
  readonly maxBytes: number;

  private constructor(
    readonly dir: string,
    opts: JournalOptions,
  ) {
    this.maxBytes = opts.maxBytes ?? 1024 * 1024 * 1024;
    // Trimming frees whole segments: an eighth of the bound each, so that it can make room.
    this.segmentBytes = opts.segmentBytes ?? Math.min(64 * 1024 * 1024, Math.ceil(this.maxBytes / 8));
  }

  /**
   * Opens (creating) the journal in `dir`. `firstSeq`: the sequence of its first record when it
   * has none yet. A record that fails its check before the last segment's tail is CORRUPT.
   */
  static open(dir: string, opts: JournalOptions & { firstSeq?: number } = {}): ReplicationJournal {
    const j = new ReplicationJournal(dir, opts);
    try {
      mkdirSync(dir, { recursive: true });
      const names = readdirSync(dir)
        .filter((n) => n.endsWith(SUFFIX))
        .sort();
      for (const [i, name] of names.entries()) j.replay(join(dir, name), i === names.length - 1);
    } catch (err) {
      if (err instanceof HavenError) throw err;
      throw fromSystemError(err, `replication journal ${dir}`);
    }
    const last = j.segments[j.segments.length - 1];
    if (last) j.fd = openSync(last.path, 'r+');
    else j.begin(opts.firstSeq ?? 1);
    return j;
  }

  /** The sequence the next record gets. */
  get nextSeq(): number {
    return this.segments[this.segments.length - 1]!.endSeq;
  }

  /** The sequence of the oldest record held (nextSeq when it holds none). */
  get firstSeq(): number {
    const s = this.segments.find((x) => x.endSeq > x.firstSeq);
    return s ? s.firstSeq : this.nextSeq;
  }

  /** Whether every record appended so far is durable (synced). */
  get durable(): boolean {
    return !this.unsynced && !this.syncing;
  }

  /** Bytes held in all segments (kept as they change: every append asks). */
  get bytes(): number {
    return this.held;
  }

  /**
   * Appends a record; returns its sequence, or undefined when the journal is full (nothing was
   * written). `payload`: the bytes written (kept by reference only for this call).
   */
  append(
    kind: RecordKind,
    volume: number,
    offset: number,
    length: number,
    payload: readonly Uint8Array[] = [],
  ): number | undefined {
    let size = RECORD_HEADER;
    for (const p of payload) size += p.length;
    const seg = this.segmentFor(size);
    if (!seg) return undefined;
    const seq = seg.endSeq;
    encodeHeader(this.header, { kind, volume, seq, offset, length }, payload);
    this.put(seg, [this.header, ...payload], size);
    return seq;
  }

  /**
   * Appends the records at the start of `records` (as another journal holds them, one after
   * another, the first the next sequence), each checked — intact, and the next sequence — before
   * any is written, with one write per segment instead of one per record. Returns the bytes appended: all of `records`, or
   * fewer when the journal is full (a whole number of records; nothing of the rest is written).
   */
  appendEncodedRun(records: Buffer): number {
    let at = 0;
    while (at < records.length) {
      // The records that fit into the current segment (or the one begun for them).
      const first = this.checkRecord(records, at, this.nextSeq);
      const seg = this.segmentFor(first.recordLength);
      if (!seg) return at;
      let end = at + first.recordLength;
      let seq = first.seq + 1;
      while (end < records.length) {
        const h = this.checkRecord(records, end, seq);
        const size = end + h.recordLength - at;
        if (this.held + size > this.maxBytes || seg.bytes + size > this.segmentBytes) break;
        end += h.recordLength;
        seq++;
      }
      this.writeAll(seg, [records.subarray(at, end)], end - at);
      seg.endSeq = seq;
      this.unsynced = true;
      at = end;
    }
    return at;
  }

  /** The header of the record at `at` of `records`, checked: whole, intact, and sequence `seq`. */
  private checkRecord(records: Buffer, at: number, seq: number): RecordHeader {
    const h = decodeHeader(records.subarray(at, at + RECORD_HEADER));
    if (
      !h ||
      at + h.recordLength > records.length ||
      !recordIntact(records.subarray(at, at + h.recordLength))
    )
      throw new HavenError('CORRUPT', `replication record at byte ${at} of a batch is damaged`);
    if (h.seq !== seq)
      throw new HavenError(
        'CONFLICT',
        `replication record ${h.seq} does not follow the journal's last (${seq - 1})`,
      );
    return h;
  }

  /** The segment a record of `size` bytes goes into (a new one past segmentBytes); undefined: full. */
  private segmentFor(size: number): Segment | undefined {
    if (this.held + size > this.maxBytes) return undefined;
    const seg = this.segments[this.segments.length - 1]!;
    return seg.bytes > 0 && seg.bytes + size > this.segmentBytes ? this.seal() : seg;
  }

  /** Writes the next record of `seg`. */
  private put(seg: Segment, parts: Uint8Array[], size: number): void {
    this.writeAll(seg, parts, size);
    seg.endSeq++;
    this.unsynced = true;
  }

  /**
   * Makes every record appended so far durable: fdatasync of the current segment and of those
   * sealed since the last sync, and of the directory when a segment was begun — all on the thread
   * pool, so the event loop (the guests' I/O) never waits for the disk. Calls coalesce.
   */
  async sync(): Promise<void> {
    while (this.unsynced) {
      if (!this.syncing) {
        this.unsynced = false;
        const sealed = this.sealed.splice(0);
        const fd = this.fd;
        const dir = this.dirUnsynced;
        this.dirUnsynced = false;
        this.syncing = (async () => {
          try {
            await Promise.all([fd, ...sealed.map((x) => x.fd)].map((f) => fdatasyncAsync(f)));
            if (dir) await syncDirectoryAsync(this.dir);
          } catch (err) {
            // Not durable: the next sync tries again.
            this.sealed.unshift(...sealed);
            this.unsynced = true;
            if (dir) this.dirUnsynced = true;
            throw err;
          }
          for (const x of sealed) closeSync(x.fd);
        })().finally(() => (this.syncing = undefined));
      }
      await this.syncing;
    }
    await this.syncing;
  }

  /**
   * Deletes the segments whose every record has a sequence below `seq` (the target holds them).
   * Nothing of them needs to be durable any more: their files are removed in the background, once
   * the directory naming the segment after them is durable (a crash never finds the journal
   * without its newest segment).
   */
  trim(seq: number): void {
    // All of the current segment is held too: begin a new one, so this one can go as well.
    const last = this.segments[this.segments.length - 1]!;
    if (last.bytes > 0 && last.endSeq <= seq) this.seal(false);
    const gone: Segment[] = [];
    while (this.segments.length > 1 && this.segments[0]!.endSeq <= seq) {
      const seg = this.segments.shift()!;
      this.held -= seg.bytes;
      gone.push(seg);
    }
    if (!gone.length) return;
    if (this.reading && gone.includes(this.reading.seg)) this.dropReader();
    // Sealed but not synced yet: no sync needed now.
    const drop = this.sealed.filter((x) => gone.includes(x.seg));
    this.sealed = this.sealed.filter((x) => !gone.includes(x.seg));
    for (const x of drop) closeSync(x.fd);
    const dir = this.dirUnsynced;
    this.dirUnsynced = false;
    this.removing = this.removing
      .then(async () => {
        if (dir) await syncDirectoryAsync(this.dir);
        for (const g of gone) await rmAsync(g.path, { force: true });
      })
      .catch(() => {
        // A segment left behind is trimmed again after a reopening (its records are held already).
        this.dirUnsynced = true;
      });
  }

  /**
   * The records from `fromSeq` on, in order, read into `scratch` (as many as fit, at least one:
   * a record larger than `scratch` comes in a buffer of its own): the transceiver's batch. The
   * entries' payloads are views of that buffer, valid until it is reused. Empty: nothing from
   * `fromSeq` on yet. Before the oldest record held: NOT_FOUND. `verify: false`: the records'
   * CRCs are not checked here (the sender's: the target checks every record it takes).
   */
  read(fromSeq: number, scratch: Buffer, opts: { verify?: boolean } = {}): JournalEntry[] {
    const at = this.readPlan(fromSeq, scratch);
    if (!at) return [];
    let buf = scratch;
    let len = readUpTo(at.fd, buf, at.start, at.length);
    const alone = oversized(buf, len);
    if (alone) len = readUpTo(at.fd, (buf = Buffer.allocUnsafe(alone)), at.start, alone);
    return this.parse(at, fromSeq, buf, len, opts);
  }

  /**
   * `read` with the bytes read on the thread pool: the event loop (the guests' I/O) does not
   * wait for the copy of a big batch. The segment's file stays open until the read is done,
   * whatever trims the journal meanwhile.
   */
  async readAsync(
    fromSeq: number,
    scratch: Buffer,
    opts: { verify?: boolean } = {},
  ): Promise<JournalEntry[]> {
    const at = this.readPlan(fromSeq, scratch);
    if (!at) return [];
    this.readsInFlight++;
    try {
      let buf = scratch;
      let len = await readUpToAsync(at.fd, buf, at.start, at.length);
      const alone = oversized(buf, len);
      if (alone) len = await readUpToAsync(at.fd, (buf = Buffer.allocUnsafe(alone)), at.start, alone);
      return this.parse(at, fromSeq, buf, len, opts);
    } finally {
      if (--this.readsInFlight === 0) this.closeRetired();
    }
  }

  /** Where a read from `fromSeq` into `scratch` goes: segment, file, byte range; undefined: nothing yet. */
  private readPlan(
    fromSeq: number,
    scratch: Buffer,
  ): { seg: Segment; fd: number; start: number; length: number } | undefined {
    if (fromSeq < this.firstSeq)
      throw new HavenError(
        'NOT_FOUND',
        `replication journal ${this.dir}: record ${fromSeq} was trimmed (the oldest held is ${this.firstSeq})`,
      );
    const seg = this.segments.find((s) => fromSeq >= s.firstSeq && fromSeq < s.endSeq);
    if (!seg) return undefined;
    const fd = this.readFd(seg);
    const start = this.locate(fd, seg, fromSeq);
    return { seg, fd, start, length: Math.min(seg.bytes, start + scratch.length) - start };
  }

  /** The whole records in what was read, in order, checked; moves the cursor past them. */
  private parse(
    at: { seg: Segment; start: number },
    fromSeq: number,
    buf: Buffer,
    len: number,
    opts: { verify?: boolean },
  ): JournalEntry[] {
    const { seg } = at;
    const out: JournalEntry[] = [];
    let pos = 0;
    for (let seq = fromSeq; seq < seg.endSeq && pos + RECORD_HEADER <= len; seq++) {
      const h = decodeHeader(buf.subarray(pos, pos + RECORD_HEADER));
      if (!h || h.seq !== seq)
        throw new HavenError('CORRUPT', `replication journal ${seg.path}: record ${seq} is damaged`);
      if (pos + h.recordLength > len) break;
      const rec = buf.subarray(pos, pos + h.recordLength);
      if (opts.verify !== false && !recordIntact(rec))
        throw new HavenError('CORRUPT', `replication journal ${seg.path}: record ${seq} is damaged`);
      out.push({ ...h, payload: rec.subarray(RECORD_HEADER) });
      pos += h.recordLength;
    }
    this.cursor = { seg, seq: fromSeq + out.length, offset: at.start + pos };
    return out;
  }

  /** Asynchronous reads under way: the files they read are closed after them (closeRetired). */
  private readsInFlight = 0;
  private retired: number[] = [];

  private closeRetired(): void {
    for (const fd of this.retired.splice(0)) closeSync(fd);
  }

  /** The segment last read, open for reading (readers go on in the same segment for a while). */
  private reading: { seg: Segment; fd: number } | undefined;

  private readFd(seg: Segment): number {
    if (this.reading?.seg === seg) return this.reading.fd;
    this.dropReader();
    const fd = openSync(seg.path, 'r');
    this.reading = { seg, fd };
    return fd;
  }

  private dropReader(): void {
    if (this.reading) {
      if (this.readsInFlight) this.retired.push(this.reading.fd);
      else closeSync(this.reading.fd);
    }
    this.reading = undefined;
  }

  /** Where the last read ended: the next one, reading on, starts there without a search. */
  private cursor: { seg: Segment; seq: number; offset: number } | undefined;

  /** The byte offset of record `seq` in `seg`: from the cursor, or by hopping over headers. */
  private locate(fd: number, seg: Segment, seq: number): number {
    const c = this.cursor;
    let at = 0;
    let n = seg.firstSeq;
    if (c && c.seg === seg && c.seq <= seq) {
      at = c.offset;
      n = c.seq;
    }
    const head = Buffer.alloc(RECORD_HEADER);
    for (; n < seq; n++) {
      readExactly(fd, head, at);
      const h = decodeHeader(head);
      if (!h) throw new HavenError('CORRUPT', `replication journal ${seg.path}: record ${n} is damaged`);
      at += h.recordLength;
    }
    return at;
  }

  /** Waits for a sync and removals under way, then closes the segments (not synced: call sync first). */
  async close(): Promise<void> {
    await this.syncing?.catch(() => undefined);
    await this.removing;
    for (const x of this.sealed.splice(0)) closeSync(x.fd);
    this.dropReader();
    if (this.fd >= 0) closeSync(this.fd);
    this.fd = -1;
  }

  private writeAll(seg: Segment, parts: Uint8Array[], size: number): void {
    try {
      let done = writevSync(this.fd, parts, seg.bytes);
      // A short write (rare: a signal, a full disk): the rest, then the record counts.
      while (done < size) {
        const rest = Buffer.concat(parts).subarray(done);
        const n = writevSync(this.fd, [rest], seg.bytes + done);
        if (n === 0) throw new HavenError('IO', `replication journal ${seg.path}: short write`);
        done += n;
      }
    } catch (err) {
      // Nothing half-written may stay behind the records that count.
      ftruncateSync(this.fd, seg.bytes);
      if (err instanceof HavenError) throw err;
      throw fromSystemError(err, `replication journal ${seg.path}: cannot append`);
    }
    seg.bytes += size;
    this.held += size;
  }

  /**
   * Closes the current segment and begins the next. `keep`: its records still count, so the next
   * sync makes its file durable before closing it; otherwise (trimmed whole) it is closed now.
   */
  private seal(keep = true): Segment {
    const fd = this.fd;
    const seg = this.segments[this.segments.length - 1]!;
    if (keep) this.sealed.push({ fd, seg });
    // A sync under way on the thread pool still uses it: closed after that.
    else if (this.syncing) void this.syncing.catch(() => undefined).then(() => closeSync(fd));
    else closeSync(fd);
    return this.begin(this.nextSeq);
  }

  private begin(firstSeq: number): Segment {
    const path = join(this.dir, segmentName(firstSeq));
    this.fd = openSync(path, 'w+', 0o600);
    // Made durable with the records in it (the next sync).
    this.dirUnsynced = true;
    const seg = { path, firstSeq, endSeq: firstSeq, bytes: 0 };
    this.segments.push(seg);
    return seg;
  }

  /** Reads one segment's records, checking each; the last segment's torn tail is cut off. */
  private replay(path: string, last: boolean): void {
    const name = path.slice(path.lastIndexOf('/') + 1);
    const firstSeq = Number(name.slice(0, -SUFFIX.length));
    const prev = this.segments[this.segments.length - 1];
    if (!Number.isSafeInteger(firstSeq) || (prev && prev.endSeq !== firstSeq))
      throw new HavenError(
        'CORRUPT',
        `replication journal ${this.dir}: segment ${name} does not follow the one before it (records are missing)`,
      );
    const fd = openSync(path, last ? 'r+' : 'r');
    try {
      const size = fstatSync(fd).size;
      const head = Buffer.alloc(RECORD_HEADER);
      let rec = Buffer.alloc(0);
      let at = 0;
      let seq = firstSeq;
      while (at < size) {
        const h = size - at >= RECORD_HEADER && (readExactly(fd, head, at), decodeHeader(head));
        let intact = !!h && h.seq === seq && at + h.recordLength <= size;
        if (h && intact) {
          if (rec.length < h.recordLength) rec = Buffer.alloc(Math.max(h.recordLength, 2 * rec.length));
          readExactly(fd, rec.subarray(0, h.recordLength), at);
          intact = recordIntact(rec.subarray(0, h.recordLength));
        }
        if (!h || !intact) {
          if (!last)
            throw new HavenError(
              'CORRUPT',
              `replication journal ${path}: the record at byte ${at} (sequence ${seq}) is damaged`,
            );
          // A crash mid-append: what follows was never acknowledged.
          ftruncateSync(fd, at);
          fdatasyncSync(fd);
          break;
        }
        at += h.recordLength;
        seq++;
      }
      this.segments.push({ path, firstSeq, endSeq: seq, bytes: at });
      this.held += at;
    } finally {
      closeSync(fd);
    }
  }
}

/** Reads up to `length` bytes at `at` (fewer only at the end of the file); returns how many. */
function readUpTo(fd: number, b: Buffer, at: number, length: number): number {
  let got = 0;
  while (got < length) {
    const n = readSync(fd, b, got, length - got, at + got);
    if (n === 0) break;
    got += n;
  }
  return got;
}

/**
 * The length of the first record of the `len` bytes read into `b` when it is longer than they
 * are (one record larger than the scratch: it is read on its own); undefined otherwise.
 */
function oversized(b: Buffer, len: number): number | undefined {
  const first = decodeHeader(b.subarray(0, len));
  return first && first.recordLength > len ? first.recordLength : undefined;
}

/** readUpTo on the thread pool. */
async function readUpToAsync(fd: number, b: Buffer, at: number, length: number): Promise<number> {
  let got = 0;
  while (got < length) {
    const { bytesRead } = await readAsync(fd, b, got, length - got, at + got);
    if (bytesRead === 0) break;
    got += bytesRead;
  }
  return got;
}

function readExactly(fd: number, b: Buffer, at: number): void {
  let got = 0;
  while (got < b.length) {
    const n = readSync(fd, b, got, b.length - got, at + got);
    if (n === 0) throw new HavenError('CORRUPT', 'replication journal: a record ends past its file');
    got += n;
  }
}
