import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { HavenError, writeFileAtomic } from '../../common/index.js';
import type { StorageService } from '../../storage/index.js';
import { RecordKind, type CheckpointInfo } from './journal-format.js';
import type { ReplicationJournal } from './journal.js';
import { thinCheckpoints } from './checkpoint-thinning.js';

/** A checkpoint the replica holds: a snapshot `cp-SEQ` of every replica volume. */
export interface AppliedCheckpoint extends CheckpointInfo {
  seq: number;
  snapshot: string;
  /**
   * Later checkpoints with nothing written since this one (an idle group): the same image, so no
   * snapshot of their own; the newest of them. The replica is at least this recent.
   */
  through?: { seq: number; time: number };
}

export interface ApplierOptions {
  /** Checkpoints older than this (by their time) are deleted; the newest is always kept. Default 1 h. */
  keepMs?: number;
  /** Every checkpoint of this last stretch is kept; older ones are thinned (checkpoint-thinning.ts). Default 10 min. */
  denseMs?: number;
  /** Told after each checkpoint is applied. */
  onCheckpoint?: (cp: AppliedCheckpoint) => void;
  /** Bytes read from the journal at a time. */
  batchBytes?: number;
}

const STATE_FILE = 'checkpoints.json';
const snapshotName = (seq: number) => `cp-${seq}`;

/**
 * The target gateway's applier (decision 0012): applies the target journal's records to the
 * replica volumes strictly in sequence and, at each checkpoint record, flushes them and takes a
 * snapshot `cp-SEQ` of every one. The replica's consistent image is its newest checkpoint; the
 * live volumes between two may be torn and are never handed out. After a crash it re-applies from
 * the newest checkpoint: writes and zeroes re-applied in order over a state at or after it give
 * the same state, so the replica advances atomically from checkpoint to checkpoint. The list of
 * checkpoints (with their times and names) is `DIR/checkpoints.json`; one whose snapshots are not
 * all there (a crash while taking them) does not count.
 */
export class ReplicaApplier {
  private checkpoints: AppliedCheckpoint[] = [];
  private applied: number;
  private readonly scratch: Buffer;
  private running: Promise<void> | undefined;

  constructor(
    private readonly storage: StorageService,
    private readonly journal: ReplicationJournal,
    /** The replica volumes, by the group's volume number. */
    private readonly volumes: readonly string[],
    private readonly dir: string,
    private readonly opts: ApplierOptions = {},
  ) {
    this.scratch = Buffer.alloc(opts.batchBytes ?? 4 * 1024 * 1024);
    this.checkpoints = this.load();
    const newest = this.checkpoints[this.checkpoints.length - 1];
    this.dropOrphans(newest?.seq ?? 0);
    // Re-applied from the newest checkpoint on (the live volumes may be torn past it) — or from
    // the oldest record held, when the journal let go of records past it (release: they are
    // durable on the volumes, and re-applying the rest in order over that state is idempotent).
    this.applied = Math.max(newest?.seq ?? 0, journal.firstSeq - 1);
  }

  /** The checkpoints held, oldest first. */
  get history(): readonly AppliedCheckpoint[] {
    return this.checkpoints;
  }

  /** The newest checkpoint held: the replica's consistent image. */
  get newest(): AppliedCheckpoint | undefined {
    return this.checkpoints[this.checkpoints.length - 1];
  }

  /** The sequence of the last record applied to the live volumes. */
  get appliedSeq(): number {
    return this.applied;
  }

  /**
   * Applies what the journal holds past what was applied (the journal is made durable first:
   * nothing reaches a volume that a crash could take out of the journal). Calls coalesce: one
   * made while a pass runs (which may have looked at the journal's end before the call's records
   * came) gets one more pass after it, and resolves after that.
   */
  apply(): Promise<void> {
    this.again = true;
    this.running ??= (async () => {
      try {
        while (this.again) {
          this.again = false;
          await this.applyAll();
        }
      } finally {
        this.running = undefined;
      }
    })();
    return this.running;
  }

  /** An apply() came since the current pass began. */
  private again = false;

  /**
   * Applies what the journal holds, makes the replica volumes durable and lets the journal go of
   * what they now hold: room for more when no checkpoint comes for a long while (a resync).
   */
  async release(): Promise<void> {
    await this.apply();
    const upTo = this.applied; // what the flush covers (an apply meanwhile goes further)
    const devices = this.volumes.map((v) => this.storage.openDevice(v));
    await Promise.all(devices.map((d) => d.writeBack?.()));
    await Promise.all(devices.map((d) => d.flush()));
    this.journal.trim(upTo + 1);
  }

