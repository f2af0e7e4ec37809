import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { join, resolve } from 'node:path';
import {
  HavenError,
  conflict,
  errorMessage,
  invalidArgument,
  logger,
  outputTarget,
  writeFileAtomic,
} from '../../common/index.js';
import {
  DEFAULT_HANDSHAKE_TIMEOUT_MS,
  NbdServer,
  checkReadable,
  parseHostPort,
  type ListenAddress,
} from '../../nbd/index.js';
import type { ThrottleLimits } from '../../block/index.js';
import {
  StorageExports,
  StorageService,
  checkName,
  exportVolume,
  importVolume,
  makePrivate,
  sitePsk,
  type SitePsk,
  type BitmapInfo,
  type PoolInfo,
  type SnapshotInfo,
  type VolumeInfo,
} from '../../storage/index.js';
import {
  backupResult,
  openRepository,
  openVolumeSource,
  repoAccess,
  restore,
  rollbackWith,
  runBackup,
  TRANSPORTS,
  TransferSlots,
  chooseTransport,
  isTransport,
  offeredTransports,
  type RepoAccess,
  type SiteEndpoints,
  type Transport,
} from '../../protection/index.js';
import { gc as collectGarbage, verify as verifyRepository } from '../../repository/index.js';
import { ComputeService, type VmDefinition } from './compute.js';
import { resolveConsistencyOptions, vmQuiesce, type ConsistencyOptions } from './backup-consistency.js';
import { openDatabase, schemaVersion, type Db } from './database.js';
import { EventLog } from './events.js';
import { JobManager, type Job } from './jobs.js';
import { RecoveryService, type InstantRecoveryRequest, type RecoveryOptions } from './recovery.js';

const log = logger('site');

export interface SiteOptions {
  dataDir: string;
  /** The site's name; fixed at the first start (default: this machine's host name). */
  name?: string;
  /**
   * TCP address for NBD clients outside the site ("none": the unix socket only; default
   * 127.0.0.1:10809). TLS only, and every client authenticates: with the site's PSK
   * (`DATA/nbd-tls/keys.psk`), or with a certificate signed by `nbdTls.ca`.
   */
  nbdListen?: string;
  /** X.509 credentials of the TCP listener, beside the PSK. */
  nbdTls?: NbdTlsCertificates;
  /** A plain TCP listener that anyone who reaches it may read and write every volume through (explicit opt-in; warned about). */
  nbdListenPlain?: string;
  /** Milliseconds an NBD client has from connecting to the transmission phase (default 10 s). */
  nbdHandshakeTimeoutMs?: number;
  /** Limits on reads from backup storage by VMs running from backups (default: none). */
  recoveryLimits?: ThrottleLimits;
  /** Warn when a VM runs from a backup longer than this (default 24 h). */
  recoveryWarnAfterSeconds?: number;
  /** Concurrent backup transfers per host; more wait for a slot (default 4). */
  maxTransfersPerHost?: number;
  /** The transports backups may use (default: every one this site can offer). */
  transports?: string[];
}

export interface NbdTlsCertificates {
  /** PEM files: the listener's certificate and key; `ca` lets clients authenticate with a certificate it signed. */
  cert: string;
  key: string;
  ca?: string;
}

export interface SiteInfo {
  name: string;
  dataDir: string;
  version: string;
  schemaVersion: number;
  nbd: {
    /** The unix socket (QEMU of this site; only the site's user can reach it). */
    socket: string;
    /** The TLS listener: clients authenticate with the PSK, or a certificate signed by `clientCa`. */
    tcp?: string;
    pskFile: string;
    pskIdentity: string;
    clientCa?: string;
    /** The unauthenticated plain listener, when the operator opted in. */
    plain?: string;
    handshakeTimeoutMs: number;
  };
  /** Backup transports, in the order auto tries them. */
  transports: string[];
  maxTransfersPerHost: number;
  /** Limits on reads of VMs running from backups, and when such a VM gets a warning. */
  recovery: { maxIops?: number; maxBytesPerSecond?: number; warnAfterSeconds: number };
  startedAt: string;
  pools: number;
  volumes: number;
  vms: number;
  runningVms: number;
  runningJobs: number;
}

