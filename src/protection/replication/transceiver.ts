import { createRequire } from 'node:module';
import type { Duplex } from 'node:stream';
import type * as Zstd from 'zstd-napi/binding.js';
import { HavenError } from '../../common/index.js';
import { FLAG_ZSTD, Frame, FrameReader, MAX_FRAME, jsonFrame, writeFrame } from './frames.js';
import { RECORD_HEADER, decodeHeader } from './journal-format.js';
import type { ReplicationJournal } from './journal.js';

const zstd = createRequire(import.meta.url)('zstd-napi/binding') as typeof Zstd;
const PROTOCOL_VERSION = 1;
/** Bytes of records per batch (frame). */
const DEFAULT_BATCH = 4 * 1024 * 1024;
/** A batch that compresses to more than this fraction of itself does not pay for its CPU… */
const INCOMPRESSIBLE = 0.9;
/** …and this many batches after it are sent uncompressed before compression is tried again. */
const SKIP_BATCHES = 8;
/**
 * A batch goes to the socket in pieces of this many bytes, one per turn of the event loop: TLS
 * encrypts what it is given at once, and a whole batch would hold the guests' I/O for
 * milliseconds.
 */
const WRITE_PIECE = 256 * 1024;

/** Bytes per second, changeable while running; 0 or absent: unlimited. */
export class TokenBucket {
  private tokens = 0;
  private last = performance.now();
  constructor(public bytesPerSecond = 0) {}

  /**
   * Waits until `n` more bytes may be sent: once the bytes sent so far are paid for (a frame
   * larger than what has accrued goes, and the next waits for the debt).
   */
  async take(n: number): Promise<void> {
    for (;;) {
      const rate = this.bytesPerSecond;
      if (!rate) return;
      const now = performance.now();
      // At most a quarter second of burst accrues.
      this.tokens = Math.min(rate / 4, this.tokens + ((now - this.last) * rate) / 1000);
      this.last = now;
      if (this.tokens >= 0) {
        this.tokens -= n;
        return;
      }
      await new Promise((r) => setTimeout(r, Math.max(1, (-this.tokens * 1000) / rate)));
    }
  }
}

export interface SenderOptions {
  group: string;
  /** zstd-compress batches (sent compressed only when that is smaller). */
  compress?: boolean;
  limit?: TokenBucket;
  /** Bytes per batch. */
  batchBytes?: number;
  /** Told with the highest sequence the target holds durably, after each acknowledgement. */
  onAck?: (held: number) => void;
  /** Trim the journal by the acknowledgements (default); false: another party trims it. */
  trim?: boolean;
}

/**
 * The source side of the transceiver: ships the journal's records from the one after what the
 * target holds (its welcome says), in batches, and trims the journal by the target's
 * acknowledgements. A reconnect is a new sender on a new socket: it resumes where the target's
 * welcome says, so nothing is skipped and the target ignores nothing twice. Resolves when the
 * link closes or `stop()` is called; rejects on a protocol error.
 */
export class JournalSender {
  private stopped = false;
  private wakeUp: (() => void) | undefined;
  /** A wake came since the last read began. */
  private woken = false;
  private held = 0;
  private readonly scratch: Buffer[];
  private packed: Buffer | undefined;
  private readonly cctx: InstanceType<typeof zstd.CCtx> | undefined;
  /** Batches to send without trying to compress them (the last try did not pay). */
  private uncompressed = 0;
  /** Bytes put on the wire (frame bodies), for the counters and the tests. */
  sentBytes = 0;

  constructor(
    private readonly journal: ReplicationJournal,
    private readonly socket: Duplex,
    private readonly opts: SenderOptions,
  ) {
    const size = opts.batchBytes ?? DEFAULT_BATCH;
    // Two: one on the wire while the next is read.
    this.scratch = [Buffer.alloc(size), Buffer.alloc(size)];
    if (opts.compress) {
      this.cctx = new zstd.CCtx();
      this.cctx.setParameter(zstd.CParameter.compressionLevel, 1);
      this.packed = Buffer.alloc(zstd.compressBound(size));
    }
  }

  /** The newest checkpoint the target reported applied. */
  applied: AppliedPoint | undefined;

  /** The highest sequence the target holds (as last acknowledged). */
  get acknowledged(): number {
    return this.held;
  }

  /** New records are in the journal. */
  wake(): void {
    this.woken = true;
    const w = this.wakeUp;
    this.wakeUp = undefined;
    w?.();
  }

  stop(): void {
    this.stopped = true;
    this.wake();
    this.socket.end();
  }

