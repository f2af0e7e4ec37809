/**
 * Storage benchmark: what a Haven volume costs over a plain raw file. The same data is served
 * by Haven twice — as a raw file (`haven nbd serve`) and as a volume of the storage service
 * (`haven storage serve`: copy-on-write mapping tree, the I/O tap with a dirty bitmap enabled,
 * one snapshot taken after the data was imported, so writes copy on write) — and measured with the same clients as the NBD
 * benchmark. A second volume, identical but with 50 snapshots taken between scattered writes,
 * shows that reads do not slow down with the number of snapshots.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { run, HAVEN_BIN } from '../test/support/proc.js';
import { runSpan } from './lib/results.js';
import type { Benchmark, BenchOptions, BenchResult, Metric } from './lib/types.js';
import { ensurePeerTools } from './lib/peers.js';
import { BenchServer } from './lib/server.js';
import { fioNbd } from './lib/fio.js';
import { medianOf, timeCommand } from './lib/timing.js';
import { createDataFile, fmtSize, syncAll, warmFile } from './lib/image.js';
import { environment } from './lib/env.js';
import { onInterrupt } from './lib/cleanup.js';
import { StorageService } from '../src/storage/index.js';

const VOLUME = 'volume';
const RAW = 'raw file';
const MANY = 'volume, 50 snapshots';
const MiB = 1024 * 1024;

const haven = (...args: string[]) => run(process.execPath, [HAVEN_BIN, ...args], { timeout: 600_000 });

async function runStorage(opts: BenchOptions): Promise<BenchResult> {
  const startedAt = new Date();
  const { size, runtime, repeat, log } = opts;
  ensurePeerTools(
    [
      { command: 'nbdcopy', pkg: 'libnbd-bin' },
      { command: 'fio', pkg: 'fio' },
    ],
    opts.install,
    log,
  );
  const subjects = [VOLUME, RAW, MANY];
  const values = () => Object.fromEntries(subjects.map((s) => [s, null])) as Record<string, number | null>;
  const metric = (key: string, label: string, unit: string, target?: Metric['target']): Metric => ({
    key,
    label,
    unit,
    better: 'higher',
    values: values(),
    ...(target ? { target } : {}),
  });
  const vsRaw = { kind: 'ratio' as const, peer: RAW, min: 0.9 };
  const m = {
    seqRead: metric('seq-read', 'sequential read (nbdcopy)', 'GB/s', vsRaw),
    seqWrite: metric('seq-write', 'sequential write (nbdcopy)', 'GB/s', vsRaw),
    randRead: metric('randread-qd16', '4K random read QD16', 'k IOPS', vsRaw),
    randWrite: metric('randwrite-qd16', '4K random write QD16', 'k IOPS', vsRaw),
    snapRatio: metric('randread-50-vs-1', '4K random read, 50 snapshots / 1 snapshot', 'ratio', {
      kind: 'min',
      value: 0.9,
    }),
  };
  const errors: Record<string, string> = {};
  const dir = mkdtempSync(join(opts.workdir, 'haven-bench-storage-'));
  const unregister = onInterrupt(() => rmSync(dir, { recursive: true, force: true }));
  const data = join(dir, 'site');
  const sock = join(dir, 'nbd.sock');
  const raw = join(dir, 'raw.img');
  const source = join(dir, 'source.img');
  const copyTimeoutMs = Math.round(60000 + (size / 50e6) * 1000);
  try {
    log(`creating ${fmtSize(size)} of data, and the volumes`);
    createDataFile(raw, size);
    createDataFile(source, size);
    await haven('pool', 'create', 'p', '--data', data);
    await haven('volume', 'import', raw, '--name', 'vol', '--pool', 'p', '--data', data);
    await haven('bitmap', 'add', 'vol', 'b0', '--data', data);
    await haven('snapshot', 'create', 'vol', 'base', '--data', data);
    await haven('volume', 'import', raw, '--name', 'many', '--pool', 'p', '--data', data);
    await syncAll();

    const measure = async (subject: string, uri: string, server: BenchServer, full: boolean) => {
      // Warm the page cache with the subject's own data (a volume's lives in its pool).
      await timeCommand('nbdcopy', [uri, 'null:'], copyTimeoutMs);
      const rd = await medianOf(
        repeat,
        async () => size / (await timeCommand('nbdcopy', [uri, 'null:'], copyTimeoutMs)) / 1e9,
      );
      m.seqRead.values[subject] = rd.value;
      log(`${subject}: sequential read ${rd.value.toFixed(2)} GB/s`);
      const rr = await fioNbd({ uri, rw: 'randread', bs: '4k', iodepth: 16, runtime });
      m.randRead.values[subject] = rr.iops / 1000;
      log(`${subject}: random read ${(rr.iops / 1000).toFixed(1)} k IOPS`);
      if (full) {
        warmFile(source);
        const wr = await medianOf(
          repeat,
          async () => size / (await timeCommand('nbdcopy', [source, uri], copyTimeoutMs)) / 1e9,
        );
        m.seqWrite.values[subject] = wr.value;
        log(`${subject}: sequential write ${wr.value.toFixed(2)} GB/s`);
        const rw = await fioNbd({ uri, rw: 'randwrite', bs: '4k', iodepth: 16, runtime });
        m.randWrite.values[subject] = rw.iops / 1000;
        log(`${subject}: random write ${(rw.iops / 1000).toFixed(1)} k IOPS`);
        await syncAll();
      }
      if (!server.alive()) throw new Error(`server exited:\n${server.output().slice(-2000)}`);
    };

    // The raw file through Haven's NBD server.
    {
      const s = await BenchServer.start(
        RAW,
        process.execPath,
        [HAVEN_BIN, 'nbd', 'serve', raw, '--socket', sock, '--name', 'raw'],
        { path: sock },
      );
      try {
        await measure(RAW, `nbd+unix:///raw?socket=${sock}`, s, true);
      } catch (e) {
        errors[RAW] = (e as Error).message;
      } finally {
        await s.stop();
      }
    }

    // 50 snapshots of the second volume, with scattered writes between them (so the trees of
    // volume and snapshots share some pages and not others), through the storage API directly.
    log('taking 50 snapshots of the second volume between scattered writes');
    {
      const storage = StorageService.open(data);
      try {
        const dev = storage.openDevice('many');
        const block = Buffer.alloc(64 * 1024, 0x5c);
        let seed = 1;
        for (let i = 0; i < 50; i++) {
          for (let j = 0; j < 16; j++) {
            seed = (seed * 1103515245 + 12345) & 0x7fffffff;
            dev.write(block, ((seed >>> 4) % Math.floor(size / block.length)) * block.length);
          }
          storage.snapshot('many', `s${i}`);
        }
      } finally {
        storage.close();
      }
    }

    // The volumes through the storage service.
    const s = await BenchServer.start(
      VOLUME,
      process.execPath,
      [HAVEN_BIN, 'storage', 'serve', '--data', data, '--socket', sock],
      { path: sock },
    );
    try {
      await measure(MANY, `nbd+unix:///many?socket=${sock}`, s, false);
      await measure(VOLUME, `nbd+unix:///vol?socket=${sock}`, s, true);
      const one = m.randRead.values[VOLUME];
      const fifty = m.randRead.values[MANY];
      if (one && fifty) m.snapRatio.values[VOLUME] = fifty / one;
    } catch (e) {
      errors[VOLUME] = (e as Error).message;
    } finally {
      await s.stop();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
    unregister();
  }
  return {
    name: 'storage',
    title: 'Storage: a Haven volume vs a raw file, both served by Haven',
    ...runSpan(startedAt),
    haven: VOLUME,
    subjects,
    errors,
    metrics: Object.values(m),
    settings: {
      imageBytes: size,
      fioRuntimeSeconds: runtime,
      copies: repeat,
      clusterSize: '64 KiB',
      snapshotsOnVolume: 1,
    },
    environment: environment({ nbdcopy: ['--version'], fio: ['--version'] }),
    notes: [
      'the volume has a dirty bitmap and one snapshot taken after import (its first writes copy on write); the tap numbers and tracks every write',
      ...(opts.quick || size < 2 * 1024 * MiB ? [`image ${fmtSize(size)}: a development run`] : []),
    ],
  };
}

export const storageBenchmark: Benchmark = {
  name: 'storage',
  title: 'Storage: a Haven volume vs a raw file, both served by Haven',
  description:
    'Serves the same data as a raw file and as a storage-service volume (mapping tree, tap, one snapshot); ' +
    'nbdcopy sequential read/write and fio 4 KiB random read/write; random reads with 50 snapshots vs 1.',
  run: runStorage,
};