/** Who asks: recorded in jobs and events. */
export type Actor = string;

/**
 * A site: one data directory holding its storage (pools, volumes), its database (VMs, jobs,
 * events) and its API token; the storage service exporting every volume over NBD; the compute
 * service running VMs. This is what the daemon runs and what the API calls — every operation a
 * face offers is a method here, and every change it makes is in the event log.
 */
export class Site {
  readonly events: EventLog;
  readonly jobs: JobManager;
  readonly compute: ComputeService;
  readonly startedAt = new Date().toISOString();
  private nbdPlain: ListenAddress | undefined;
  private nbds: { server: NbdServer; address: ListenAddress } | undefined;
  private psk!: SitePsk;
  private nbdClientCa: string | undefined;
  private nbdHandshakeTimeoutMs = DEFAULT_HANDSHAKE_TIMEOUT_MS;
  readonly transfers: TransferSlots;
  readonly recovery: RecoveryService;
  private offered: Transport[] = [];

  private constructor(
    readonly name: string,
    readonly dataDir: string,
    readonly storage: StorageService,
    private readonly db: Db,
    private readonly nbd: NbdServer,
    readonly exports: StorageExports,
    readonly nbdSocket: string,
    maxTransfersPerHost: number,
    recoveryOptions: RecoveryOptions,
  ) {
    this.transfers = new TransferSlots(maxTransfersPerHost);
    this.events = new EventLog(db);
    this.jobs = new JobManager(db, this.events);
    this.compute = new ComputeService(db, this.events, join(dataDir, 'vms'), {
      uriOf: (v) => `nbd+unix:///${encodeURIComponent(v)}?socket=${nbdSocket}`,
      check: (v) => void storage.volume(v),
    });
    this.recovery = new RecoveryService(db, storage, this.compute, this.jobs, exports, recoveryOptions);
  }

  static async open(opts: SiteOptions): Promise<Site> {
    // A misspelt transport is refused before anything is opened.
    for (const t of opts.transports ?? [])
      if (!isTransport(t)) throw invalidArgument(`unknown transport ${t}: use ${TRANSPORTS.join(', ')}`);
    const dataDir = resolve(opts.dataDir);
    mkdirSync(dataDir, { recursive: true, mode: 0o700 });
    // Volumes, keys and sockets live below it: no other user may even look in.
    makePrivate(dataDir, 0o700, log);
    const storage = StorageService.open(dataDir); // takes the data directory's lock
    let db: Db | undefined;
    const handshakeTimeoutMs = opts.nbdHandshakeTimeoutMs ?? DEFAULT_HANDSHAKE_TIMEOUT_MS;
    const nbd = new NbdServer({ log: logger('site-nbd'), handshakeTimeoutMs });
    let nbds: NbdServer | undefined;
    try {
      db = openDatabase(join(dataDir, 'site.db'));
      const name = siteName(db, opts.name);
      if (storage.listPools().length === 0) storage.createPool('default');
      const exports = new StorageExports(storage, nbd);
      exports.refresh();
      const run = join(dataDir, 'run');
      mkdirSync(run, { recursive: true, mode: 0o700 });
      makePrivate(run, 0o700, log);
      const socket = join(run, 'nbd.sock');
      const site = new Site(name, dataDir, storage, db, nbd, exports, socket, opts.maxTransfersPerHost ?? 4, {
        ...(opts.recoveryLimits ? { limits: opts.recoveryLimits } : {}),
        ...(opts.recoveryWarnAfterSeconds !== undefined
          ? { warnAfterSeconds: opts.recoveryWarnAfterSeconds }
          : {}),
      });
      site.psk = sitePsk(dataDir, log);
      site.nbdHandshakeTimeoutMs = handshakeTimeoutMs;
      // VMs running from backups get their backups back before any client can read their disks.
      await site.recovery.attachAll();
      exports.refresh(); // now with the volumes over those backups (unless a backup is out of reach)
      await nbd.listen({ path: socket });
      const nbdListen = opts.nbdListen ?? '127.0.0.1:10809';
      if (nbdListen !== 'none') {
        const x509 = opts.nbdTls;
        nbds = new NbdServer({
          log: logger('site-nbds'),
          handshakeTimeoutMs,
          tls: { psk: site.psk.file, ...(x509 ?? {}) },
        });
        const address = await nbds.listen(parseHostPort(nbdListen));
        site.nbds = { server: nbds, address };
        site.nbdClientCa = x509?.ca;
        exports.addServer(nbds);
      } else if (opts.nbdTls)
        throw invalidArgument('NBD TLS certificates need a TCP listener (--nbd-listen)');
      if (opts.nbdListenPlain) {
        site.nbdPlain = await nbd.listen(parseHostPort(opts.nbdListenPlain));
        log.warn(
          { site: name, address: opts.nbdListenPlain },
          `NBD listener ${opts.nbdListenPlain} is plain TCP WITHOUT AUTHENTICATION: anyone who reaches it can read and write every volume of site ${name}`,
        );
      }
      site.offered = offeredTransports(site.endpoints(), opts.transports);
      site.recover();
      const { attached, lost } = await site.compute.reattach();
      log.info({ site: name, dataDir, attached, lost }, 'site open');
      return site;
    } catch (err) {
      await nbd.close().catch(() => undefined);
      await nbds?.close().catch(() => undefined);
      db?.close();
      storage.close();
      throw err;
    }
  }

