import { hostname } from 'node:os';
import { join } from 'node:path';
import { HavenError, conflict, invalidArgument } from '../../common/index.js';
import {
  backupResult,
  chooseTransport,
  openRepository,
  openVolumeSource,
  restore,
  rollbackWith,
  runBackup,
  type RepoAccess,
  type SiteEndpoints,
  type TransferSlots,
  type Transport,
  type BackupResult,
} from '../../protection/index.js';
import {
  gc as collectGarbage,
  prune,
  verify as verifyRepository,
  type PruneReport,
  type Repository,
  type RetentionPolicy,
} from '../../repository/index.js';
import { checkName } from '../../storage/index.js';
import { resolveConsistencyOptions, vmQuiesce, type ConsistencyOptions } from './backup-consistency.js';
import { SiteDomain, type Actor, type SiteParts } from './domain.js';
import type { Job } from './jobs.js';

/** Backups of a site's VMs and volumes, restores into volumes, rollbacks, and repository jobs. */
export class SiteBackups extends SiteDomain {
  private offered: Transport[] = [];

  constructor(
    parts: SiteParts,
    readonly transfers: TransferSlots,
    private readonly dataDir: string,
    /** The site's NBD listeners, as the backup transports reach them. */
    private readonly endpoints: () => SiteEndpoints,
    /** Told of every backup that succeeded (metrics). */
    private readonly backedUp: (repo: Repository, result: BackupResult) => void = () => undefined,
  ) {
    super(parts);
  }

  /** Sets the transports backups may use (the site decides once its listeners are up). */
  offer(transports: Transport[]): void {
    this.offered = [...transports];
  }

  /** The transports this site's backups may use, in the order auto tries them. */
  transports(): Transport[] {
    return [...this.offered];
  }

  /** A repository's snapshots, oldest first, and those whose manifest is damaged (with why). */
  async snapshotsIn(repo: RepoAccess): Promise<Awaited<ReturnType<Repository['scanSnapshots']>>> {
    return (await openRepository(repo)).scanSnapshots();
  }

  /**
   * Backs up a VM (all its disks at one point, and its configuration) or a volume, as a job,
   * through the transport asked for (default: auto). A VM's file systems are frozen through its
   * guest agent around the snapshot when it answers (application-consistent), else the backup
   * is crash-consistent and says why (see backup-consistency.ts). The job waits for a transfer
   * slot on the host the data lives on when that host is at its limit. With `retain`, the
   * source's snapshots the retention does not keep are forgotten once the backup is in (in the
   * same job; never the new one, never a protected one).
   */
  backup(
    actor: Actor,
    target: { vm: string } | { volume: string },
    repo: RepoAccess,
    opts: {
      transport?: string;
      full?: boolean;
      /** The new snapshot's time (default now): scheduled backups follow the scheduler's clock. */
      at?: Date;
      retain?: RetentionPolicy;
    } & ConsistencyOptions = {},
  ): Job {
    const vm = 'vm' in target ? this.compute.vm(target.vm) : undefined;
    const consistency = resolveConsistencyOptions(opts, !!vm, join(this.dataDir, 'hooks'));
    const volumes = vm ? vm.disks.map((d) => d.volume) : [(target as { volume: string }).volume];
    for (const v of volumes) this.storage.volume(v);
    const transport = chooseTransport(opts.transport, this.offered);
    const name = vm ? vm.name : volumes[0]!;
    const host = vm?.host ?? hostname();
    return this.jobs.start({ kind: vm ? 'vm.backup' : 'volume.backup', target: name, actor }, async (ctx) => {
      const release = await this.transfers.acquire(host, ctx.signal, (n) =>
        ctx.log(`waiting for a transfer slot on host ${host} (${n} of ${this.transfers.perHost} in use)`),
      );
      try {
        const r = await openRepository(repo);
        ctx.log(
          `backing up ${vm ? `VM ${name} (${volumes.join(', ')})` : `volume ${name}`} into ${r.location} over ${transport}`,
        );
        const src = await openVolumeSource(
          this.storage,
          r,
          volumes,
          { kind: vm ? 'vm' : 'volume', name },
          vm,
          {
            transport,
            ...(transport !== 'san' ? { site: this.endpoints() } : {}),
            ...(vm
              ? { quiesce: vmQuiesce(this.compute, vm.name, consistency, (m, l) => ctx.log(m, l)) }
              : {}),
            ...(opts.full ? { full: true } : {}),
            signal: ctx.signal,
            onWait: (v) => ctx.log(`waiting for the running backup of volume ${v} to finish`),
          },
        );
        const c = src.consistency;
        ctx.log(
          c?.consistency === 'application'
            ? 'snapshot taken application-consistent (file systems frozen)'
            : `snapshot taken crash-consistent${c?.reason ? `: ${c.reason}` : ''}`,
        );
        ctx.log(
          src.parent ? `incremental from ${src.parent.id}` : `full backup${opts.full ? ' (asked for)' : ''}`,
        );
        const m = await runBackup(r, src, {
          signal: ctx.signal,
          onProgress: (d, t) => ctx.progress(d, t, 'backup'),
          ...(opts.at ? { createdAt: opts.at } : {}),
        });
        this.exports.refresh();
        const result = backupResult(m, transport);
        this.backedUp(r, result);
        // The repository is named so that the alerts watch its file system (alerts/state.ts).
        const named = { ...result, repository: r.location };
        if (!opts.retain) return named;
        const pruned = await retain(r, `${m.source.kind}:${m.source.name}`, opts.retain);
        ctx.log(
          `retention: kept ${pruned.kept}, forgot ${pruned.removed.length}${pruned.removed.length ? ` (${pruned.removed.join(', ')})` : ''}${pruned.inUse.length ? `; kept ${pruned.inUse.length} in use` : ''}`,
        );
        return { ...named, retention: pruned };
      } finally {
        release();
      }
    });
  }

