import { existsSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import type { Duplex } from 'node:stream';
import { DirtyBitmap } from '../../block/index.js';
import { HavenError, writeFileAtomic } from '../../common/index.js';
import type { StorageService, TapDevice } from '../../storage/index.js';
import {
  DEFAULT_EXTENT_BYTES,
  checkExtentBytes,
  decodeChecksums,
  type ChecksumList,
  type ChecksumRequest,
} from './checksums.js';
import { ReplicationJournal } from './journal.js';
import { GroupRecorder } from './recorder.js';
import { scanGroup, type ScanSource } from './scan.js';
import { JournalSender, TokenBucket, type AppliedPoint } from './transceiver.js';
import { verifyGroup, type ExtentDifference, type VerifyOptions, type VerifyReport } from './verify.js';

export type ReplicationMode = 'initial-sync' | 'replicating' | 'bitmap' | 'resyncing' | 'paused';

export interface SourceStatus {
  group: string;
  mode: ReplicationMode;
  link: 'up' | 'down';
  /** Why the link is down, or what failed last. */
  error?: string;
  /** The highest sequence the target holds durably. */
  acknowledged: number;
  /** The newest checkpoint the target has applied. */
  applied?: AppliedPoint;
  /** Now minus the time of `applied`. */
  rpoMs?: number;
  journal: { bytes: number; maxBytes: number; firstSeq: number; nextSeq: number };
  /** A scan under way (initial sync or resync): where it is. */
  scan?: { volume: number; offset: number; readBytes: number };
  sentBytes: number;
  /** Synchronous mode, and whether it is running asynchronously for now (link down or slow). */
  sync?: { degraded: boolean };
}

export interface SourceGatewayOptions {
  group: string;
  /** Journal, state and bitmaps of the group. */
  dir: string;
  /** The taps of the group's volumes, in the group's volume order. */
  taps: readonly TapDevice[];
  /** Dials the target gateway (mutual TLS): a fresh link each time. */
  connect: () => Promise<Duplex>;
  checkpointMs?: number;
  compress?: boolean;
  /** Bytes per second on the link (0: unlimited); `setLimit` changes it. */
  bytesPerSecond?: number;
  journalBytes?: number;
  /** Wait between attempts to reach the target. */
  retryMs?: number;
  /** Told on every change of mode or link. */
  onChange?: (s: SourceStatus) => void;
  /**
   * Synchronous: a guest write is acknowledged once the target's journal holds it (no loss on a
   * site failure). When the link is down, or the target takes longer than `syncTimeoutMs`
   * (default 2 s), writes go on asynchronously (`degraded` in the status) until it catches up:
   * the network never stops the guests.
   */
  sync?: boolean;
  syncTimeoutMs?: number;
  /**
   * The source volumes' storage and names, in the taps' order: verify snapshots them at its
   * checkpoint (the stable image it compares with the replica's).
   */
  storage?: StorageService;
  volumes?: readonly string[];
  /**
   * The target's checksums per extent: at the target, `checksumReplica` (or
   * `TargetGateway.checksums`), called over the site's RPC channel. Needed by verify and by the
   * compare syncs; given, the full resync after a crash of this daemon is a compare sync too.
   */
  remoteChecksums?: (req: ChecksumRequest) => Promise<ChecksumList>;
  /**
   * 'compare': the replica volumes already hold a similar copy (a restored backup), so the
   * initial sync sends only the extents whose checksums differ; 'copy' (default): the replica is
   * empty, every allocated extent is sent.
   */
  initialSync?: 'copy' | 'compare';
  /** Extent size of the checksums (default 1 MiB). */
  extentBytes?: number;
}

/** What the gateway keeps across restarts (DIR/state.json). */
interface State {
  /** The initial sync completed. */
  synced: boolean;
  /** Set while the gateway runs, cleared by a clean stop: set at start means it crashed. */
  running: boolean;
  /** A scan to finish: its kind and where it goes on from. */
  scan?: { kind: 'initial' | 'resync' | 'full'; from?: { volume: number; offset: number } };
}

/** The overflow bitmaps' grain: what a resync sends for a small write. */
const GRANULARITY = 16 * 1024;

/**
 * The source side of one consistency group (decision 0012): the recorder journaling every change
 * of the group's volumes, the link to the target (reconnected while the gateway runs), and the
 * scans that bring the replica level — the initial sync, the resync of what bitmap mode marked
 * (the journal full, e.g. through a long outage), and after a crash of this daemon a full one.
 * No checkpoint is taken while a scan runs: the target's newest checkpoint stays its consistent
 * image until the first one after the scan. Guest writes never wait for the network.
 */
export class SourceGateway {
  readonly journal: ReplicationJournal;
  private readonly recorder: GroupRecorder;
  private readonly bitmaps: DirtyBitmap[];
  private readonly limit: TokenBucket;
  private state: State;
  private mode: ReplicationMode = 'replicating';
  /** The checkpoint closing the last scan, until the target has applied it. */
  private settling: number | undefined;
  private paused = false;
  private stopped = false;
  private sender: JournalSender | undefined;
  private error: string | undefined;
  private scanAt: SourceStatus['scan'];
  private acked = 0;
  private applied: AppliedPoint | undefined;
  private sent = 0;
  private wakeLink: (() => void) | undefined;
  private roomWaiters: (() => void)[] = [];
  private overflowed = false;
  private loops: Promise<void>[] = [];
  private readonly stopping = new AbortController();
  /** Synchronous mode: writes waiting for the target, oldest first. */
  private held: { seq: number; since: number; release: () => void }[] = [];
  private holdTimer: NodeJS.Timeout | undefined;
  private degraded = false;
  private verifying = false;

  constructor(private readonly opts: SourceGatewayOptions) {
    if (opts.volumes && opts.volumes.length !== opts.taps.length)
      throw new HavenError(
        'INVALID_ARGUMENT',
        `replication group ${opts.group}: ${opts.volumes.length} volume names for ${opts.taps.length} taps`,
      );
    if (opts.initialSync === 'compare' && !opts.remoteChecksums)
      throw new HavenError(
        'INVALID_ARGUMENT',
        `replication group ${opts.group}: a compare initial sync needs the target's checksums (remoteChecksums)`,
      );
    checkExtentBytes(opts.extentBytes ?? DEFAULT_EXTENT_BYTES);
    mkdirSync(opts.dir, { recursive: true });
    this.journal = ReplicationJournal.open(join(opts.dir, 'journal'), {
      ...(opts.journalBytes ? { maxBytes: opts.journalBytes } : {}),
    });
    this.limit = new TokenBucket(opts.bytesPerSecond ?? 0);
    this.bitmaps = opts.taps.map((tap, i) => this.loadBitmap(i, tap.size));
    this.recorder = new GroupRecorder(
      this.journal,
      opts.taps.map((tap, i) => ({ tap, overflow: this.bitmaps[i]! })),
      {
        ...(opts.checkpointMs ? { checkpointMs: opts.checkpointMs } : {}),
        ...(opts.sync ? { hold: (seq: number) => this.hold(seq) } : {}),
        onRecord: () => this.sender?.wake(),
        onOverflow: (reason) => {
          this.overflowed = true;
          this.error = reason;
          this.setMode('bitmap');
        },
      },
    );
    this.state = this.loadState();
  }

  start(): void {
    const crashed = this.state.running;
    this.state.running = true;
    // After a crash the bitmaps are gone and the journal's tail may lack a write the volume has
    // (decision 0012, 6): everything is scanned again. An initial sync goes on where it was.
    if (crashed && this.state.synced) this.state.scan = { kind: 'full' };
    this.saveState();
    this.dropVerifySnapshots();
    // No consistent point until the scans the state calls for have run.
    this.recorder.suspended = this.overflowed || !!this.state.scan || !this.state.synced;
    this.recorder.start();
    this.loops = [this.linkLoop(), this.syncLoop()];
  }

  /** Stops cleanly: the journal durable, the bitmaps saved; the next start resumes without a full resync. */
  async stop(): Promise<void> {
    this.stopped = true;
    this.stopping.abort();
    this.releaseHeld(Infinity, true);
    this.recorder.stop();
    this.sender?.stop();
    this.wakeLink?.();
    for (const w of this.roomWaiters.splice(0)) w();
    await Promise.allSettled(this.loops);
    await this.journal.sync();
    await this.journal.close();
    this.bitmaps.forEach((b, i) => b.save(this.bitmapPath(i)));
    this.state.running = false;
    this.saveState();
  }

  pause(): void {
    this.paused = true;
    this.sender?.stop();
    this.setMode('paused');
  }

  resume(): void {
    this.paused = false;
    this.wakeLink?.();
    this.setMode(
      this.overflowed
        ? 'bitmap'
        : this.state.scan || this.settling !== undefined
          ? 'resyncing'
          : 'replicating',
    );
  }

  /** A checkpoint now (named); undefined while there is no consistent point (a scan, bitmap mode). */
  checkpoint(name?: string): number | undefined {
    const seq = this.recorder.checkpoint(name);
    this.sender?.wake();
    return seq;
  }

  setLimit(bytesPerSecond: number): void {
    this.limit.bytesPerSecond = bytesPerSecond;
  }

  status(): SourceStatus {
    return {
      group: this.opts.group,
      mode: this.mode,
      link: this.sender ? 'up' : 'down',
      ...(this.error ? { error: this.error } : {}),
      acknowledged: this.acked,
      ...(this.applied ? { applied: this.applied, rpoMs: Date.now() - this.applied.time } : {}),
      journal: {
        bytes: this.journal.bytes,
        maxBytes: this.journal.maxBytes,
        firstSeq: this.journal.firstSeq,
        nextSeq: this.journal.nextSeq,
      },
      ...(this.scanAt ? { scan: this.scanAt } : {}),
      sentBytes: this.sent + (this.sender?.sentBytes ?? 0),
      ...(this.opts.sync ? { sync: { degraded: this.degraded } } : {}),
    };
  }

  /**
   * What the guest's acknowledgement of record `seq` waits for in synchronous mode: the target
   * holding it — or nothing while the link is down or slow (degraded; back once it caught up).
   */
  private hold(seq: number): Promise<void> | undefined {
    if (this.stopped) return undefined;
    if (!this.sender || this.degraded) {
      if (!this.degraded) {
        this.degraded = true;
        this.changed();
      }
      return undefined;
    }
    return new Promise((release) => {
      this.held.push({ seq, since: performance.now(), release });
      this.holdTimer ??= setInterval(() => this.checkHeld(), Math.max(10, this.syncTimeout / 4));
    });
  }

  private get syncTimeout(): number {
    return this.opts.syncTimeoutMs ?? 2000;
  }

  /** Releases the writes the target holds; all of them (degraded) when it takes too long or the link is gone. */
  private releaseHeld(upTo: number, all = false): void {
    let n = 0;
    while (n < this.held.length && (all || this.held[n]!.seq <= upTo)) this.held[n++]!.release();
    if (n) this.held = this.held.slice(n);
    if (!this.held.length) {
      clearInterval(this.holdTimer);
      this.holdTimer = undefined;
    }
  }

  private checkHeld(): void {
    const oldest = this.held[0];
    if (oldest && performance.now() - oldest.since > this.syncTimeout) this.degrade();
  }

  private degrade(): void {
    if (!this.degraded) {
      this.degraded = true;
      this.changed();
    }
    this.releaseHeld(Infinity, true);
  }

  /** Connects, ships until the link fails, waits, again — until stopped. */
  private async linkLoop(): Promise<void> {
    while (!this.stopped) {
      if (!this.paused) {
        let sender: JournalSender | undefined;
        try {
          const socket = await this.opts.connect();
          // Stopped or paused while connecting: this link is not wanted.
          if (this.stopped || this.paused) {
            socket.destroy();
            continue;
          }
          sender = new JournalSender(this.journal, socket, {
            group: this.opts.group,
            ...(this.opts.compress ? { compress: true } : {}),
            limit: this.limit,
            onAck: (held) => {
              this.acked = held;
              this.releaseHeld(held);
              // Caught up after running asynchronously: synchronous again.
              if (this.degraded && held >= this.journal.nextSeq - 1) {
                this.degraded = false;
                this.changed();
              }
              this.applied = sender!.applied ?? this.applied;
              this.settleIfApplied();
              for (const w of this.roomWaiters.splice(0)) w();
            },
          });
          this.sender = sender;
          this.error = undefined;
          this.changed();
          await sender.run();
        } catch (err) {
          this.error = (err as Error).message;
        } finally {
          if (sender) this.sent += sender.sentBytes;
          this.sender = undefined;
          // No link: held writes go on (degraded) rather than wait for it.
          if (this.held.length) this.degrade();
          this.changed();
        }
      }
      if (this.stopped) break;
      await new Promise<void>((r) => {
        this.wakeLink = r;
        setTimeout(r, this.opts.retryMs ?? 1000).unref();
      });
    }
  }

  /** Runs the scans the state calls for, and after bitmap mode the resync. */
  private async syncLoop(): Promise<void> {
    while (!this.stopped) {
      try {
        if (!this.state.synced || this.state.scan) await this.runScan();
        else if (this.overflowed) {
          // Back to journal mode once the link drained half the journal, then resync.
          while (this.journal.bytes > this.journal.maxBytes / 2) await this.waitForRoom();
          this.overflowed = false;
          this.recorder.suspended = true;
          this.recorder.resume();
          this.state.scan = { kind: 'resync' };
          this.saveState();
        } else await this.waitForRoom();
      } catch (err) {
        if (this.stopped) return;
        // A scan that failed (a read error, say) is tried again; the state shows why.
        this.error = (err as Error).message;
        this.changed();
        await new Promise((r) => setTimeout(r, this.opts.retryMs ?? 1000).unref());
      }
    }
  }

  private async runScan(): Promise<void> {
    const kind = this.state.scan?.kind ?? 'initial';
    this.state.scan = { kind, ...(this.state.scan?.from ? { from: this.state.scan.from } : {}) };
    this.saveState();
    this.setMode(kind === 'initial' ? 'initial-sync' : 'resyncing');
    this.recorder.suspended = true;
    // A resync covers what bitmap mode marked; the bits are cleared before the scan (a change
    // meanwhile is journaled again) and marked back if it fails.
    const sources: ScanSource[] = this.opts.taps.map((tap, i) => {
      if (kind !== 'resync') return { tap };
      const ranges = [...this.bitmaps[i]!.dirtyExtents()];
      return { tap, ranges };
    });
    const marked = kind === 'resync' ? sources.map((s) => s.ranges ?? []) : [];
    if (kind === 'resync') for (const b of this.bitmaps) b.clear();
    let savedAt = Date.now();
    try {
      // What the target holds, compared extent by extent: a seeded replica, or after a crash here.
      const compare =
        (kind === 'initial' && this.opts.initialSync === 'compare') ||
        (kind === 'full' && this.opts.remoteChecksums)
          ? await this.remoteSums()
          : undefined;
      await scanGroup(this.journal, sources, {
        ...(compare ? { compare } : {}),
        zeroes: kind !== 'initial',
        signal: this.stopping.signal,
        ...(this.state.scan.from ? { from: this.state.scan.from } : {}),
        waitForRoom: () => this.waitForRoom(),
        onProgress: (at) => {
          this.scanAt = at;
          this.sender?.wake();
          // Where to resume, at most once a second, once the journal holds what was scanned.
          if (Date.now() - savedAt < 1000) return;
          savedAt = Date.now();
          const from = { volume: at.volume, offset: at.offset };
          // A failed sync only means the resume point stays where it was.
          this.journal.sync().then(
            () => {
              if (this.state.scan?.kind !== kind || this.stopped) return;
              this.state.scan = { kind, from };
              this.saveState();
            },
            () => undefined,
          );
        },
      });
    } catch (err) {
      marked.forEach((ranges, i) => ranges.forEach((r) => this.bitmaps[i]!.markDirty(r.offset, r.length)));
      if (this.stopped) return;
      throw err;
    }
    if (this.stopped) return;
    this.recorder.suspended = false;
    this.scanAt = undefined;
    delete this.state.scan;
    this.state.synced = true;
    this.saveState();
    // The journal overflowed during the scan: bitmap mode, and another resync follows.
    if (this.overflowed) return this.setMode('bitmap');
    // Still syncing until the target applied the checkpoint that closes the scan: only then is
    // the replica consistent at a point after the outage (the journal may still be draining).
    this.settling = this.checkpoint(kind === 'initial' ? 'initial-sync' : 'resync');
    if (this.settling === undefined) this.setMode('replicating');
    else this.settleIfApplied();
  }

  private settleIfApplied(): void {
    if (this.settling === undefined) return;
    if (this.overflowed) this.settling = undefined;
    else if ((this.applied?.seq ?? 0) >= this.settling) {
      this.settling = undefined;
      this.setMode('replicating');
    }
  }

  /**
   * Verify (decision 0014, verify.ts): compares the replica with this source at a checkpoint
   * taken now, per extent; with `repair` resends what differs through the journal. Only while
   * replicating: in any other mode the replica is not meant to equal a checkpoint yet.
   */
  async verify(opts: VerifyOptions = {}): Promise<VerifyReport> {
    const { storage, volumes, remoteChecksums, group, taps } = this.opts;
    if (!storage || !volumes || !remoteChecksums)
      throw new HavenError(
        'INVALID_ARGUMENT',
        `replication group ${group} cannot be verified: its gateway was made without the source storage, the volume names and the target's checksums`,
      );
    if (this.verifying)
      throw new HavenError(
        'CONFLICT',
        `replication group ${group} is being verified already: wait for that verify to end`,
      );
    this.refuseUnlessReplicating('verified');
    this.verifying = true;
    try {
      return await verifyGroup(
        {
          group,
          storage,
          volumes,
          taps,
          remoteChecksums,
          refuse: (what) => this.refuseUnlessReplicating(what),
          checkpoint: (name) => this.checkpoint(name),
          why: () => this.recorder.state.reason ?? this.mode,
          waitApplied: (seq, ms) => this.waitApplied(seq, ms),
          resend: (ranges) => this.resend(ranges),
        },
        { ...opts, extentBytes: opts.extentBytes ?? this.opts.extentBytes ?? DEFAULT_EXTENT_BYTES },
      );
    } catch (err) {
      if (this.stopped)
        throw new HavenError('CANCELLED', `replication group ${group} stopped during its verify`, {
          cause: err,
        });
      throw err;
    } finally {
      this.verifying = false;
    }
  }

  /** Resends ranges' current content through the journal (a resync scan of them). */
  private async resend(ranges: readonly ExtentDifference[]): Promise<number> {
    const result = await scanGroup(
      this.journal,
      this.opts.taps.map((tap, i) => ({ tap, ranges: ranges.filter((d) => d.volume === i) })),
      {
        zeroes: true,
        signal: this.stopping.signal,
        waitForRoom: () => this.waitForRoom(),
        onProgress: () => this.sender?.wake(),
      },
    );
    return result.readBytes + result.zeroBytes;
  }

  private refuseUnlessReplicating(what: string): void {
    const g = `replication group ${this.opts.group}`;
    if (this.paused) throw new HavenError('CONFLICT', `${g} is paused: resume it, then it can be ${what}`);
    if (this.mode === 'initial-sync')
      throw new HavenError(
        'CONFLICT',
        `${g} is in its initial sync: the replica has no checkpoint to compare until it completes; it can be ${what} once it is replicating`,
      );
    if (this.mode === 'bitmap' || this.mode === 'resyncing' || this.overflowed || this.state.scan)
      throw new HavenError(
        'CONFLICT',
        `${g} is ${this.mode === 'resyncing' ? 'resyncing' : 'in bitmap mode'}: the replica lags by what the bitmaps mark; it can be ${what} once the resync has completed and it is replicating`,
      );
  }

  /** Resolves once the target has applied checkpoint `seq` (or a later one). */
  async waitApplied(seq: number, timeoutMs: number): Promise<void> {
    const deadline = performance.now() + timeoutMs;
    while ((this.applied?.seq ?? 0) < seq) {
      const left = deadline - performance.now();
      if (left <= 0)
        throw new HavenError(
          'TIMEOUT',
          `replication group ${this.opts.group}: the target has not applied checkpoint ${seq} within ${Math.round(timeoutMs / 1000)} s (link ${this.sender ? 'up' : `down${this.error ? `: ${this.error}` : ''}`}); verify again once it has caught up`,
        );
      let timer: NodeJS.Timeout | undefined;
      const ack = this.waitForRoom();
      ack.catch(() => undefined); // rejected at a stop after the timer won: handled by the race or not at all
      await Promise.race([ack, new Promise<void>((r) => (timer = setTimeout(r, left)))]).finally(() =>
        clearTimeout(timer),
      );
    }
  }

  /** The target's sums of its live replica volumes (a compare sync). */
  private async remoteSums(): Promise<{ extentBytes: number; sums: Buffer[] }> {
    const extentBytes = this.opts.extentBytes ?? DEFAULT_EXTENT_BYTES;
    const list = await this.opts.remoteChecksums!({ extentBytes });
    return {
      extentBytes,
      sums: decodeChecksums(
        list,
        this.opts.taps.map((t) => t.size),
        extentBytes,
      ),
    };
  }

  /** Snapshots a verify left behind (this daemon stopped during one). */
  private dropVerifySnapshots(): void {
    const { storage, volumes } = this.opts;
    if (!storage || !volumes) return;
    for (const v of volumes)
      for (const s of storage.listSnapshots(v))
        if (/^replication-verify-\d+$/.test(s.name)) storage.deleteSnapshot(v, s.name);
  }

  /** Resolves at the next acknowledgement from the target; rejects once stopping. */
  private waitForRoom(): Promise<void> {
    return new Promise((resolve, reject) => {
      const signal = this.stopping.signal;
      if (signal.aborted) return reject(signal.reason as Error);
      this.roomWaiters.push(() => (signal.aborted ? reject(signal.reason as Error) : resolve()));
    });
  }

  private setMode(mode: ReplicationMode): void {
    if (this.paused && mode !== 'paused') return;
    if (mode === this.mode) return;
    this.mode = mode;
    this.changed();
  }

  private changed(): void {
    this.opts.onChange?.(this.status());
  }

  private bitmapPath(i: number): string {
    return join(this.opts.dir, 'bitmaps', `${i}.bitmap`);
  }

  private loadBitmap(i: number, size: number): DirtyBitmap {
    const path = this.bitmapPath(i);
    mkdirSync(join(this.opts.dir, 'bitmaps'), { recursive: true });
    if (!existsSync(path)) return new DirtyBitmap(`volume-${i}`, size, GRANULARITY);
    const b = DirtyBitmap.load(path);
    // Loaded once: a crash from now on must not find it looking clean.
    rmSync(path);
    if (b.dirtyBytes() > 0) this.overflowed = true;
    return b;
  }

  private loadState(): State {
    const path = join(this.opts.dir, 'state.json');
    if (!existsSync(path)) return { synced: false, running: false };
    try {
      return JSON.parse(readFileSync(path, 'utf8')) as State;
    } catch (err) {
      throw new HavenError('CORRUPT', `replication state ${path}: ${(err as Error).message}`);
    }
  }

  private saveState(): void {
    writeFileAtomic(join(this.opts.dir, 'state.json'), JSON.stringify(this.state));
  }
}