  /** Jobs the previous daemon left running fail, undoing what they left half done. */
  private recover(): void {
    this.jobs.failInterrupted((job) => {
      if (
        (job.kind === 'volume.import' || job.kind === 'volume.restore') &&
        this.storage.listVolumes().some((v) => v.name === job.target)
      ) {
        this.exports.withdraw(job.target);
        this.storage.deleteVolume(job.target);
      }
    });
  }

  info(): SiteInfo {
    const vms = this.compute.listVms();
    return {
      name: this.name,
      dataDir: this.dataDir,
      version: havenVersion(),
      schemaVersion: schemaVersion(this.db),
      nbd: {
        socket: this.nbdSocket,
        ...(this.nbds && 'port' in this.nbds.address
          ? { tcp: `${this.nbds.address.host}:${this.nbds.address.port}` }
          : {}),
        pskFile: this.psk.file,
        pskIdentity: this.psk.identity,
        ...(this.nbdClientCa ? { clientCa: this.nbdClientCa } : {}),
        ...(this.nbdPlain && 'port' in this.nbdPlain
          ? { plain: `${this.nbdPlain.host}:${this.nbdPlain.port}` }
          : {}),
        handshakeTimeoutMs: this.nbdHandshakeTimeoutMs,
      },
      transports: this.transports(),
      maxTransfersPerHost: this.transfers.perHost,
      recovery: this.recovery.settings(),
      startedAt: this.startedAt,
      pools: this.storage.listPools().length,
      volumes: this.storage.listVolumes().length,
      vms: vms.length,
      runningVms: vms.filter((v) => v.state === 'running').length,
      runningJobs: this.jobs.list({ state: 'running' }).length,
    };
  }

  /** The site's API token, made at the first start, readable only by its owner. */
  apiToken(): string {
    return apiToken(this.dataDir);
  }

  // ---- an audited change ------------------------------------------------------------------

  private audited<T>(
    actor: Actor,
    action: string,
    target: string,
    fn: () => T,
    describe?: (r: T) => string,
  ): T {
    try {
      const r = fn();
      this.events.append({
        actor,
        action,
        target,
        outcome: 'ok',
        message: describe?.(r) ?? `${action} ${target}`,
      });
      return r;
    } catch (err) {
      if (err instanceof HavenError && err.code !== 'INTERNAL' && err.code !== 'IO')
        this.events.append({
          actor,
          action,
          target,
          outcome: 'failed',
          message: `${action} ${target}: ${err.message}`,
        });
      throw err;
    }
  }

  // ---- pools -----------------------------------------------------------------------------

  listPools(): PoolInfo[] {
    return this.storage.listPools();
  }