  /**
   * Quick rollback of a volume to its newest backup, as a job: only what changed since the
   * backup is rewritten. The volume must not be in use (no running VM, no NBD client).
   */
  rollback(actor: Actor, req: RepoAccess & { snapshot: string; volume: string }): Job {
    this.storage.volume(req.volume);
    this.refuseIfRunning(req.volume, 'roll back');
    const clients = this.exports.clientsOf(req.volume);
    if (clients) throw conflict(`volume ${req.volume} has ${clients} NBD client(s) attached`);
    return this.jobs.start({ kind: 'volume.rollback', target: req.volume, actor }, async (ctx) => {
      const r = await openRepository(req);
      const res = await rollbackWith(this.storage, r, req.snapshot, req.volume, {
        signal: ctx.signal,
        onProgress: (d, t) => ctx.progress(d, t, 'rollback'),
      });
      ctx.log(
        `rolled ${req.volume} back to ${req.snapshot}: rewrote ${res.dataBytes + res.zeroBytes} bytes for ${res.changedBytes} changed`,
      );
      return res;
    });
  }

  /** Verifies a repository's snapshots (all, or a rolling slice), as a job; damage fails the job. */
  verifyRepository(actor: Actor, req: RepoAccess & { snapshots?: string[]; rolling?: number }): Job {
    return this.jobs.start({ kind: 'repository.verify', target: req.repo, actor }, async (ctx) => {
      const r = await openRepository(req);
      const report = await verifyRepository(r, req.snapshots, {
        onProgress: (d, t) => ctx.progress(d, t, 'verify'),
        ...(req.rolling !== undefined ? { rolling: req.rolling } : {}),
      });
      for (const d of report.damaged)
        ctx.log(
          `DAMAGED ${d.snapshot} ${d.disk}: offsets ${d.offsets.join(', ') || '(index)'}: ${d.reason}`,
          'error',
        );
      for (const c of report.chunkDamage) ctx.log(`DAMAGED CHUNK ${c.key}: ${c.reason}`, 'error');
      if (report.cursorError) ctx.log(report.cursorError, 'warning');
      if (report.damaged.length)
        throw new HavenError(
          'CORRUPT',
          `verify found ${report.damagedChunks} damaged chunk(s) in ${new Set(report.damaged.map((d) => d.snapshot)).size} snapshot(s): ${report.damaged.map((d) => d.snapshot).join(', ')}`,
        );
      return report;
    });
  }

  /** Garbage-collects a repository, as a job (safe while backups run). */
  gcRepository(actor: Actor, req: RepoAccess & { graceMs?: number }): Job {
    return this.jobs.start({ kind: 'repository.gc', target: req.repo, actor }, async () => {
      const r = await openRepository(req);
      return collectGarbage(r, req.graceMs !== undefined ? { graceMs: req.graceMs } : {});
    });
  }

  /** Restores a disk of a snapshot into a new volume, as a job. */
  restoreToVolume(
    actor: Actor,
    req: RepoAccess & { snapshot: string; disk?: number; name: string; pool?: string },
  ): Job {
    checkName('volume', req.name);
    if (this.storage.listVolumes().some((v) => v.name === req.name))
      throw conflict(`volume ${req.name} already exists`);
    const pool = req.pool ?? 'default';
    this.storage.pool(pool);
    return this.jobs.start({ kind: 'volume.restore', target: req.name, actor }, async (ctx) => {
      const r = await openRepository(req);
      // Forget refuses the snapshot while it is read, so gc keeps its chunks.
      const use = await r.useSnapshot(req.snapshot);
      try {
        const snap = use.snapshot;
        const disk = snap.disks[req.disk ?? 0];
        if (!disk) throw invalidArgument(`snapshot ${snap.id} has no disk ${req.disk ?? 0}`);
        this.storage.createVolume(req.name, disk.size, pool);
        try {
          const res = await restore(r, snap, req.disk ?? 0, this.storage.openDevice(req.name), {
            fresh: true,
            signal: ctx.signal,
            onProgress: (d, t) => ctx.progress(d, t, 'restore'),
          });
          this.exports.refresh();
          return res;
        } catch (err) {
          this.storage.deleteVolume(req.name);
          throw err;
        }
      } finally {
        await use.end();
      }
    });
  }
}

/** What the retention after a backup did. */
export interface RetentionResult {
  kept: number;
  removed: string[];
  inUse: string[];
}

/** Applies a retention to one source's snapshots (prune.ts: protected and in-use ones stay). */
async function retain(r: Repository, source: string, keep: RetentionPolicy): Promise<RetentionResult> {
  const report: PruneReport = await prune(r, keep, { source });
  const p = report.sources[0];
  return {
    kept: p?.kept.length ?? 0,
    removed: p?.removed ?? [],
    inUse: report.inUse.map((x) => x.id),
  };
}
