import { join } from 'node:path';
import type { TLSSocket } from 'node:tls';
import { errorMessage, invalidArgument, logger } from '../../common/index.js';
import {
  SourceGateway,
  TargetGateway,
  type AppliedCheckpoint,
  type ChecksumList,
  type ChecksumRequest,
  type ReplicationMode,
  type SourceStatus,
} from '../../protection/index.js';
import type { StorageService } from '../../storage/index.js';
import type { EventLog } from './events.js';
import type { PeerLinks } from './peer-links.js';
import type { SourceConfig, TargetConfig } from './replication-groups.js';

const log = logger('replication');

/** Summing a replica reads all of it (about 0.8 s per GiB here): a large group takes minutes. */
const CHECKSUM_CALL = { timeoutMs: 60 * 60 * 1000 };

/** What a source may ask of the target's sums: a checkpoint's snapshots or the live replica. */
export function checksumArgs(raw: unknown): ChecksumRequest {
  const a = raw as { checkpoint?: unknown; extentBytes?: unknown } | null;
  const e = a?.extentBytes;
  if (typeof e !== 'number' || !Number.isSafeInteger(e) || e < 4096 || e % 4096 || e > 64 * 1024 * 1024)
    throw invalidArgument('replication.checksums: extentBytes must be a multiple of 4 KiB up to 64 MiB');
  const cp = a?.checkpoint;
  if (cp !== undefined && (typeof cp !== 'number' || !Number.isSafeInteger(cp) || cp < 0))
    throw invalidArgument('replication.checksums: checkpoint must be a sequence number');
  return { extentBytes: e, ...(cp !== undefined ? { checkpoint: cp } : {}) };
}

/** A checkpoint as the API shows it. */
export interface CheckpointAnswer {
  seq: number;
  time: string;
  name?: string;
  /** The snapshot of every replica volume holding it. */
  snapshot: string;
}

export const checkpointAnswer = (cp: AppliedCheckpoint): CheckpointAnswer => ({
  seq: cp.seq,
  time: new Date(cp.time).toISOString(),
  ...(cp.name ? { name: cp.name } : {}),
  snapshot: cp.snapshot,
});

/** The source side of one group as the API shows it. */
export interface SourceGroupStatus {
  state: ReplicationMode;
  link: 'up' | 'down';
  error?: string;
  /** Seconds since the newest checkpoint the target applied was taken; absent before the first. */
  rpoSeconds?: number;
  /** Whether that is within the group's objective. */
  rpoMet: boolean;
  appliedCheckpoint?: { seq: number; time: string; name?: string };
  lag: { records: number; bytes: number };
  journal: { bytes: number; maxBytes: number; fill: number };
  /** Bytes per second on the link over the last seconds. */
  throughputBytesPerSecond: number;
  sentBytes: number;
  scan?: { volume: number; offset: number; readBytes: number };
  sync?: { degraded: boolean };
}

/**
 * Runs the source gateway of one group in the site: its link through the paired peer, an event
 * for every change of state or link and when the RPO objective is missed or met again, and a
 * throughput sample each second.
 */
export class SourceRunner {
  readonly gateway: SourceGateway;
  private last: { mode: ReplicationMode; link: string } | undefined;
  private rpoMissed = false;
  private readonly timer: NodeJS.Timeout;
  private sample = { at: performance.now(), sent: 0, rate: 0 };

  constructor(
    readonly name: string,
    readonly peer: string,
    readonly config: SourceConfig,
    dir: string,
    storage: StorageService,
    links: PeerLinks,
    private readonly events: EventLog,
    paused: boolean,
  ) {
    this.gateway = new SourceGateway({
      group: name,
      dir: join(dir, 'source'),
      taps: config.volumes.map((v) => storage.tap(v)),
      connect: () => links.dial(peer, { channel: 'replication', group: name }),
      checkpointMs: config.checkpointSeconds * 1000,
      compress: config.compress,
      bytesPerSecond: config.bytesPerSecond,
      journalBytes: config.journalBytes,
      ...(config.sync ? { sync: true } : {}),
      // Verify and the compare syncs: the source image, and the replica's sums asked of the target.
      storage,
      volumes: config.volumes,
      initialSync: config.seeded ? 'compare' : 'copy',
      remoteChecksums: async (req) =>
        (await links.call(
          peer,
          'replication.checksums',
          { group: name, ...req },
          CHECKSUM_CALL,
        )) as ChecksumList,
      onChange: (s) => this.changed(s),
    });
    this.gateway.start();
    if (paused) this.gateway.pause();
    this.timer = setInterval(() => this.tick(), 1000).unref();
  }