  pool(name: string): PoolInfo {
    return this.storage.pool(name).info();
  }

  createPool(
    actor: Actor,
    name: string,
    opts: { path?: string; tier?: string; capacityBytes?: number },
  ): PoolInfo {
    return this.audited(actor, 'pool.create', name, () => this.storage.createPool(name, opts));
  }

  deletePool(actor: Actor, name: string): void {
    this.audited(actor, 'pool.delete', name, () => this.storage.deletePool(name));
  }

  // ---- volumes ---------------------------------------------------------------------------

  listVolumes(pool?: string): VolumeInfo[] {
    return this.storage.listVolumes(pool);
  }

  volume(name: string): VolumeInfo {
    return this.storage.volume(name);
  }

  createVolume(actor: Actor, name: string, sizeBytes: number, pool = 'default'): VolumeInfo {
    return this.audited(actor, 'volume.create', name, () => {
      const v = this.storage.createVolume(name, sizeBytes, pool);
      this.exports.refresh();
      return v;
    });
  }

  resizeVolume(actor: Actor, name: string, sizeBytes: number): VolumeInfo {
    return this.audited(actor, 'volume.resize', name, () => {
      this.refuseIfRunning(name, 'resize');
      return this.storage.resizeVolume(name, sizeBytes);
    });
  }

  deleteVolume(actor: Actor, name: string): void {
    this.audited(actor, 'volume.delete', name, () => {
      this.storage.volume(name);
      const users = this.compute.usersOf(name);
      if (users.length)
        throw conflict(
          `volume ${name} is a disk of VM(s) ${users.map((u) => u.name).join(', ')}; delete or change them first`,
        );
      const clients = this.exports.clientsOf(name);
      if (clients) throw conflict(`volume ${name} is in use by ${clients} NBD client(s)`);
      if (this.jobs.list({ state: 'running', target: name }).length)
        throw conflict(`volume ${name} has a job running`);
      this.exports.withdraw(name);
      this.storage.deleteVolume(name);
    });
  }

  cloneVolume(actor: Actor, source: string, snapshot: string, name: string): VolumeInfo {
    return this.audited(actor, 'volume.clone', name, () => {
      const v = this.storage.clone(source, snapshot, name);
      this.exports.refresh();
      return v;
    });
  }

  /** Imports an image file of this host into a new volume, as a job. */
  importVolume(actor: Actor, opts: { image: string; name: string; pool?: string; format?: string }): Job {
    checkName('volume', opts.name);
    if (this.storage.listVolumes().some((v) => v.name === opts.name))
      throw conflict(`volume ${opts.name} already exists`);
    if (!existsSync(opts.image)) throw invalidArgument(`image ${opts.image} does not exist on this site`);
    checkReadable(opts.image); // a FIFO or a directory is refused now, not by the job
    const pool = opts.pool ?? 'default';
    this.storage.pool(pool);
    return this.jobs.start({ kind: 'volume.import', target: opts.name, actor }, async (ctx) => {
      ctx.log(`importing ${opts.image} into pool ${pool}`);
      const r = await importVolume(this.storage, {
        image: opts.image,
        name: opts.name,
        pool,
        ...(opts.format ? { format: opts.format } : {}),
        signal: ctx.signal,
        onProgress: (p) => ctx.progress(p.done, p.total, p.phase),
      });
      this.exports.refresh();
      ctx.log(`copied ${r.copy.dataBytes} data bytes, ${r.copy.zeroBytes} zero bytes; verified`);
      return {
        volume: r.volume,
        digest: r.copy.digest,
        dataBytes: r.copy.dataBytes,
        zeroBytes: r.copy.zeroBytes,
      };
    });
  }

