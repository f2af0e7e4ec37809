import {
  ReadWatchDevice,
  ThrottledDevice,
  type BlockDevice,
  type ThrottleLimits,
} from '../../block/index.js';
import { HavenError, conflict, errorMessage, invalidArgument, logger, notFound } from '../../common/index.js';
import { SnapshotDevice, openRepository, repoAccess, type RepoAccess } from '../../protection/index.js';
import { BASE_LABEL, type StorageExports, type StorageService } from '../../storage/index.js';
import type { ComputeService, Vm, VmDefinition } from './compute.js';
import type { Db } from './database.js';
import type { Job, JobManager } from './jobs.js';
import { recoveredNics } from './recovery-networks.js';

const log = logger('recovery');
const DEFAULT_WARN_AFTER_SECONDS = 24 * 3600;

/** 42 s, 17 min, 30 h */
function span(seconds: number): string {
  if (seconds < 120) return `${Math.round(seconds)} s`;
  if (seconds < 7200) return `${Math.round(seconds / 60)} min`;
  return `${Math.round(seconds / 3600)} h`;
}

interface RecoveryRow {
  vm: string;
  snapshot: string;
  repo: string;
  passphrase_file: string | null;
  disks: string;
  started_at: string;
  state: string;
}

export interface RecoveryDisk {
  volume: string;
  /** The disk of the backup it runs from. */
  disk: number;
  /** Bytes of the backup copied into the volume so far (copy on write and finalize). */
  filledBytes: number;
  /**
   * The pool the volume goes to once it holds all its data, when that is not the pool it runs on:
   * a recovery asked onto an RBD pool runs on a file pool (the overlay over the backup needs the
   * file pool's cluster map) and finalize moves it, live, to the RBD pool.
   */
  targetPool?: string;
}

export interface Recovery {
  vm: string;
  snapshot: string;
  repo: string;
  startedAt: string;
  /** running: from the backup; finalizing: being copied to production storage; broken: its backup cannot be read. */
  state: 'running' | 'finalizing' | 'broken';
  runningFromBackupSeconds: number;
  disks: RecoveryDisk[];
  /** Set when the VM has run from its backup longer than the site allows without a warning. */
  warning?: string;
}

export interface InstantRecoveryRequest extends RepoAccess {
  /** Recorded, so a restarted daemon can read an encrypted repository's passphrase again. */
  passphraseFile?: string;
  /** A VM backup. */
  snapshot: string;
  /** The recovered VM's name (default: NAME-recovered). */
  name?: string;
  /**
   * Pool of its new volumes (default: default). An RBD pool is where they go at finalize: until
   * then they run on a file pool (default, or else the first file pool of the site).
   */
  pool?: string;
  /** Kernel command line instead of the backed-up one (kernel boot). */
  cmdline?: string;
  /**
   * Where its NICs go: a network of this site (every NIC on it), `none` (no NIC), or `OLD=NEW,…`
   * per backed-up network (see recoveredNics). Default: the backed-up VM's own networks.
   */
  network?: string;
  /** Define the VM and serve its disks, but do not start it (haven vm start, later). */
  noStart?: boolean;
}

export interface RecoveryOptions {
  /** Reads from backup storage are limited so that recovered VMs do not starve backups. */
  limits?: ThrottleLimits;
  /** Warn when a VM runs from a backup longer than this (default 24 h). */
  warnAfterSeconds?: number;
}

/**
 * Instant recovery: a VM runs straight from a backup within seconds, whatever its size. Each disk
 * is a new volume of the site over a read-only view of the backup's disk (read from the
 * repository, cached, read ahead, throttled): the volume takes every write, the backup is never
 * written. Finalize copies the rest into the volumes while the VM runs and drops the link to the
 * backup; discard stops the VM and drops everything. Recoveries are recorded, so a restarted
 * daemon attaches the backups again before it serves the volumes.
 */
export class RecoveryService {
  private readonly bases = new Map<string, BlockDevice[]>();
  /** Per recovered VM, its backup's disks as its volumes read them: read errors are recorded. */
  private readonly watches = new Map<string, ReadWatchDevice[]>();
  /** Ends the reader session that holds each recovered VM's backup (see Repository.useSnapshot). */
  private readonly uses = new Map<string, () => Promise<void>>();

  constructor(
    private readonly db: Db,
    private readonly storage: StorageService,
    private readonly compute: ComputeService,
    private readonly jobs: JobManager,
    private readonly exports: StorageExports,
    private readonly opts: RecoveryOptions = {},
  ) {}