  private async applyAll(): Promise<void> {
    await this.journal.sync();
    const end = this.journal.nextSeq;
    const devices = this.volumes.map((v) => this.storage.openDevice(v));
    while (this.applied + 1 < end) {
      // Not checked again: every record was checked as it was appended, or replayed at opening.
      const batch = this.journal.read(this.applied + 1, this.scratch, { verify: false });
      if (!batch.length) break;
      for (const r of batch) {
        if (r.seq >= end) break;
        const dev = devices[r.volume];
        if (r.kind !== RecordKind.checkpoint && r.kind !== RecordKind.mark && !dev)
          throw new HavenError(
            'CORRUPT',
            `replication record ${r.seq} is for volume ${r.volume}, which the group does not have`,
          );
        if (r.kind === RecordKind.write || (r.kind === RecordKind.resync && r.payloadLength))
          await dev!.write(r.payload, r.offset);
        else if (r.kind === RecordKind.zero) await dev!.writeZeroes(r.offset, r.length);
        else if (r.kind === RecordKind.checkpoint) {
          const info = JSON.parse(r.payload.toString('utf8')) as CheckpointInfo;
          const newest = this.newest;
          if (newest && (newest.through?.seq ?? newest.seq) === this.applied && !newest.name && !info.name)
            this.advance(r.seq, info);
          else {
            // The volumes' data written back on the thread pool first: the snapshots' commits
            // (synchronous) then do not hold the event loop while the disk takes gigabytes.
            await Promise.all(devices.map((d) => d.writeBack?.()));
            // A volume holding this snapshot already (re-applied after a crash) is flushed; the
            // others' snapshots commit what was written before them.
            const snapshot = snapshotName(r.seq);
            await Promise.all(
              this.volumes.map((v, i) =>
                this.storage.listSnapshots(v).some((s) => s.name === snapshot)
                  ? devices[i]!.flush()
                  : undefined,
              ),
            );
            this.take(r.seq, info);
          }
        }
        this.applied = r.seq;
      }
    }
  }

  /**
   * A checkpoint right after the newest (nothing written between: an idle group, whose
   * checkpoints come as often as a busy one's): the same image, so it is recorded as the newest's
   * `through` — no snapshot taken, nothing flushed, and the newest keeps its sequence (a
   * checkpoint once applied stays findable by it). Named checkpoints are never merged. The list
   * is saved at most once a second for these (after a crash `through` is at most that much older;
   * the journal still holds the record, which is applied again).
   */
  private advance(seq: number, info: CheckpointInfo): void {
    const cp = this.checkpoints[this.checkpoints.length - 1]!;
    cp.through = { seq, time: info.time };
    this.settle(cp, Date.now() - this.savedAt >= 1000);
  }

  private savedAt = 0;

  /** Snapshots every replica volume at checkpoint `seq`, records it, and drops the expired and thinned ones. */
  private take(seq: number, info: CheckpointInfo): void {
    const snapshot = snapshotName(seq);
    for (const v of this.volumes)
      if (!this.storage.listSnapshots(v).some((s) => s.name === snapshot)) this.storage.snapshot(v, snapshot);
    const cp: AppliedCheckpoint = {
      seq,
      snapshot,
      time: info.time,
      ...(info.name ? { name: info.name } : {}),
    };
    this.checkpoints.push(cp);
    this.settle(cp, true);
  }

  /** After checkpoint `cp`: drops the expired and thinned ones, saves the list, trims the journal. */
  private settle(cp: AppliedCheckpoint, save: boolean): void {
    let expired = thinCheckpoints(this.checkpoints, {
      keepMs: this.opts.keepMs ?? 3_600_000,
      ...(this.opts.denseMs !== undefined ? { denseMs: this.opts.denseMs } : {}),
    });
    if (expired.length) {
      // A checkpoint someone cloned (to read it, rehearse, recover) stays until its clones go.
      const pinned = this.pinned();
      expired = expired.filter((c) => !this.volumes.some((v) => pinned.has(`${v}@${c.snapshot}`)));
    }
    const gone = new Set(expired);
    this.checkpoints = this.checkpoints.filter((c) => !gone.has(c));
    if (save || expired.length) this.save();
    // Deleted after the list no longer names them: a crash in between leaves only orphans.
    for (const c of expired) for (const v of this.volumes) this.storage.deleteSnapshot(v, c.snapshot);
    // Records before the newest checkpoint are never needed again.
    this.journal.trim(cp.through?.seq ?? cp.seq);
    this.opts.onCheckpoint?.(cp);
  }

  private load(): AppliedCheckpoint[] {
    const path = join(this.dir, STATE_FILE);
    if (!existsSync(path)) return [];
    let list: AppliedCheckpoint[];
    try {
      list = JSON.parse(readFileSync(path, 'utf8')) as AppliedCheckpoint[];
    } catch (err) {
      throw new HavenError('CORRUPT', `replica checkpoints ${path}: ${(err as Error).message}`);
    }
    const has = this.volumes.map((v) => new Set(this.storage.listSnapshots(v).map((s) => s.name)));
    return list.filter((c) => has.every((names) => names.has(c.snapshot)));
  }

  /**
   * Deletes `cp-N` snapshots the list does not name, up to `upTo` (a crash after the list dropped
   * them, or before it named them and the applier went on past them); later ones are taken again
   * when their checkpoint is re-applied, and kept.
   */
  private dropOrphans(upTo: number): void {
    const named = new Set(this.checkpoints.map((c) => c.snapshot));
    const pinned = this.pinned();
    for (const v of this.volumes)
      for (const s of this.storage.listSnapshots(v)) {
        const m = /^cp-(\d+)$/.exec(s.name);
        if (m && Number(m[1]) <= upTo && !named.has(s.name) && !pinned.has(`${v}@${s.name}`))
          this.storage.deleteSnapshot(v, s.name);
      }
  }

  /** Snapshots that clones were made from ("volume@snapshot"): they cannot be deleted yet. */
  private pinned(): Set<string> {
    const out = new Set<string>();
    for (const v of this.storage.listVolumes()) if (v.origin) out.add(v.origin);
    return out;
  }

  private save(): void {
    this.savedAt = Date.now();
    writeFileAtomic(join(this.dir, STATE_FILE), JSON.stringify(this.checkpoints));
  }
}