  /**
   * Exports a volume or "volume@snapshot" to an image file on this host, as a job. An existing
   * file is replaced only with `force` (the daemon runs as root: a mistyped path must not cost a
   * host file); that is checked now, so the request fails rather than its job.
   */
  exportVolume(actor: Actor, opts: { source: string; image: string; format?: string; force?: boolean }): Job {
    outputTarget(resolve(opts.image), opts.force);
    this.storage.volume(opts.source.split('@')[0]!);
    return this.jobs.start({ kind: 'volume.export', target: opts.source, actor }, async (ctx) => {
      const r = await exportVolume(this.storage, {
        ...opts,
        signal: ctx.signal,
        onProgress: (p) => ctx.progress(p.done, p.total, p.phase),
      });
      return { image: opts.image, digest: r.digest, dataBytes: r.dataBytes };
    });
  }

  // ---- snapshots -------------------------------------------------------------------------

  listSnapshots(volume: string): SnapshotInfo[] {
    return this.storage.listSnapshots(volume);
  }

  /** Takes a snapshot, as a job (O(1) in the volume format, even while a VM writes). */
  createSnapshot(actor: Actor, volume: string, name: string, bitmap?: string): Job {
    this.storage.volume(volume);
    checkName('snapshot', name);
    if (this.storage.listSnapshots(volume).some((s) => s.name === name))
      throw conflict(`volume ${volume} already has a snapshot ${name}`);
    return this.jobs.start({ kind: 'snapshot.create', target: `${volume}@${name}`, actor }, async (ctx) => {
      // QEMU's NBD client has no cache of its own: every write the guest saw completed is in
      // the volume already, so the snapshot is crash-consistent without pausing the VM.
      ctx.progress(0, 1, 'snapshot');
      const s = bitmap
        ? this.storage.checkpoint(volume, name, bitmap).snapshot
        : this.storage.snapshot(volume, name);
      this.exports.refresh();
      return s;
    });
  }

  deleteSnapshot(actor: Actor, volume: string, name: string): void {
    this.audited(actor, 'snapshot.delete', `${volume}@${name}`, () => {
      const clients = this.exports.clientsOf(`${volume}@${name}`);
      if (clients) throw conflict(`snapshot ${volume}@${name} is in use by ${clients} NBD client(s)`);
      if (!this.storage.listSnapshots(volume).some((s) => s.name === name))
        throw new HavenError('NOT_FOUND', `volume ${volume} has no snapshot ${name}`);
      this.exports.withdraw(`${volume}@${name}`);
      this.storage.deleteSnapshot(volume, name);
    });
  }

  revertSnapshot(actor: Actor, volume: string, name: string): void {
    this.audited(actor, 'snapshot.revert', `${volume}@${name}`, () => {
      this.refuseIfRunning(volume, 'revert');
      this.storage.revert(volume, name);
    });
  }

  // ---- dirty bitmaps ---------------------------------------------------------------------

  listBitmaps(volume: string): BitmapInfo[] {
    return this.storage.listBitmaps(volume);
  }

  /** Starts tracking a volume's changes; its NBD exports offer the bitmap at once. */
  addBitmap(actor: Actor, volume: string, name: string, granularity?: number): BitmapInfo {
    return this.audited(actor, 'bitmap.add', `${volume}#${name}`, () => {
      const b = this.storage.addBitmap(volume, name, granularity);
      this.exports.refresh();
      return b;
    });
  }

  removeBitmap(actor: Actor, volume: string, name: string): void {
    this.audited(actor, 'bitmap.remove', `${volume}#${name}`, () => {
      this.storage.removeBitmap(volume, name);
      this.exports.refresh();
    });
  }

  /** Marks everything clean (and trusted again). */
  clearBitmap(actor: Actor, volume: string, name: string): void {
    this.audited(actor, 'bitmap.clear', `${volume}#${name}`, () => this.storage.clearBitmap(volume, name));
  }

  private refuseIfRunning(volume: string, what: string): void {
    const user = this.compute
      .usersOf(volume)
      .find((v) => v.state !== 'stopped' && v.state !== 'defined' && v.state !== 'crashed');
    if (user) throw conflict(`cannot ${what} volume ${volume}: VM ${user.name} is ${user.state}`);
  }

  // ---- networks and VMs ------------------------------------------------------------------

  createNetwork(actor: Actor, name: string, kind: 'nat' | 'isolated') {
    return this.audited(actor, 'network.create', name, () => this.compute.createNetwork(name, kind));
  }