  /** At site open, before volumes are served: every recorded recovery's backups attached again. */
  async attachAll(): Promise<void> {
    for (const r of this.rows()) {
      try {
        await this.attach(
          r.vm,
          repoAccess(r.repo, r.passphrase_file ?? undefined),
          r.snapshot,
          JSON.parse(r.disks) as RecoveryDisk[],
        );
        // No finalize survives a restart: it can be asked for again.
        if (r.state !== 'running') this.setState(r.vm, 'running');
      } catch (err) {
        log.error({ vm: r.vm, err: errorMessage(err) }, 'a recovered VM cannot reach its backup');
        this.setState(r.vm, 'broken');
      }
    }
  }

  /** Starts a VM from a VM backup; returns once QEMU runs (or, with noStart, once it is defined). */
  async instant(req: InstantRecoveryRequest): Promise<{ vm: Vm; recovery: Recovery; seconds: number }> {
    const started = performance.now();
    const repo = await openRepository(req);
    const snap = await repo.snapshot(req.snapshot);
    const original = snap.vm as (VmDefinition & { name: string }) | undefined;
    if (!original)
      throw invalidArgument(
        `snapshot ${snap.id} is a ${snap.source.kind} backup, not a VM's: restore it (haven restore) or mount it (haven backup mount)`,
      );
    const name = req.name ?? `${original.name}-recovered`;
    if (this.compute.listVms().some((v) => v.name === name)) throw conflict(`VM ${name} already exists`);
    const target = req.pool ?? 'default';
    const pool = this.storage.pool(target).kind === 'file' ? target : this.overlayPool(target);
    const disks: RecoveryDisk[] = snap.disks.map((d, i) => ({
      volume: `${name}-${d.name}`,
      disk: i,
      filledBytes: 0,
      ...(pool !== target ? { targetPool: target } : {}),
    }));
    for (const d of disks)
      if (this.storage.listVolumes().some((v) => v.name === d.volume))
        throw conflict(`volume ${d.volume} already exists`);
    // Refused before anything is made.
    const { nics, leftOut } = recoveredNics(
      original.nics,
      req.network,
      this.compute.listNetworks().map((n) => n.name),
    );
    if (leftOut.length)
      log.warn(
        { vm: name, networks: leftOut },
        'networks of the backed-up VM that this site lacks are left out',
      );
    const created: string[] = [];
    try {
      for (const d of disks) {
        this.storage.createVolume(d.volume, snap.disks[d.disk]!.size, pool, {
          [BASE_LABEL]: `backup ${snap.id}`,
        });
        created.push(d.volume);
      }
      await this.attach(name, req, snap.id, disks);
      const boot =
        req.cmdline !== undefined && original.boot.kind === 'kernel'
          ? { ...original.boot, cmdline: req.cmdline }
          : original.boot;
      this.compute.createVm(name, {
        cpus: original.cpus,
        memoryMiB: original.memoryMiB,
        disks: disks.map((d) => ({ volume: d.volume })),
        nics,
        boot,
      });
      this.db
        .prepare(
          "INSERT INTO recoveries (vm, snapshot, repo, passphrase_file, disks, started_at, state) VALUES (?, ?, ?, ?, ?, ?, 'running')",
        )
        .run(
          name,
          snap.id,
          req.repo,
          req.passphraseFile ?? null,
          JSON.stringify(disks),
          new Date().toISOString(),
        );
      this.exports.refresh();
      if (req.noStart)
        return {
          vm: this.compute.vm(name),
          recovery: this.get(name),
          seconds: (performance.now() - started) / 1000,
        };
      this.compute.beginStart(name);
      const vm = await this.compute.launch(name);
      return { vm, recovery: this.get(name), seconds: (performance.now() - started) / 1000 };
    } catch (err) {
      // Nothing half made stays behind.
      this.db.prepare('DELETE FROM recoveries WHERE vm = ?').run(name);
      try {
        if (this.compute.listVms().some((v) => v.name === name && v.state !== 'running'))
          this.compute.deleteVm(name);
      } catch {
        // a VM that did start is left to the operator
      }
      this.closeBases(name);
      for (const v of created) this.storage.deleteVolume(v);
      this.exports.refresh();
      throw err;
    }
  }

  list(): Recovery[] {
    return this.rows().map((r) => this.toRecovery(r));
  }

  get(vm: string): Recovery {
    const r = this.row(vm);
    return this.toRecovery(r);
  }

