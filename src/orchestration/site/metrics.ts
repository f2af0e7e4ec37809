import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics, type Metric } from 'prom-client';
import { errorMessage, logger } from '../../common/index.js';
import type { NbdServer } from '../../nbd/index.js';
import type { BackupResult } from '../../protection/index.js';
import type { Repository, RepositoryStats } from '../../repository/index.js';
import type { StorageExports, StorageService } from '../../storage/index.js';
import type { Job, JobManager } from './jobs.js';
import { NbdLatency } from './nbd-latency.js';
import type { SiteReplication } from './replication.js';

const log = logger('metrics');

/** A repository's statistics are read again at most this often (they list every chunk). */
export const REPOSITORY_STATS_TTL_MS = 60_000;

/** Seconds: jobs last from a fraction of a second (a small volume's backup) to hours. */
const JOB_BUCKETS = [0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 1800, 3600, 7200, 14400];

/** What a site's metrics are read from when Prometheus scrapes. */
export interface MetricSources {
  jobs: JobManager;
  storage: StorageService;
  exports: StorageExports;
  replication: SiteReplication;
  /** Open alerts per rule (every rule, zero included), read when scraped. */
  openAlerts(): { rule: string; severity: string; open: number }[];
  /** The site's NBD servers and the `server` label of each. */
  nbdServers(): { server: string; nbd: NbdServer }[];
}

interface KnownRepository {
  repo: Repository;
  stats?: RepositoryStats;
  readAt: number;
  reading?: Promise<void>;
}

/**
 * The Prometheus metrics of one site (docs/metrics.md): its own prom-client Registry (not the
 * global one, so that two sites in one process do not collide). Counters and histograms are
 * fed as the work happens (jobs ending, backups reporting); gauges are read from the site when
 * Prometheus scrapes; NBD request latency comes through the NBD servers' observer hook
 * (nbd-latency.ts). The API only serialises `exposition()`.
 */
export class SiteMetrics {
  readonly registry = new Registry();
  readonly nbdLatency = new NbdLatency();
  private sources: MetricSources | undefined;
  private readonly repositories = new Map<string, KnownRepository>();
  private readonly jobsTotal: Counter<'kind' | 'outcome'>;
  private readonly jobDuration: Histogram<'kind' | 'outcome'>;
  private readonly backupRead: Counter<'transport'>;
  private readonly backupWritten: Counter<'transport'>;
  private readonly dedup: Gauge<'repository'>;
  private readonly compression: Gauge<'repository'>;

  constructor() {
    const registers = [this.registry];
    this.jobsTotal = new Counter({
      name: 'haven_jobs_total',
      help: 'Jobs that ended, by kind and outcome (succeeded, failed, cancelled)',
      labelNames: ['kind', 'outcome'],
      registers,
    });
    this.jobDuration = new Histogram({
      name: 'haven_job_duration_seconds',
      help: 'How long jobs ran, from start to end, by kind and outcome',
      labelNames: ['kind', 'outcome'],
      buckets: JOB_BUCKETS,
      registers,
    });
    const src = () => this.sources;
    new Gauge({
      name: 'haven_jobs_running',
      help: 'Jobs running now, by kind',
      labelNames: ['kind'],
      registers,
      collect() {
        this.reset();
        for (const j of src()?.jobs.list({ state: 'running', limit: 1000 }) ?? []) this.inc({ kind: j.kind });
      },
    });
    this.backupRead = new Counter({
      name: 'haven_backup_read_bytes_total',
      help: 'Bytes backups read from their sources, by transport',
      labelNames: ['transport'],
      registers,
    });
    this.backupWritten = new Counter({
      name: 'haven_backup_written_bytes_total',
      help: 'Bytes backups stored in repositories (new chunks after deduplication, compression and encryption), by transport',
      labelNames: ['transport'],
      registers,
    });
    this.dedup = new Gauge({
      name: 'haven_backup_deduplication_ratio',
      help: 'The last backup into the repository: share of its data chunks the repository already held (0 to 1)',
      labelNames: ['repository'],
      registers,
    });
    this.compression = new Gauge({
      name: 'haven_backup_compression_ratio',
      help: 'The last backup into the repository: stored bytes per byte of its new chunks (below 1: compression saved)',
      labelNames: ['repository'],
      registers,
    });
    const repoGauge = (name: string, help: string, pick: (s: RepositoryStats) => number) =>
      new Gauge({
        name,
        help,
        labelNames: ['repository'],
        registers,
        collect: async () => {
          await this.readRepositories();
          const g = this.registry.getSingleMetric(name) as Gauge<'repository'>;
          g.reset();
          for (const [location, r] of this.repositories)
            if (r.stats) g.set({ repository: location }, pick(r.stats));
        },
      });
    repoGauge(
      'haven_repository_stored_bytes',
      'Bytes the repository stores (its chunks), per repository this site backed up into',
      (s) => s.storedBytes,
    );
    repoGauge(
      'haven_repository_data_bytes',
      "Bytes of data the repository's snapshots refer to (non-zero chunks, once per snapshot)",
      (s) => s.dataBytes,
    );
    repoGauge('haven_repository_snapshots', 'Snapshots in the repository', (s) => s.snapshots);
    const poolGauge = (
      name: string,
      help: string,
      pick: (p: { capacityBytes: number; allocatedBytes: number; freeBytes: number }) => number,
    ) =>
      new Gauge({
        name,
        help,
        labelNames: ['pool'],
        registers,
        collect() {
          this.reset();
          for (const p of src()?.storage.listPools() ?? []) this.set({ pool: p.name }, pick(p));
        },
      });
    poolGauge('haven_pool_capacity_bytes', 'Capacity of the pool', (p) => p.capacityBytes);
    poolGauge(
      'haven_pool_allocated_bytes',
      "Bytes the pool's volumes and snapshots hold",
      (p) => p.allocatedBytes,
    );
    poolGauge('haven_pool_free_bytes', 'Bytes the pool can still give', (p) => p.freeBytes);
    new Gauge({
      name: 'haven_nbd_connections',
      help: 'NBD connections in the transmission phase, per server and export',
      labelNames: ['server', 'export'],
      registers,
      collect: () => {
        const s = this.sources;
        const g = this.registry.getSingleMetric('haven_nbd_connections') as Gauge<'server' | 'export'>;
        g.reset();
        if (!s) return;
        const live = new Set(s.exports.names());
        this.nbdLatency.retain(live);
        for (const { server, nbd } of s.nbdServers())
          for (const [exp, n] of nbd.clientCounts()) if (live.has(exp)) g.set({ server, export: exp }, n);
      },
    });
    this.registry.registerMetric(this.nbdLatency as unknown as Metric);
    const groupGauge = (
      name: string,
      help: string,
      pick: (g: ReturnType<SiteReplication['list']>[number]) => number | undefined,
    ) =>
      new Gauge({
        name,
        help,
        labelNames: ['group'],
        registers,
        collect() {
          this.reset();
          for (const g of src()?.replication.list() ?? []) {
            const v = g.role === 'source' ? pick(g) : undefined;
            if (v !== undefined) this.set({ group: g.name }, v);
          }
        },
      });
    groupGauge(
      'haven_replication_rpo_seconds',
      'Seconds since the newest checkpoint the target applied was taken, per source group (absent before the first)',
      (g) => g.source?.rpoSeconds,
    );
    groupGauge(
      'haven_replication_rpo_objective_seconds',
      "The group's RPO objective",
      (g) => g.rpoObjectiveSeconds,
    );
    groupGauge(
      'haven_replication_lag_bytes',
      'Bytes of writes the target has not applied yet',
      (g) => g.source?.lag.bytes,
    );
    groupGauge(
      'haven_replication_lag_records',
      'Writes the target has not applied yet',
      (g) => g.source?.lag.records,
    );
    groupGauge(
      'haven_replication_journal_fill_ratio',
      "How full the source's replication journal is (0 to 1; full: the group falls back to bitmap mode)",
      (g) => g.source?.journal.fill,
    );
    new Gauge({
      name: 'haven_alerts_firing',
      help: 'Open alerts per rule (silenced ones included: a silence only holds back notifications)',
      labelNames: ['rule', 'severity'],
      registers,
      collect() {
        this.reset();
        for (const a of src()?.openAlerts() ?? []) this.set({ rule: a.rule, severity: a.severity }, a.open);
      },
    });
    collectDefaultMetrics({ register: this.registry });
  }