  deleteNetwork(actor: Actor, name: string): void {
    this.audited(actor, 'network.delete', name, () => this.compute.deleteNetwork(name));
  }

  createVm(actor: Actor, name: string, def: VmDefinition) {
    return this.audited(actor, 'vm.create', name, () => this.compute.createVm(name, def));
  }

  deleteVm(actor: Actor, name: string): void {
    this.audited(actor, 'vm.delete', name, () => this.compute.deleteVm(name));
  }

  startVm(actor: Actor, name: string): Job {
    this.compute.beginStart(name); // conflicts are answered now, not in the job
    return this.jobs.start({ kind: 'vm.start', target: name, actor }, async (ctx) => {
      const vm = await this.compute.launch(name);
      ctx.log(`QEMU running as pid ${vm.pid}`);
      return vm;
    });
  }

  stopVm(actor: Actor, name: string, opts: { force?: boolean; graceSeconds?: number }): Job {
    const vm = this.compute.vm(name);
    if (vm.state !== 'running') throw conflict(`VM ${name} is ${vm.state}, not running: nothing to stop`);
    return this.jobs.start({ kind: 'vm.stop', target: name, actor }, async (ctx) => {
      ctx.log(opts.force ? 'killing QEMU' : 'asking the guest to power off (ACPI)');
      return this.compute.stop(name, {
        ...(opts.force ? { force: true } : {}),
        ...(opts.graceSeconds !== undefined ? { graceMs: opts.graceSeconds * 1000 } : {}),
      });
    });
  }

  // ---- backup and restore ----------------------------------------------------------------

  /** Where a repository is and its passphrase: from a file the daemon can read, else the daemon's $HAVEN_PASSPHRASE. */
  static repoAccess(repo: string, passphraseFile?: string): RepoAccess {
    return repoAccess(repo, passphraseFile);
  }

  /** The transports this site's backups may use, in the order auto tries them. */
  transports(): Transport[] {
    return [...this.offered];
  }

