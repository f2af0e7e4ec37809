import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { join, resolve } from 'node:path';
import { conflict, invalidArgument, logger, writeFileAtomic } from '../../common/index.js';
import {
  DEFAULT_HANDSHAKE_TIMEOUT_MS,
  NbdServer,
  parseHostPort,
  type ListenAddress,
} from '../../nbd/index.js';
import type { ThrottleLimits } from '../../block/index.js';
import {
  REPLICA_LABEL,
  StorageExports,
  StorageService,
  checkName,
  makePrivate,
  sitePsk,
  type SitePsk,
} from '../../storage/index.js';
import {
  repoAccess,
  TRANSPORTS,
  TransferSlots,
  isTransport,
  offeredTransports,
  type RepoAccess,
  type SiteEndpoints,
} from '../../protection/index.js';
import { ComputeService } from './compute.js';
import { openDatabase, schemaVersion, type Db } from './database.js';
import { EventLog } from './events.js';
import { JobManager } from './jobs.js';
import { RecoveryService, type RecoveryOptions } from './recovery.js';
import { SiteBackups } from './backups.js';
import { SiteVms } from './vms.js';
import { SiteChecks } from './checks.js';
import { SiteVolumes } from './volumes.js';
import { siteIdentity, type SiteIdentity } from './identity.js';
import { SitePeers } from './peers.js';
import type { HeartbeatOptions } from './peer-health.js';
import { SiteReplication } from './replication.js';
import { SiteGroups } from './site-groups.js';
import { SiteDr } from './dr.js';
import { SitePlans } from './site-plans.js';
import { SiteObjectives } from './site-objectives.js';
import { SitePolicies } from './policies.js';
import { PoolCapabilities, parseCapabilities } from './pool-capabilities.js';
import type { ScheduleOwnerSink } from './schedule-spec.js';
import { Scheduler, type SchedulerOptions } from './scheduler.js';
import { ScheduledRuns } from './schedule-runs.js';
import { SiteMetrics } from './metrics.js';
import { ProviderPools } from './provider-pools.js';
import { SiteAlerts, repositoryUsage, type AlertOptions } from '../alerts/index.js';
import { SiteAccess, type AccessOptions } from '../access/index.js';
export type { Actor } from './domain.js';

const log = logger('site');
/** How often every object's compliance with its policy is judged again (changes are events). */
const COMPLIANCE_INTERVAL_MS = 60_000;
/** How often out-of-process storage providers are asked for their health, capacity and volumes. */
const PROVIDER_REFRESH_INTERVAL_MS = 60_000;

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
  /**
   * HOST:PORT of the peer link listener, where paired sites connect (mutual TLS with the site
   * identity; port 0 picks a free one); "none" or absent: none (`haven serve` defaults to
   * 127.0.0.1:10810).
   */
  peerListen?: string;
  /** HOST:PORT paired sites are told to dial instead of `peerListen` (a proxy or NAT in front of it). */
  peerAdvertise?: string;
  /** Where policies put their schedules (default: the site's scheduler; tests may record them instead). */
  schedules?: ScheduleOwnerSink;
  /** The scheduler's clock (default the wall clock; tests drive a ManualClock) and run limits. */
  scheduler?: SchedulerOptions;
  /** The alert state check's interval and thresholds, and how notifications are retried. */
  alerts?: AlertOptions;
  /** How often every service objective's compliance is judged again (default 60 s). */
  objectiveCheckMs?: number;
  /** Heartbeats to paired sites: their interval, and how many missed make a peer unreachable. */
  peerHeartbeat?: HeartbeatOptions;
  /** Console sessions' lifetimes, sign-in throttling and the password hash's cost. */
  access?: AccessOptions;
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
  /** This site to its paired sites: its link address (HOST:PORT, when it listens) and certificate fingerprint. */
  peer: { link?: string; fingerprint: string };
}