  /** Starts reading the site: jobs as they end, gauges when scraped. */
  bind(sources: MetricSources): void {
    this.sources = sources;
    sources.jobs.on('update', (job: Job) => this.jobEnded(job));
  }

  /** A backup finished into `repo`: its bytes per transport, its ratios, and its repository becomes known. */
  backedUp(repo: Repository, result: BackupResult): void {
    const s = result.stats;
    this.backupRead.inc({ transport: result.transport }, s.readBytes);
    this.backupWritten.inc({ transport: result.transport }, s.storedBytes);
    const chunks = s.newChunks + s.reusedChunks;
    const repository = repo.location;
    if (chunks > 0) this.dedup.set({ repository }, s.reusedChunks / chunks);
    if (s.newBytes) this.compression.set({ repository }, s.storedBytes / s.newBytes);
    const known = this.repositories.get(repository);
    if (known) {
      known.repo = repo;
      known.readAt = 0; // read again at the next scrape
    } else this.repositories.set(repository, { repo, readAt: 0 });
  }

  /** The exposition in the Prometheus text format, and its content type. */
  async exposition(): Promise<{ contentType: string; text: string }> {
    return { contentType: this.registry.contentType, text: await this.registry.metrics() };
  }

  private jobEnded(job: Job): void {
    if (job.state === 'running') return;
    const labels = { kind: job.kind, outcome: job.state };
    this.jobsTotal.inc(labels);
    if (job.startedAt && job.endedAt)
      this.jobDuration.observe(
        labels,
        Math.max(0, Date.parse(job.endedAt) - Date.parse(job.startedAt)) / 1000,
      );
  }

  /**
   * Reads the statistics of every known repository that were read longer ago than the TTL. A
   * scrape waits only for repositories never read yet; the others refresh in the background,
   * so a big repository does not slow Prometheus down.
   */
  private async readRepositories(): Promise<void> {
    const first: Promise<void>[] = [];
    const now = Date.now();
    for (const [location, r] of this.repositories) {
      if (r.reading || now - r.readAt < REPOSITORY_STATS_TTL_MS) {
        if (r.reading && !r.stats) first.push(r.reading);
        continue;
      }
      r.reading = r.repo
        .stats()
        .then(
          (s) => void (r.stats = s),
          (err: unknown) => {
            log.warn({ repository: location, err: errorMessage(err) }, 'repository statistics unreadable');
            r.stats = undefined;
          },
        )
        .finally(() => {
          r.readAt = Date.now();
          r.reading = undefined;
        });
      if (!r.stats) first.push(r.reading);
    }
    await Promise.all(first);
  }
}