  async run(): Promise<void> {
    const reader = new FrameReader(this.socket, 'the replication target');
    await jsonFrame(this.socket, Frame.hello, { group: this.opts.group, version: PROTOCOL_VERSION });
    const welcome = await reader.next();
    if (!welcome) throw new HavenError('IO', 'the replication target closed the link before its welcome');
    if (welcome.type === Frame.error) throw peerError(welcome.body);
    if (welcome.type !== Frame.welcome)
      throw new HavenError('PROTOCOL', 'the replication target did not welcome');
    const hello = JSON.parse(welcome.body.toString()) as { held: number; applied?: AppliedPoint };
    this.held = hello.held;
    if (hello.applied) this.applied = hello.applied;
    let next = this.held + 1;
    if (next < this.journal.firstSeq)
      throw new HavenError(
        'CONFLICT',
        `the target holds up to ${this.held}, the journal begins at ${this.journal.firstSeq}: records are gone, a resync is needed`,
      );
    const acks = this.readAcks(reader).catch((err: unknown) => {
      // The target refused (an error frame): the loop stops, run() rejects with the reason.
      this.stopped = true;
      this.wake();
      throw err;
    });
    acks.catch(() => undefined); // handled where run() awaits it
    let turn = 0;
    try {
      while (!this.stopped) {
        let scratch = this.scratch[turn++ % 2]!;
        // Under a bandwidth limit, batches of at most a quarter second of it (at least 64 KiB):
        // the bucket lets a whole batch go at once, so a big one would be a burst past the limit.
        const rate = this.opts.limit?.bytesPerSecond;
        if (rate)
          scratch = scratch.subarray(0, Math.min(scratch.length, Math.max(64 * 1024, Math.floor(rate / 4))));
        // Not checked here: the target checks every record's CRC before it holds it.
        this.woken = false;
        const batch = await this.journal.readAsync(next, scratch, { verify: false });
        if (!batch.length) {
          // A wake that came while the read was under way is not lost: read again at once.
          if (!this.woken) await new Promise<void>((r) => (this.wakeUp = r));
          continue;
        }
        const first = batch[0]!;
        const last = batch[batch.length - 1]!;
        const start = first.payload.byteOffset - RECORD_HEADER;
        const raw = Buffer.from(
          first.payload.buffer,
          start,
          last.payload.byteOffset + last.payloadLength - start,
        );
        let body: Buffer = raw;
        let flags = 0;
        if (this.cctx && this.uncompressed > 0) this.uncompressed--;
        else if (this.cctx) {
          // A record larger than the scratch comes on its own: room to pack it too (at most a frame).
          const bound = zstd.compressBound(raw.length);
          if (this.packed!.length < bound) this.packed = Buffer.alloc(bound);
          const n = this.cctx.compress2(this.packed!, raw);
          if (n < raw.length) {
            body = this.packed!.subarray(0, n);
            flags = FLAG_ZSTD;
          }
          // Incompressible (random, encrypted, already compressed data): the next batches go as
          // they are, without spending the CPU on them; tried again after them.
          if (n > raw.length * INCOMPRESSIBLE && raw.length >= 64 * 1024) this.uncompressed = SKIP_BATCHES;
        }
        await this.opts.limit?.take(body.length);
        // Resolves once the socket took the bytes: the buffers can be reused.
        await writeFrame(this.socket, Frame.batch, body, flags, WRITE_PIECE);
        this.sentBytes += body.length;
        next = last.seq + 1;
      }
    } finally {
      this.stopped = true;
    }
    await acks;
  }

  private async readAcks(reader: FrameReader): Promise<void> {
    for (let f = await reader.next(); f; f = await reader.next()) {
      if (f.type === Frame.error) {
        this.socket.destroy();
        throw peerError(f.body);
      }
      if (f.type !== Frame.ack) continue;
      const ack = JSON.parse(f.body.toString()) as { held: number; applied?: AppliedPoint };
      this.held = ack.held;
      if (ack.applied) this.applied = ack.applied;
      // The target holds them durably: the journal lets go of them.
      if (this.opts.trim !== false) this.journal.trim(this.held + 1);
      this.opts.onAck?.(this.held);
    }
    this.stopped = true;
    this.wake();
    this.socket.destroy();
  }
}

/** The newest checkpoint the target has applied, as it reports it. */
export interface AppliedPoint {
  seq: number;
  time: number;
  name?: string;
}

export interface ReceiverOptions {
  group: string;
  /** The newest checkpoint applied, sent with every acknowledgement (the source's RPO). */
  applied?: () => AppliedPoint | undefined;
  /** Told after a batch is durable in the journal (the applier's cue). */
  onRecords?: (held: number) => void;
  /** The journal is full: resolves once it has let go of what it can (the applier released it). */
  makeRoom?: () => Promise<void>;
}

/**
 * The target side: checks the source's hello (the group it expects), welcomes it with the
 * highest sequence the journal holds, then appends each batch's records to the journal (each
 * checked: intact, in sequence; one it holds already is skipped), makes them durable and
 * acknowledges. Resolves when the link closes.
 */
export class JournalReceiver {
  private readonly dctx = new zstd.DCtx();
  private unpacked = Buffer.alloc(0);
  receivedBytes = 0;

  constructor(
    private readonly journal: ReplicationJournal,
    private readonly socket: Duplex,
    private readonly opts: ReceiverOptions,
  ) {
    this.durable = journal.nextSeq - 1;
  }

