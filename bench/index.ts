/**
 * The benchmarks `npm run bench -- <name>` knows. Each entry loads its module only when run, so a
 * broken or unfinished benchmark does not stop the others. Planned ones are listed so that
 * `--list` shows the whole intended set.
 */
import type { Benchmark } from './lib/types.js';

export interface RegistryEntry {
  name: string;
  summary: string;
  /** Undefined while the benchmark is planned but not written. */
  load?: () => Promise<Benchmark>;
}

export const registry: RegistryEntry[] = [
  {
    name: 'nbd',
    summary: 'NBD server vs qemu-nbd and nbdkit: sequential and 4K random I/O, peak RSS',
    load: async () => (await import('./nbd.js')).nbdBenchmark,
  },
  {
    name: 'storage',
    summary: 'a Haven volume (mapping tree, tap, snapshot) vs a raw file; reads with 50 snapshots vs 1',
    load: async () => (await import('./storage.js')).storageBenchmark,
  },
  {
    name: 'backup',
    summary: 'backup vs restic and borg: first, incremental (1% changed), restore; repository size, RSS',
    load: async () => (await import('./backup.js')).backupBenchmark,
  },
  {
    name: 'ceph-s3',
    summary: 'backup to S3 on a single-node radosgw vs restic: first, incremental (1% changed), restore',
    load: async () => (await import('./ceph-s3.js')).cephS3Benchmark,
  },
  {
    name: 'ceph-rbd',
    summary: 'NBD of an RBD-backed volume vs qemu-nbd on rbd:POOL/IMAGE: sequential, 4K random, RSS',
    load: async () => (await import('./ceph-rbd.js')).cephRbdBenchmark,
  },
  {
    name: 'cli',
    summary: 'whole-process time of haven pool list and a no-change incremental backup, --data and --api',
    load: async () => (await import('./cli.js')).cliBenchmark,
  },
  {
    name: 'console',
    summary:
      'web console: dashboard render with 1,000 VMs and 100 jobs, progress latency, assets, CPU with 10 browsers',
    load: async () => (await import('./console.js')).consoleBenchmark,
  },
  {
    name: 'site',
    summary: 'site daemon: haven vm start vs the same QEMU by hand; idle RSS and CPU with 10 VMs',
    load: async () => (await import('./site.js')).siteBenchmark,
  },
  {
    name: 'replication',
    summary:
      'replication gateways over TLS: RPO at 10/50/100 MB/s, overhead on/off, sync vs async, initial sync vs nbdcopy, resync bytes',
    load: async () => (await import('./replication.js')).replicationBenchmark,
  },
  {
    name: 'recovery',
    summary:
      'instant recovery vs restore + boot (2 sizes), boot from backup vs local; live migration vs qemu-img convert',
    load: async () => (await import('./recovery.js')).recoveryBenchmark,
  },
  {
    name: 'dr',
    summary:
      'two sites, a 3-VM service: rehearsal, migrate downtime, takeover RTO vs a local start, failback bytes',
    load: async () => (await import('./dr.js')).drBenchmark,
  },
  {
    name: 'scheduler',
    summary:
      'schedules of 1,000 volumes over a simulated week: wall time per run vs the job, API latency, memory, idle CPU',
    load: async () => (await import('./scheduler.js')).schedulerBenchmark,
  },
];
