import type { ChangeTracker, TapDevice, TapEvent } from '../../storage/index.js';
import { RecordKind } from './journal-format.js';
import type { ReplicationJournal } from './journal.js';

/** One volume of a consistency group: its tap, and where changes go in bitmap mode. */
export interface RecordedVolume {
  tap: TapDevice;
  /** Marked with every change the journal could not take (a persistent dirty bitmap). */
  overflow: ChangeTracker;
}

export interface RecorderOptions {
  /** A checkpoint every this many ms while journaling; 0 or absent: only on request. */
  checkpointMs?: number;
  /** Told once when the recorder leaves journal mode (the journal full, or failing). */
  onOverflow?: (reason: string) => void;
  now?: () => number;
  /**
   * Synchronous replication: what the guest's acknowledgement of the change journaled as `seq`
   * waits for (the target holding it); undefined: nothing.
   */
  hold?: (seq: number) => Promise<void> | undefined;
  /** Told after each record is appended (the sender's cue). */
  onRecord?: () => void;
}

/**
 * The source gateway's receiver (decision 0012): subscribes to the taps of every volume of a
 * consistency group and appends their changes to the group's journal in the order the tap
 * callbacks run. Those run after a change is applied and before it is acknowledged, on one
 * event loop, so a write that completed before another was issued always gets the lower
 * sequence, on any volume: every prefix of the journal is a crash-consistent image of the
 * group, and a checkpoint record marks one. A FLUSH (or FUA write) of any group volume waits
 * for the journal to be durable too. A guest write never fails or waits because of the journal:
 * when it is full or failing, the recorder goes to bitmap mode and only marks what changed.
 */
export class GroupRecorder {
  private mode: 'journal' | 'bitmap' = 'journal';
  private reason: string | undefined;
  private readonly undo: (() => void)[] = [];
  private timer: NodeJS.Timeout | undefined;
  private readonly now: () => number;
  /** While a scan runs the group has no consistent point: no checkpoint is taken. */
  suspended = false;

  constructor(
    private readonly journal: ReplicationJournal,
    private readonly volumes: readonly RecordedVolume[],
    private readonly opts: RecorderOptions = {},
  ) {
    this.now = opts.now ?? Date.now;
  }

  /** 'journal', or 'bitmap' (with why) once the journal could not take a change. */
  get state(): { mode: 'journal' | 'bitmap'; reason?: string } {
    return this.reason ? { mode: this.mode, reason: this.reason } : { mode: this.mode };
  }

  start(): void {
    this.volumes.forEach((v, i) => {
      this.undo.push(v.tap.subscribe((ev) => this.record(i, ev)));
      this.undo.push(
        v.tap.addFlushBarrier(() => (this.mode === 'journal' ? this.journal.sync() : undefined)),
      );
    });
    this.startTimer();
  }

  /** Back to journal mode after bitmap mode (the journal has room again; a resync follows). */
  resume(): void {
    if (this.mode === 'journal') return;
    this.mode = 'journal';
    this.reason = undefined;
    this.startTimer();
  }

  private startTimer(): void {
    clearInterval(this.timer);
    if (this.opts.checkpointMs) {
      this.timer = setInterval(() => this.checkpoint(), this.opts.checkpointMs);
      this.timer.unref();
    }
  }

  /**
   * Appends a checkpoint: a consistent point of the whole group (everything before it). Returns
   * its sequence; undefined in bitmap mode or while suspended (there is no consistent point).
   */
  checkpoint(name?: string): number | undefined {
    if (this.mode !== 'journal' || this.suspended) return undefined;
    const info = JSON.stringify(name ? { time: this.now(), name } : { time: this.now() });
    return this.append(RecordKind.checkpoint, 0, 0, 0, [Buffer.from(info)]);
  }

  stop(): void {
    clearInterval(this.timer);
    for (const u of this.undo.splice(0)) u();
  }

  private record(volume: number, ev: TapEvent): Promise<void> | undefined {
    if (this.mode === 'journal') {
      const kind =
        ev.op === 'write' ? RecordKind.write : ev.op === 'zero' ? RecordKind.zero : RecordKind.resync;
      const seq = this.append(kind, volume, ev.offset, ev.length, ev.op === 'write' ? ev.data : undefined);
      if (seq !== undefined) return this.opts.hold?.(seq);
    }
    this.volumes[volume]!.overflow.markDirty(ev.offset, ev.length);
    return undefined;
  }

  private append(
    kind: RecordKind,
    volume: number,
    offset: number,
    length: number,
    payload?: readonly Uint8Array[],
  ): number | undefined {
    let seq: number | undefined;
    try {
      seq = this.journal.append(kind, volume, offset, length, payload);
    } catch (err) {
      this.overflow(`the journal failed: ${(err as Error).message}`);
      return undefined;
    }
    if (seq === undefined) this.overflow(`the journal is full (${this.journal.maxBytes} bytes)`);
    else this.opts.onRecord?.();
    return seq;
  }

  private overflow(reason: string): void {
    if (this.mode === 'bitmap') return;
    this.mode = 'bitmap';
    this.reason = reason;
    clearInterval(this.timer);
    this.opts.onOverflow?.(reason);
  }
}