  async run(): Promise<void> {
    const reader = new FrameReader(this.socket, 'the replication source');
    try {
      const hello = await reader.next();
      if (!hello) return;
      const h =
        hello.type === Frame.hello
          ? (JSON.parse(hello.body.toString()) as { group?: string; version?: number })
          : {};
      if (h.group !== this.opts.group || h.version !== PROTOCOL_VERSION)
        throw new HavenError(
          'PROTOCOL',
          `the replication source asked for group ${h.group ?? '(none)'} (protocol ${h.version ?? '?'}); this link is for ${this.opts.group} (protocol ${PROTOCOL_VERSION})`,
        );
      const applied = this.opts.applied?.();
      await jsonFrame(this.socket, Frame.welcome, {
        held: this.journal.nextSeq - 1,
        ...(applied ? { applied } : {}),
      });
      this.welcomed = true;
      for (let f = await reader.next(); f; f = await reader.next()) {
        if (f.type !== Frame.batch)
          throw new HavenError('PROTOCOL', `the replication source sent frame ${f.type}`);
        this.receivedBytes += f.body.length;
        await this.take(f.flags & FLAG_ZSTD ? this.unpack(f.body) : f.body);
        // Made durable and acknowledged in the background while the next batches arrive.
        this.syncAndAcknowledge();
        if (this.failed) throw this.failed;
      }
      await this.acking;
      if (this.failed) throw this.failed;
      // The source ended the link: so does this side.
      this.socket.end();
    } catch (err) {
      if (!this.socket.destroyed)
        await jsonFrame(this.socket, Frame.error, { message: (err as Error).message }).catch(() => undefined);
      this.socket.destroy();
      // The link failing (reset, cut) is not the receiver's error: the source reconnects.
      if (err instanceof HavenError && err.code !== 'IO') throw err;
    }
  }

  /** Tells the source what the target holds durably and has applied (also after a checkpoint is applied). */
  async acknowledge(): Promise<void> {
    if (this.socket.destroyed || !this.welcomed) return;
    const applied = this.opts.applied?.();
    await jsonFrame(this.socket, Frame.ack, {
      held: this.durable,
      ...(applied ? { applied } : {}),
    });
  }

  private welcomed = false;
  /** The highest sequence the journal holds durably (what an acknowledgement may say). */
  private durable: number;
  private acking: Promise<void> | undefined;
  private more = false;
  private failed: Error | undefined;

  /**
   * Syncs the journal and acknowledges what the sync covered, in the background; calls while one
   * runs coalesce into one more round after it (one fdatasync for the batches that came meanwhile).
   */
  private syncAndAcknowledge(): void {
    if (this.acking) {
      this.more = true;
      return;
    }
    this.acking = (async () => {
      do {
        this.more = false;
        const held = this.journal.nextSeq - 1;
        await this.journal.sync();
        this.durable = held;
        await this.acknowledge();
        this.opts.onRecords?.(held);
      } while (this.more && !this.socket.destroyed);
    })()
      .catch((err: unknown) => {
        this.failed ??= err instanceof Error ? err : new Error(String(err));
        this.socket.destroy();
      })
      .finally(() => (this.acking = undefined));
  }

  private unpack(body: Buffer): Buffer {
    const size = zstd.getFrameContentSize(body);
    if (size === null || size === undefined || size > MAX_FRAME)
      throw new HavenError('PROTOCOL', 'the replication source sent a compressed batch of no stated size');
    if (this.unpacked.length < size) this.unpacked = Buffer.alloc(size);
    const n = this.dctx.decompress(this.unpacked, body);
    return this.unpacked.subarray(0, n);
  }

  /** Appends the batch's records the journal does not hold yet (waiting for room when it is full). */
  private async take(records: Buffer): Promise<void> {
    let at = 0;
    // Those held already (resent after a reconnect) are skipped.
    for (;;) {
      const h = decodeHeader(records.subarray(at, at + RECORD_HEADER));
      if (at < records.length && (!h || at + h.recordLength > records.length))
        throw new HavenError('PROTOCOL', `the replication source sent a damaged batch (at byte ${at})`);
      if (!h || h.seq >= this.journal.nextSeq) break;
      at += h.recordLength;
    }
    let waited = false;
    while (at < records.length) {
      const n = this.journal.appendEncodedRun(records.subarray(at));
      at += n;
      if (at === records.length) break;
      if (n === 0 && waited) {
        const h = decodeHeader(records.subarray(at, at + RECORD_HEADER))!;
        throw new HavenError(
          'NO_SPACE',
          `the target's replication journal (${this.journal.maxBytes} bytes) has no room for record ${h.seq} (${h.recordLength} bytes)`,
        );
      }
      // Full: the source waits (backpressure) while the applier frees what the volumes hold.
      await this.journal.sync();
      await this.opts.makeRoom?.();
      waited = n === 0;
    }
  }
}

function peerError(body: Buffer): HavenError {
  let message = body.toString();
  try {
    message = (JSON.parse(message) as { message: string }).message;
  } catch {
    // as it came
  }
  return new HavenError('PROTOCOL', `the replication peer refused: ${message}`);
}