/**
 * A site: one data directory holding its storage (pools, volumes), its database (VMs, jobs,
 * events) and its API token; the storage service exporting every volume over NBD; the compute
 * service running VMs. This is what the daemon runs and what the API calls: a thin facade over
 * one object per domain — `volumes` (pools, volumes, snapshots, bitmaps, import, export, moves),
 * `backups` (backup, restore, rollback, repository jobs), `vms` (networks, VMs, instant
 * recovery) and `recovery` (VMs running from backups) — whose every change is in the event log.
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
  readonly volumes: SiteVolumes;
  readonly backups: SiteBackups;
  readonly vms: SiteVms;
  /** Recoverability checks: a VM's backup booted on an isolated network, checked, torn down. */
  readonly checks: SiteChecks;
  /** Paired sites, the peer links to them and the calls over those. */
  readonly peers: SitePeers;
  /** Consistency groups replicated to and from paired sites. */
  readonly replication: SiteReplication;
  /** Resiliency groups: VMs protected and recovered together (one consistency group each). */
  readonly groups: SiteGroups;
  /** Disaster recovery over those groups: takeover, resync, migrate, rehearsal, services. */
  readonly dr: SiteDr;
  /** Service objectives applied to groups and services, and their compliance. */
  readonly objectives: SiteObjectives;
  /** DR plans: steps run as jobs, retried from the one that failed. */
  readonly plans: SitePlans;
  /** Storage policies: placement, compliance, remediation; and the pools' declared capabilities. */
  readonly policies: SitePolicies;
  /** The site's Prometheus metrics (docs/metrics.md), served by the API at /metrics. */
  readonly metrics: SiteMetrics;
  /** Alerts, their silences and notification channels. */
  readonly alerts: SiteAlerts;
  /** Schedules of backups, snapshots, prunes, verifies, gcs and checks, and their runs (docs/schedules.md). */
  readonly scheduler: Scheduler;
  /** Pools of out-of-process storage providers (docs/provider-api.md). */
  readonly providerPools: ProviderPools;
  /** Users, roles, console sessions and API tokens (docs/users.md). */
  readonly access: SiteAccess;

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
    identity: SiteIdentity,
    metrics: SiteMetrics,
    schedules?: ScheduleOwnerSink,
    alertOptions: AlertOptions = {},
    schedulerOptions: SchedulerOptions = {},
    heartbeat: HeartbeatOptions = {},
    accessOptions: AccessOptions = {},
  ) {
    this.metrics = metrics;
    this.transfers = new TransferSlots(maxTransfersPerHost);
    this.events = new EventLog(db);
    this.access = new SiteAccess(db, this.events, apiToken(dataDir), accessOptions);
    this.jobs = new JobManager(db, this.events);
    this.compute = new ComputeService(db, this.events, join(dataDir, 'vms'), {
      uriOf: (v) => `nbd+unix:///${encodeURIComponent(v)}?socket=${nbdSocket}`,
      check: (v) => {
        storage.volume(v); // NOT_FOUND names it
        // A replica changes under the applier and is torn between checkpoints: never a VM's disk.
        const of = storage.volumeLabels(v)[REPLICA_LABEL];
        if (of !== undefined)
          throw conflict(
            `volume ${v} is the replica of replication group ${of.split('/')[1] ?? of} from site ${of.split('/')[0]}: clone one of its checkpoints (haven replication checkpoints) and give the VM the clone`,
          );
      },
    });
    this.recovery = new RecoveryService(db, storage, this.compute, this.jobs, exports, recoveryOptions);
    const capabilities = new PoolCapabilities(db, storage);
    this.providerPools = new ProviderPools(db, storage);
    const parts = {
      providerPools: this.providerPools,
      storage,
      exports,
      jobs: this.jobs,
      events: this.events,
      compute: this.compute,
      replicatedBy: (kind: 'volume' | 'vm', n: string) =>
        kind === 'vm' ? this.replication.groupOfVm(n) : this.replication.groupOf(n),
      fencedBy: (vm: string) => {
        const f = this.replication.fencedGroupOfVm(vm);
        if (f)
          return `VM ${vm} is in replication group ${f.group}, which site ${f.by} took over at ${f.at}: it runs there now (fenced here, so that it never runs at two sites)`;
        // After a resync back, its disks are replicas of the group running at the other site.
        for (const d of this.compute.vm(vm).disks) {
          const of = storage.volumeLabels(d.volume)[REPLICA_LABEL];
          if (of !== undefined)
            return `VM ${vm}'s disk ${d.volume} is the replica of replication group ${of.split('/')[1] ?? of} from site ${of.split('/')[0]}: the VM runs there (migrate it back to run it here)`;
        }
        return undefined;
      },
      policy: {
        place: (req: Parameters<SitePolicies['place']>[0]) => this.policies.place(req),
        adopt: (actor: string, volume: string, policy: string) =>
          void this.policies.assign(actor, policy, { volume }),
        declare: (pool: string, caps: string[]) => capabilities.declare(pool, parseCapabilities(caps)),
        forget: (pool: string) => capabilities.forget(pool),
        advertised: (pool: string) => capabilities.of(pool),
        forgetObject: (kind: 'vm' | 'volume', n: string) => {
          this.policies.forgetObject(kind, n);
          if (kind === 'vm') this.replication.resiliency.forgetVm(n); // a deleted VM leaves its group
        },
      },
    };
    this.volumes = new SiteVolumes(parts);
    this.backups = new SiteBackups(
      parts,
      this.transfers,
      dataDir,
      () => this.endpoints(),
      (repo, result) => metrics.backedUp(repo, result),
    );
    this.vms = new SiteVms(parts, this.recovery);
    this.checks = new SiteChecks(parts, db, this.recovery, dataDir);
    this.peers = new SitePeers(db, this.events, name, identity, heartbeat);
    this.replication = new SiteReplication(parts, db, this.peers, dataDir, name);
    this.peers.health.takenOver = (peer) =>
      this.replication
        .list()
        .filter((g) => g.role === 'target' && g.peer === peer && g.takenOver)
        .map((g) => g.name);
    this.dr = new SiteDr(parts, this.replication, this.peers, db, name);
    this.groups = new SiteGroups(
      parts,
      this.replication.resiliency,
      this.replication,
      () => this.dr.services,
    );
    this.objectives = new SiteObjectives(
      db,
      this.events,
      this.replication,
      this.dr.services,
      this.dr.reports,
      this.peers,
    );
    this.dr.objectiveFor = (t) => this.objectives.objectiveFor(t);
    this.plans = new SitePlans(parts, db, this.dr, this.vms, name);
    this.scheduler = new Scheduler(
      db,
      this.events,
      new ScheduledRuns(parts, this.backups, this.checks),
      schedulerOptions,
    );
    this.policies = new SitePolicies(parts, db, {
      capabilities,
      volumes: this.volumes,
      replication: this.replication,
      checks: this.checks,
      sink: schedules ?? this.scheduler,
    });
    metrics.bind({
      jobs: this.jobs,
      storage,
      exports,
      replication: this.replication,
      // The alerts are made below; the gauge reads them only when scraped.
      openAlerts: () => this.alerts.openCounts(),
      nbdServers: () => [
        { server: 'nbd', nbd },
        ...(this.nbds ? [{ server: 'nbds', nbd: this.nbds.server }] : []),
      ],
    });
    this.alerts = new SiteAlerts(
      {
        site: name,
        version: havenVersion(),
        db,
        events: this.events,
        job: (id) => {
          const code = this.jobs.get(id).errorCode;
          return code ? { errorCode: code } : {};
        },
        pools: () => storage.listPools(),
        replication: () => this.replication.list(),
        recoveries: () => this.recovery.list(),
      },
      alertOptions,
    );
  }

  static async open(opts: SiteOptions): Promise<Site> {
    // A misspelt transport is refused before anything is opened.
    for (const t of opts.transports ?? [])
      if (!isTransport(t)) throw invalidArgument(`unknown transport ${t}: use ${TRANSPORTS.join(', ')}`);
    const dataDir = resolve(opts.dataDir);
    mkdirSync(dataDir, { recursive: true, mode: 0o700 });
    // Volumes, keys and sockets live below it: no other user may even look in.
    makePrivate(dataDir, 0o700, log);
    const storage = await StorageService.openAsync(dataDir); // takes the data directory's lock
    let db: Db | undefined;
    const handshakeTimeoutMs = opts.nbdHandshakeTimeoutMs ?? DEFAULT_HANDSHAKE_TIMEOUT_MS;
    // Made first: the NBD servers time their requests into it.
    const metrics = new SiteMetrics();
    const nbd = new NbdServer({
      log: logger('site-nbd'),
      handshakeTimeoutMs,
      observer: metrics.nbdLatency.observer('nbd'),
    });
    let nbds: NbdServer | undefined;
    let opened: Site | undefined;
    try {
      db = openDatabase(join(dataDir, 'site.db'));
      const name = siteName(db, opts.name);
      if (storage.listPools().length === 0) storage.createPool('default');
      // Volumes on out-of-process providers are served like any other: known before the exports.
      const providers = new ProviderPools(db, storage);
      await providers.loadAll();
      const exports = new StorageExports(storage, nbd);
      exports.refresh();
      const run = join(dataDir, 'run');
      mkdirSync(run, { recursive: true, mode: 0o700 });
      makePrivate(run, 0o700, log);
      const socket = join(run, 'nbd.sock');
      storage.setLocalAccess((t) => `nbd+unix:///${encodeURIComponent(t)}?socket=${socket}`);
      const identity = await siteIdentity(dataDir, name);
      const site = new Site(
        name,
        dataDir,
        storage,
        db,
        nbd,
        exports,
        socket,
        opts.maxTransfersPerHost ?? 4,
        {
          ...(opts.recoveryLimits ? { limits: opts.recoveryLimits } : {}),
          ...(opts.recoveryWarnAfterSeconds !== undefined
            ? { warnAfterSeconds: opts.recoveryWarnAfterSeconds }
            : {}),
        },
        identity,
        metrics,
        opts.schedules,
        opts.alerts ?? {},
        opts.scheduler ?? {},
        opts.peerHeartbeat ?? {},
        opts.access ?? {},
      );
      opened = site;
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
          observer: metrics.nbdLatency.observer('nbds'),
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
      if (opts.peerListen && opts.peerListen !== 'none')
        await site.peers.listen(parseHostPort(opts.peerListen), opts.peerAdvertise);
      site.backups.offer(offeredTransports(site.endpoints(), opts.transports));
      site.recover();
      const { attached, lost } = await site.compute.reattach();
      // Checks the previous daemon did not finish: their VMs (reattached just now) and all go.
      await site.checks.cleanupInterrupted();
      // Both sides of every group go on where they were (a crashed source rescans).
      site.replication.startAll();
      site.peers.health.start();
      site.policies.watch(COMPLIANCE_INTERVAL_MS);
      site.providerPools.watch(PROVIDER_REFRESH_INTERVAL_MS, () => site.exports.refresh());
      site.objectives.watch(opts.objectiveCheckMs ?? COMPLIANCE_INTERVAL_MS);
      site.alerts.start();
      // Last: a run missed while the daemon was down may start at once.
      site.scheduler.start();
      log.info({ site: name, dataDir, attached, lost }, 'site open');
      return site;
    } catch (err) {
      await nbd.close().catch(() => undefined);
      await nbds?.close().catch(() => undefined);
      opened?.scheduler.close();
      await opened?.peers.close().catch(() => undefined);
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

  /**
   * The repositories the site uses (its backups went into them, its repository jobs ran on
   * them), each with its file system's size and free space, or why it could not be read.
   */
  repositories(): Promise<
    { path: string; fs?: { totalBytes: number; freeBytes: number }; error?: string }[]
  > {
    return repositoryUsage(this.db);
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
      transports: this.backups.transports(),
      maxTransfersPerHost: this.transfers.perHost,
      recovery: this.recovery.settings(),
      startedAt: this.startedAt,
      pools: this.storage.listPools().length,
      volumes: this.storage.listVolumes().length,
      vms: vms.length,
      runningVms: vms.filter((v) => v.state === 'running').length,
      runningJobs: this.jobs.list({ state: 'running' }).length,
      peer: this.peers.info(),
    };
  }

  /** The site's API token, made at the first start, readable only by its owner. */
  apiToken(): string {
    return apiToken(this.dataDir);
  }

  /** Where a repository is and its passphrase: from a file the daemon can read, else the daemon's $HAVEN_PASSPHRASE. */
  static repoAccess(repo: string, passphraseFile?: string): RepoAccess {
    return repoAccess(repo, passphraseFile);
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

  /** Stops serving. Running VMs go on; the next daemon attaches to them again. */
  async close(): Promise<void> {
    this.policies.unwatch();
    this.scheduler.close();
    this.providerPools.close();
    this.objectives.unwatch();
    await this.alerts.close(); // before the jobs are cancelled: a stopping daemon is no alert
    await this.jobs.cancelAll();
    await this.replication.close();
    this.compute.detachAll();
    this.recovery.close();
    await this.nbd.close();
    await this.nbds?.server.close();
    await this.peers.close();
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