  /**
   * Backs up a VM (all its disks at one point, and its configuration) or a volume, as a job,
   * through the transport asked for (default: auto). A VM's file systems are frozen through its
   * guest agent around the snapshot when it answers (application-consistent), else the backup
   * is crash-consistent and says why (see backup-consistency.ts). The job waits for a transfer
   * slot on the host the data lives on when that host is at its limit.
   */
  backup(
    actor: Actor,
    target: { vm: string } | { volume: string },
    repo: RepoAccess,
    opts: { transport?: string; full?: boolean } & ConsistencyOptions = {},
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
        });
        this.exports.refresh();
        return backupResult(m, transport);
      } finally {
        release();
      }
    });
  }

  /** The site's NBD listeners, as the backup transports reach them. */
  private endpoints(): SiteEndpoints {
    const tcp = (a: ListenAddress | undefined) =>
      a && 'port' in a ? { host: a.host, port: a.port } : undefined;
    const nbd = tcp(this.nbdPlain);
    const nbds = tcp(this.nbds?.address);
    return {
      exports: this.exports,
      socket: this.nbdSocket,
      ...(nbd ? { nbd } : {}),
      ...(nbds ? { nbds: { ...nbds, psk: { identity: this.psk.identity, key: this.psk.key } } } : {}),
    };
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

  /**
   * Live storage migration of volumes to another pool, as a job: a volume's VM and NBD clients
   * go on while it moves, and see a short pause at the switch (logged). Volumes move one by one.
   */
  moveVolume(actor: Actor, volume: string, pool: string, opts: { keepSource?: boolean } = {}): Job {
    return this.moveVolumes(actor, { volumes: [volume], pool, kind: 'volume.move', target: volume, ...opts });
  }

  /** Moves all of a VM's disks to another pool while it runs, as one job. */
  moveVmStorage(actor: Actor, vm: string, pool: string, opts: { keepSource?: boolean } = {}): Job {
    const v = this.compute.vm(vm);
    const volumes = v.disks.map((d) => d.volume);
    return this.moveVolumes(actor, { volumes, pool, kind: 'vm.move-storage', target: v.name, ...opts });
  }

  private moveVolumes(
    actor: Actor,
    req: {
      volumes: string[];
      pool: string;
      keepSource?: boolean;
      kind: 'volume.move' | 'vm.move-storage';
      target: string;
    },
  ): Job {
    this.storage.pool(req.pool);
    for (const v of req.volumes) {
      this.storage.volume(v);
      const backups = this.jobs
        .list({ state: 'running' })
        .filter(
          (j) =>
            j.kind.endsWith('.backup') &&
            (j.target === v || this.compute.usersOf(v).some((u) => u.name === j.target)),
        );
      if (backups.length)
        throw conflict(`volume ${v} is being backed up (job ${backups[0]!.id}); move it afterwards`);
    }
    return this.jobs.start({ kind: req.kind, target: req.target, actor }, async (ctx) => {
      const results = [];
      for (const v of req.volumes) {
        // Its backup checkpoints are dropped by the move: their exports go first.
        for (const snap of this.storage.listSnapshots(v)) this.exports.withdraw(`${v}@${snap.name}`);
        ctx.log(`moving volume ${v} to pool ${req.pool}`);
        const r = await this.storage.moveVolume(v, req.pool, {
          signal: ctx.signal,
          onProgress: (d, t) => ctx.progress(d, t, `copying ${v}`),
          ...(req.keepSource ? { keepSource: true } : {}),
        });
        ctx.log(
          `volume ${v} is on pool ${r.to}: copied ${r.copiedBytes} bytes, mirrored ${r.mirroredBytes} bytes of writes, I/O paused ${r.pauseMs.toFixed(1)} ms at the switch`,
        );
        results.push(r);
        this.exports.refresh();
      }
      return { volumes: results };
    });
  }

  // ---- instant recovery ----------------------------------------------------------------------

  /** Runs a VM straight from a VM backup (see RecoveryService); audited. */
  async recoverInstant(actor: Actor, req: InstantRecoveryRequest) {
    const target = req.name ?? req.snapshot;
    try {
      const r = await this.recovery.instant(req);
      this.events.append({
        actor,
        action: 'recovery.instant',
        target: r.vm.name,
        outcome: 'ok',
        message: `VM ${r.vm.name} runs from backup ${req.snapshot} (started in ${r.seconds.toFixed(1)} s)`,
      });
      return r;
    } catch (err) {
      this.events.append({
        actor,
        action: 'recovery.instant',
        target,
        outcome: 'failed',
        message: `instant recovery of ${req.snapshot}: ${errorMessage(err)}`,
      });
      throw err;
    }
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

  // ---- shutdown --------------------------------------------------------------------------

  /** Stops serving. Running VMs go on; the next daemon attaches to them again. */
  async close(): Promise<void> {
    await this.jobs.cancelAll();
    this.compute.detachAll();
    this.recovery.close();
    await this.nbd.close();
    await this.nbds?.server.close();
    this.db.close();
    this.storage.close();
  }
}

function siteName(db: Db, wanted: string | undefined): string {
  const row = db.prepare("SELECT value FROM site WHERE key = 'name'").get() as { value: string } | undefined;
  if (row) {
    if (wanted && wanted !== row.value)
      throw conflict(`this data directory belongs to site ${row.value}, not ${wanted}`);
    return row.value;
  }
  const name = wanted ?? hostname();
  checkName('site', name);
  db.prepare("INSERT INTO site (key, value) VALUES ('name', ?)").run(name);
  return name;
}

/** The API token of the site in `dataDir`, made at first use (mode 0600). */
export function apiToken(dataDir: string): string {
  const path = join(dataDir, 'api-token');
  if (!existsSync(path)) writeFileAtomic(path, randomBytes(32).toString('base64url') + '\n'); // 0600
  return readFileSync(path, 'utf8').trim();
}

let version: string | undefined;
export function havenVersion(): string {
  version ??= (
    JSON.parse(readFileSync(new URL('../../../../package.json', import.meta.url), 'utf8')) as {
      version: string;
    }
  ).version;
  return version;
}
