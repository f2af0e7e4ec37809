import { join } from 'node:path';
import type { Duplex } from 'node:stream';
import type { StorageService } from '../../storage/index.js';
import { ReplicaApplier, type AppliedCheckpoint } from './applier.js';
import { checksumReplica, type ChecksumList, type ChecksumRequest } from './checksums.js';
import { ReplicationJournal } from './journal.js';
import { JournalReceiver, type AppliedPoint } from './transceiver.js';

export interface TargetGatewayOptions {
  group: string;
  /** The gateway's directory: its journal and checkpoint list. */
  dir: string;
  storage: StorageService;
  /** The replica volumes, by the group's volume number. */
  volumes: readonly string[];
  /** Checkpoints kept (ms; default 1 h). */
  keepMs?: number;
  journalBytes?: number;
  onCheckpoint?: (cp: AppliedCheckpoint) => void;
  onError?: (err: Error) => void;
}

/**
 * The target side of one group (decision 0012, 4): its journal, its applier, and the receiver of
 * the source's current link. Records are applied as soon as they are durable; each applied
 * checkpoint is reported to the source at once (its RPO).
 */
export class TargetGateway {
  readonly journal: ReplicationJournal;
  readonly applier: ReplicaApplier;
  private receiver: JournalReceiver | undefined;
  private applying: Promise<void> = Promise.resolve();
  receivedBytes = 0;

  constructor(private readonly opts: TargetGatewayOptions) {
    this.journal = ReplicationJournal.open(join(opts.dir, 'journal'), {
      ...(opts.journalBytes ? { maxBytes: opts.journalBytes } : {}),
    });
    this.applier = new ReplicaApplier(opts.storage, this.journal, opts.volumes, opts.dir, {
      ...(opts.keepMs !== undefined ? { keepMs: opts.keepMs } : {}),
      onCheckpoint: (cp) => {
        void this.receiver?.acknowledge().catch(() => undefined);
        opts.onCheckpoint?.(cp);
      },
    });
  }

  /** The newest checkpoint applied: the replica's consistent image. */
  get newest(): AppliedCheckpoint | undefined {
    return this.applier.newest;
  }

  /**
   * The replica's checksums per extent, for the source's verify or compare sync (the site answers
   * the source's RPC with this): at checkpoint `req.checkpoint`, or of the live volumes.
   */
  checksums(req: ChecksumRequest, signal?: AbortSignal): Promise<ChecksumList> {
    return checksumReplica(this.opts.storage, this.opts.volumes, req.checkpoint, req.extentBytes, signal);
  }

  /** Takes the source's link (a new one replaces the old); resolves when it closes. */
  async accept(socket: Duplex): Promise<void> {
    const receiver = new JournalReceiver(this.journal, socket, {
      group: this.opts.group,
      applied: () => point(this.applier.newest),
      onRecords: () => this.apply(),
      makeRoom: () => this.applier.release(),
    });
    this.receiver = receiver;
    try {
      await receiver.run();
    } catch (err) {
      this.opts.onError?.(err as Error);
    } finally {
      this.receivedBytes += receiver.receivedBytes;
      if (this.receiver === receiver) this.receiver = undefined;
    }
  }

  /** Applies what is durable (in the background; errors go to onError). */
  apply(): void {
    this.applying = this.applying
      .then(() => this.applier.apply())
      .catch((err: Error) => this.opts.onError?.(err));
  }

  async close(): Promise<void> {
    await this.applying;
    await this.journal.close();
  }
}

function point(cp: AppliedCheckpoint | undefined): AppliedPoint | undefined {
  // An idle group's newest holds through later checkpoints: the replica is that recent.
  if (cp?.through) return { seq: cp.through.seq, time: cp.through.time };
  return cp && { seq: cp.seq, time: cp.time, ...(cp.name ? { name: cp.name } : {}) };
}