  /** Copies the rest of the backup into the VM's volumes while it runs, then drops the backup. */
  finalize(actor: string, vm: string): Job {
    const r = this.row(vm);
    if (r.state !== 'running') throw conflict(`the recovery of ${vm} is ${r.state}`);
    const disks = JSON.parse(r.disks) as RecoveryDisk[];
    this.setState(vm, 'finalizing');
    return this.jobs.start({ kind: 'recovery.finalize', target: vm, actor }, async (ctx) => {
      try {
        for (const d of disks) {
          for (const snap of this.storage.listSnapshots(d.volume))
            this.exports.withdraw(`${d.volume}@${snap.name}`);
          const { copiedBytes } = await this.storage.absorbBase(d.volume, {
            signal: ctx.signal,
            onProgress: (done, total) => ctx.progress(done, total, `copying ${d.volume}`),
          });
          ctx.log(
            `volume ${d.volume} holds all its data: ${copiedBytes} bytes copied from backup ${r.snapshot}`,
          );
        }
      } catch (err) {
        this.setState(vm, 'running');
        throw err;
      }
      // The volumes hold all their data: the recovery is over, the backup released.
      this.closeBases(vm);
      this.db.prepare('DELETE FROM recoveries WHERE vm = ?').run(vm);
      this.exports.refresh();
      // Volumes recovered for an RBD pool go there now, live (see RecoveryDisk.targetPool).
      const moved: { volume: string; pool: string }[] = [];
      for (const d of disks) {
        const on = this.storage.volume(d.volume).pool;
        if (!d.targetPool || on === d.targetPool) continue;
        ctx.log(`moving volume ${d.volume} to pool ${d.targetPool}`);
        try {
          const m = await this.storage.moveVolume(d.volume, d.targetPool, {
            signal: ctx.signal,
            onProgress: (done, total) => ctx.progress(done, total, `moving ${d.volume} to ${d.targetPool}`),
          });
          ctx.log(
            `volume ${d.volume} is on pool ${m.to}: copied ${m.copiedBytes} bytes, mirrored ${m.mirroredBytes} bytes of writes, I/O paused ${m.pauseMs.toFixed(1)} ms at the switch`,
          );
        } catch (err) {
          throw new HavenError(
            err instanceof HavenError ? err.code : 'INTERNAL',
            `the recovery of ${vm} is finalized (its volumes hold all their data on pool ${on}), but moving ${d.volume} to pool ${d.targetPool} failed: ${errorMessage(err)}; move it with "haven vm move-storage ${vm} --pool ${d.targetPool}"`,
          );
        } finally {
          this.exports.refresh();
        }
        moved.push({ volume: d.volume, pool: d.targetPool });
      }
      return {
        vm,
        snapshot: r.snapshot,
        volumes: disks.map((d) => d.volume),
        ...(moved.length ? { moved } : {}),
      };
    });
  }

  /** Stops the VM and drops every change: the VM and its volumes are deleted. */
  discard(actor: string, vm: string): Job {
    const r = this.row(vm);
    if (r.state === 'finalizing') throw conflict(`the recovery of ${vm} is being finalized`);
    return this.jobs.start({ kind: 'recovery.discard', target: vm, actor }, async (ctx) => {
      const volumes = await this.drop(vm);
      ctx.log(`discarded ${vm} and its volumes ${volumes.join(', ')}`);
      return { vm, snapshot: r.snapshot };
    });
  }

  /**
   * What discard does, for a caller that is a job already (a recoverability check): the VM
   * killed and deleted, its volumes deleted, the backup released. Each step is skipped when done
   * already, so that it also finishes what an interrupted one left. Returns the volumes.
   */
  async drop(vm: string): Promise<string[]> {
    const r = this.db.prepare('SELECT * FROM recoveries WHERE vm = ?').get(vm) as RecoveryRow | undefined;
    const disks = r ? (JSON.parse(r.disks) as RecoveryDisk[]) : [];
    const v = this.compute.listVms().find((x) => x.name === vm);
    if (v) {
      if (v.state === 'running' || v.state === 'starting') await this.compute.stop(vm, { force: true });
      this.compute.deleteVm(vm);
    }
    const volumes = new Set(this.storage.listVolumes().map((x) => x.name));
    for (const d of disks) {
      for (const e of [
        d.volume,
        ...(volumes.has(d.volume)
          ? this.storage.listSnapshots(d.volume).map((s) => `${d.volume}@${s.name}`)
          : []),
      ])
        this.exports.withdraw(e);
      if (volumes.has(d.volume)) this.storage.deleteVolume(d.volume);
    }
    this.closeBases(vm);
    this.db.prepare('DELETE FROM recoveries WHERE vm = ?').run(vm);
    this.exports.refresh();
    return disks.map((d) => d.volume);
  }