  status(): SourceGroupStatus {
    const s = this.gateway.status();
    const rpoSeconds = s.rpoMs !== undefined ? s.rpoMs / 1000 : undefined;
    const held = s.journal.nextSeq - 1;
    return {
      state: s.mode,
      link: s.link,
      ...(s.error ? { error: s.error } : {}),
      ...(rpoSeconds !== undefined ? { rpoSeconds: Math.round(rpoSeconds * 1000) / 1000 } : {}),
      rpoMet: rpoSeconds !== undefined && rpoSeconds <= this.config.rpoSeconds,
      ...(s.applied
        ? {
            appliedCheckpoint: {
              seq: s.applied.seq,
              time: new Date(s.applied.time).toISOString(),
              ...(s.applied.name ? { name: s.applied.name } : {}),
            },
          }
        : {}),
      lag: { records: Math.max(0, held - (s.applied?.seq ?? 0)), bytes: s.journal.bytes },
      journal: {
        bytes: s.journal.bytes,
        maxBytes: s.journal.maxBytes,
        fill: Math.round((s.journal.bytes / s.journal.maxBytes) * 1000) / 1000,
      },
      throughputBytesPerSecond: Math.round(this.sample.rate),
      sentBytes: s.sentBytes,
      ...(s.scan ? { scan: s.scan } : {}),
      ...(s.sync ? { sync: s.sync } : {}),
    };
  }

  async stop(): Promise<void> {
    clearInterval(this.timer);
    await this.gateway.stop();
  }

  private tick(): void {
    const s = this.gateway.status();
    const t = performance.now();
    const dt = (t - this.sample.at) / 1000;
    if (dt > 0) this.sample = { at: t, sent: s.sentBytes, rate: (s.sentBytes - this.sample.sent) / dt };
    if (s.rpoMs === undefined || s.mode === 'paused') return;
    const missed = s.rpoMs / 1000 > this.config.rpoSeconds;
    if (missed === this.rpoMissed) return;
    this.rpoMissed = missed;
    this.events.append({
      actor: 'system',
      action: 'replication.rpo',
      target: this.name,
      outcome: missed ? 'warning' : 'info',
      message: missed
        ? `replication group ${this.name}: the replica is ${(s.rpoMs / 1000).toFixed(1)} s old, more than its RPO of ${this.config.rpoSeconds} s`
        : `replication group ${this.name}: within its RPO of ${this.config.rpoSeconds} s again`,
    });
  }

  private changed(s: SourceStatus): void {
    const now = { mode: s.mode, link: s.link };
    const before = this.last;
    if (before && before.mode === now.mode && before.link === now.link) return;
    this.last = now;
    const what =
      before && before.mode === now.mode
        ? `link ${now.link}`
        : `${before ? `${before.mode} → ` : ''}${now.mode}, link ${now.link}`;
    log.info({ group: this.name, mode: s.mode, link: s.link, error: s.error }, 'replication state');
    this.events.append({
      actor: 'system',
      action: 'replication.state',
      target: this.name,
      outcome: s.mode === 'bitmap' || (s.link === 'down' && before?.link === 'up') ? 'warning' : 'info',
      message: `replication group ${this.name} to ${this.peer}: ${what}${s.error ? ` (${s.error})` : ''}`,
      details: { state: s.mode, link: s.link },
    });
  }
}

/** The target side of one group as the API shows it. */
export interface TargetGroupStatus {
  link: 'up' | 'down';
  error?: string;
  newestCheckpoint?: CheckpointAnswer;
  checkpoints: number;
  appliedSeq: number;
  receivedBytes: number;
}

/** Runs the target gateway of one group: takes the source's links, applies, keeps checkpoints. */
export class TargetRunner {
  readonly gateway: TargetGateway;
  private readonly sockets = new Set<TLSSocket>();
  private error: string | undefined;

  constructor(
    readonly name: string,
    readonly peer: string,
    readonly config: TargetConfig,
    dir: string,
    storage: StorageService,
    private readonly events: EventLog,
  ) {
    this.gateway = new TargetGateway({
      group: name,
      dir: join(dir, 'target'),
      storage,
      volumes: config.volumes,
      keepMs: config.keepSeconds * 1000,
      journalBytes: config.journalBytes,
      onCheckpoint: (cp) => {
        if (cp.name)
          this.events.append({
            actor: 'system',
            action: 'replication.checkpoint',
            target: name,
            outcome: 'info',
            message: `replication group ${name}: checkpoint ${cp.name} (${cp.seq}) applied`,
          });
      },
      onError: (err) => {
        this.error = errorMessage(err);
        log.warn({ group: name, err: this.error }, 'replication target error');
      },
    });
    // What the journal holds from before a restart is applied now.
    this.gateway.apply();
  }

  accept(socket: TLSSocket): void {
    this.sockets.add(socket);
    void this.gateway.accept(socket).finally(() => this.sockets.delete(socket));
  }

  status(): TargetGroupStatus {
    const newest = this.gateway.newest;
    return {
      link: this.sockets.size > 0 ? 'up' : 'down',
      ...(this.error ? { error: this.error } : {}),
      ...(newest ? { newestCheckpoint: checkpointAnswer(newest) } : {}),
      checkpoints: this.gateway.applier.history.length,
      appliedSeq: this.gateway.applier.appliedSeq,
      receivedBytes: this.gateway.receivedBytes,
    };
  }

  checkpoints(): CheckpointAnswer[] {
    return this.gateway.applier.history.map(checkpointAnswer);
  }

  async stop(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await this.gateway.close();
  }
}
