import { createRequire } from 'node:module';
import type { Duplex } from 'node:stream';
import type * as Zstd from 'zstd-napi/binding.js';
import { HavenError } from '../../common/index.js';
import { FLAG_ZSTD, Frame, FrameReader, MAX_FRAME, jsonFrame, writeFrame } from './frames.js';
import { RECORD_HEADER, decodeHeader } from './journal-format.js';
import type { ReplicationJournal } from './journal.js';

const zstd = createRequire(import.meta.url)('zstd-napi/binding') as typeof Zstd;
const PROTOCOL_VERSION = 1;

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
  private held = 0;
  private readonly scratch: Buffer[];
  private packed: Buffer | undefined;
  private readonly cctx: InstanceType<typeof zstd.CCtx> | undefined;
  /** Bytes put on the wire (frame bodies), for the counters and the tests. */
  sentBytes = 0;

  constructor(
    private readonly journal: ReplicationJournal,
    private readonly socket: Duplex,
    private readonly opts: SenderOptions,
  ) {
    const size = opts.batchBytes ?? 1024 * 1024;
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
        const scratch = this.scratch[turn++ % 2]!;
        const batch = this.journal.read(next, scratch);
        if (!batch.length) {
          await new Promise<void>((r) => (this.wakeUp = r));
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
        if (this.cctx) {
          // A record larger than the scratch comes on its own: room to pack it too (at most a frame).
          const bound = zstd.compressBound(raw.length);
          if (this.packed!.length < bound) this.packed = Buffer.alloc(bound);
          const n = this.cctx.compress2(this.packed!, raw);
          if (n < raw.length) {
            body = this.packed!.subarray(0, n);
            flags = FLAG_ZSTD;
          }
        }
        await this.opts.limit?.take(body.length);
        // Resolves once the socket took the bytes: the buffers can be reused.
        await writeFrame(this.socket, Frame.batch, body, flags);
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
  ) {}

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
        await this.journal.sync();
        const held = this.journal.nextSeq - 1;
        await this.acknowledge();
        this.opts.onRecords?.(held);
      }
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

  /** Tells the source what the target holds and has applied (also after a checkpoint is applied). */
  async acknowledge(): Promise<void> {
    if (this.socket.destroyed || !this.welcomed) return;
    const applied = this.opts.applied?.();
    await jsonFrame(this.socket, Frame.ack, {
      held: this.journal.nextSeq - 1,
      ...(applied ? { applied } : {}),
    });
  }

  private welcomed = false;

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
    while (at < records.length) {
      const h = decodeHeader(records.subarray(at, at + RECORD_HEADER));
      if (!h || at + h.recordLength > records.length)
        throw new HavenError('PROTOCOL', `the replication source sent a damaged batch (at byte ${at})`);
      const rec = records.subarray(at, at + h.recordLength);
      at += h.recordLength;
      if (h.seq < this.journal.nextSeq) continue; // held already (resent after a reconnect)
      if (this.journal.appendEncoded(rec) !== undefined) continue;
      // Full: the source waits (backpressure) while the applier frees what the volumes hold.
      await this.journal.sync();
      await this.opts.makeRoom?.();
      if (this.journal.appendEncoded(rec) === undefined)
        throw new HavenError(
          'NO_SPACE',
          `the target's replication journal (${this.journal.maxBytes} bytes) has no room for record ${h.seq} (${h.recordLength} bytes)`,
        );
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