  /** The first read of a recovered VM's backup that failed, if any (which disk, where, why). */
  readError(vm: string): { disk: number; offset: number; message: string; failedReads: number } | undefined {
    const watches = this.watches.get(vm) ?? [];
    for (const [disk, w] of watches.entries())
      if (w.firstError)
        return {
          disk,
          offset: w.firstError.offset,
          message: w.firstError.message,
          failedReads: w.failedReads,
        };
    return undefined;
  }

  /** The limits on reads from backups, and when a VM running from one gets a warning. */
  settings(): { maxIops?: number; maxBytesPerSecond?: number; warnAfterSeconds: number } {
    const l = this.opts.limits;
    return {
      ...(l?.iops !== undefined ? { maxIops: l.iops } : {}),
      ...(l?.bytesPerSecond !== undefined ? { maxBytesPerSecond: l.bytesPerSecond } : {}),
      warnAfterSeconds: this.opts.warnAfterSeconds ?? DEFAULT_WARN_AFTER_SECONDS,
    };
  }

  close(): void {
    for (const vm of [...this.bases.keys()]) this.closeBases(vm);
  }

  private async attach(
    vm: string,
    access: RepoAccess,
    snapshot: string,
    disks: RecoveryDisk[],
  ): Promise<void> {
    const repo = await openRepository(access);
    // Forget refuses the backup while the VM runs from it, so gc keeps its chunks.
    const use = await repo.useSnapshot(snapshot);
    const snap = use.snapshot;
    const bases: BlockDevice[] = [];
    const watches: ReadWatchDevice[] = [];
    try {
      for (const d of disks) {
        const dev = new ReadWatchDevice(await SnapshotDevice.open(repo, snap, d.disk));
        watches.push(dev);
        const base = this.opts.limits ? new ThrottledDevice(dev, this.opts.limits) : dev;
        this.storage.attachBase(d.volume, base);
        bases.push(base);
      }
    } catch (err) {
      await use.end();
      throw err;
    }
    this.bases.set(vm, bases);
    this.watches.set(vm, watches);
    this.uses.set(vm, use.end);
  }

  /**
   * Where a recovery asked onto an RBD pool runs until finalize moves it there: default if that
   * is a file pool, else the first file pool of the site.
   */
  private overlayPool(target: string): string {
    const own = this.storage
      .listPools()
      .map((p) => p.name)
      .filter((n) => {
        try {
          return this.storage.pool(n).kind === 'file';
        } catch {
          return false; // a provider's pool
        }
      });
    const pool = own.includes('default') ? 'default' : own[0];
    if (!pool)
      throw new HavenError(
        'UNSUPPORTED',
        `pool ${target} is an RBD pool: a VM running from a backup runs on a file pool until it is finalized onto ${target}, and this site has none`,
      );
    return pool;
  }

  private closeBases(vm: string): void {
    for (const b of this.bases.get(vm) ?? []) void b.close();
    this.bases.delete(vm);
    this.watches.delete(vm);
    void this.uses.get(vm)?.();
    this.uses.delete(vm);
  }

  private rows(): RecoveryRow[] {
    return this.db.prepare('SELECT * FROM recoveries ORDER BY started_at').all() as RecoveryRow[];
  }

  private row(vm: string): RecoveryRow {
    const r = this.db.prepare('SELECT * FROM recoveries WHERE vm = ?').get(vm) as RecoveryRow | undefined;
    if (!r) throw notFound(`VM ${vm} is not running from a backup`);
    return r;
  }

  private setState(vm: string, state: Recovery['state']): void {
    this.db.prepare('UPDATE recoveries SET state = ? WHERE vm = ?').run(state, vm);
  }

  private toRecovery(r: RecoveryRow): Recovery {
    const seconds = (Date.now() - Date.parse(r.started_at)) / 1000;
    const warnAfter = this.opts.warnAfterSeconds ?? DEFAULT_WARN_AFTER_SECONDS;
    const disks = (JSON.parse(r.disks) as RecoveryDisk[]).map((d) => ({
      ...d,
      filledBytes: this.storage.baseOf(d.volume)?.filledBytes ?? 0,
    }));
    return {
      vm: r.vm,
      snapshot: r.snapshot,
      repo: r.repo,
      startedAt: r.started_at,
      state: r.state as Recovery['state'],
      runningFromBackupSeconds: Math.round(seconds),
      disks,
      ...(seconds > warnAfter
        ? {
            warning: `running from backup ${r.snapshot} for ${span(seconds)} (more than ${span(warnAfter)}): finalize it to production storage`,
          }
        : {}),
    };
  }
}
