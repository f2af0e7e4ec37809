/**
 * Backup benchmark: Haven against restic and borg (borg with its fixed 4 MiB chunker, the mode
 * it recommends for disk images). A synthetic disk image (40% zeros, 30% random, 30% repeated
 * regions, deterministic) is backed up; then 1% of it is changed in scattered 64 KiB blocks and
 * backed up again; then the second backup is restored to a file and checked by hash. Haven backs
 * the image up as a Haven volume, so that its second backup uses changed-block tracking; restic
 * and borg read the image file. Wall time, throughput, repository size and peak RSS.
 */
import { spawn } from 'node:child_process';
import { closeSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, writeSync } from 'node:fs';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { HAVEN_BIN, run } from '../test/support/proc.js';
import { StorageService } from '../src/storage/index.js';
import { runSpan } from './lib/results.js';
import type { Benchmark, BenchOptions, BenchResult, Metric } from './lib/types.js';
import { ensurePeerTools, toolVersion } from './lib/peers.js';
import {
  fmtSize,
  keystream as stream,
  makeDiskImage as makeImage,
  sha256File,
  syncAll,
  warmFile,
} from './lib/image.js';
import { environment } from './lib/env.js';
import { onInterrupt } from './lib/cleanup.js';

const HAVEN = 'haven';
const RESTIC = 'restic';
const BORG = 'borg';
const MiB = 1024 * 1024;
const CHANGE = 64 * 1024;

/** 1% of the image in scattered 64 KiB blocks: offsets and contents, the same for every tool. */
function changes(size: number): { offset: number; data: Buffer }[] {
  const rnd = stream(2);
  const slots = size / CHANGE;
  const n = Math.max(1, Math.round((size * 0.01) / CHANGE));
  const picked = new Set<number>();
  while (picked.size < n) picked.add(rnd(4).readUInt32LE(0) % slots);
  return [...picked].sort((a, b) => a - b).map((s) => ({ offset: s * CHANGE, data: rnd(CHANGE) }));
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

async function du(path: string): Promise<number> {
  return Number((await run('du', ['-sb', path])).stdout.split('\t')[0]);
}

/**
 * A restore, timed until its data is on the disk: Haven flushes what it restored before it
 * reports success, restic and borg leave it in the page cache; a sync after each makes the three
 * end in the same state (a restore is done when a crash cannot lose it).
 */
async function durable<T extends { seconds: number }>(step: Promise<T>): Promise<T> {
  const r = await step;
  const t0 = performance.now();
  await syncAll();
  return { ...r, seconds: r.seconds + (performance.now() - t0) / 1000 };
}

/** Runs a command, timing it and sampling its peak RSS (the kernel's high-water mark). */
async function measured(cmd: string, args: string[], env: NodeJS.ProcessEnv, cwd?: string) {
  const t0 = performance.now();
  const child = spawn(cmd, args, { env, stdio: ['ignore', 'pipe', 'pipe'], ...(cwd ? { cwd } : {}) });
  let out = '';
  let err = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => (err += d.toString()));
  let peak = 0;
  const poll = setInterval(() => {
    try {
      const m = /^VmHWM:\s+(\d+) kB/m.exec(readFileSync(`/proc/${child.pid}/status`, 'utf8'));
      if (m) peak = Math.max(peak, Number(m[1]) * 1024);
    } catch {
      // exited
    }
  }, 20);
  const code = await new Promise<number | null>((r) => child.once('exit', r));
  clearInterval(poll);
  const seconds = (performance.now() - t0) / 1000;
  if (code !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${code}:\n${err.slice(-2000)}`);
  return { seconds, peak, out };
}

async function runBackup(opts: BenchOptions): Promise<BenchResult> {
  const startedAt = new Date();
  const { size, log } = opts;
  ensurePeerTools(
    [
      { command: 'restic', pkg: 'restic' },
      { command: 'borg', pkg: 'borgbackup' },
    ],
    opts.install,
    log,
  );
  const subjects = [HAVEN, RESTIC, BORG].filter((s) => !opts.only || opts.only.includes(s));
  const values = () => Object.fromEntries(subjects.map((s) => [s, null])) as Record<string, number | null>;
  const metric = (
    key: string,
    label: string,
    unit: string,
    better: 'higher' | 'lower',
    target?: Metric['target'],
  ): Metric => ({ key, label, unit, better, values: values(), ...(target ? { target } : {}) });
  const m = {
    first: metric('first-backup', 'first backup throughput', 'MiB/s', 'higher', {
      kind: 'ratio',
      peer: RESTIC,
      min: 2,
    }),
    second: metric('second-backup', 'second backup, after 1% scattered changes', 's', 'lower', {
      kind: 'ratio',
      peer: RESTIC,
      min: 1 / 20,
    }),
    growth: metric('repo-growth', 'repository growth on the second backup', 'MiB', 'lower', {
      kind: 'ratio',
      peer: RESTIC,
      min: 0.3,
    }),
    restore: metric('restore', 'restore throughput', 'MiB/s', 'higher', {
      kind: 'ratio',
      peer: RESTIC,
      min: 1.5,
    }),
    size: metric('repo-size', 'repository size after the first backup', 'MiB', 'lower', {
      kind: 'ratio',
      peer: RESTIC,
      min: 1.05,
    }),
    growthRatio: metric('growth-ratio', 'repository growth per changed byte (second backup)', '×', 'lower', {
      kind: 'max',
      value: 1.5,
    }),
    incSmall: metric('incremental', 'incremental of 1% in 64 KiB blocks, whole process', 's', 'lower', {
      kind: 'max',
      value: 0.35,
    }),
    incLarge: metric('incremental-16x', 'the same change on a volume 16× as large (thin)', 's', 'lower'),
    incRatio: metric('incremental-scaling', 'incremental time, 16× volume / 1× volume', '×', 'lower', {
      kind: 'max',
      value: 1.1,
    }),
    rss: metric('peak-rss', 'peak RSS of the tool (any step)', 'MiB', 'lower', { kind: 'max', value: 300 }),
  };
  const errors: Record<string, string> = {};
  const dir = mkdtempSync(join(opts.workdir, 'haven-bench-backup-'));
  const unregister = onInterrupt(() => rmSync(dir, { recursive: true, force: true }));
  const image = join(dir, 'disk.img');
  const env = {
    ...process.env,
    HAVEN_LOG_LEVEL: 'warn',
    RESTIC_PASSWORD: 'bench',
    BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK: 'yes',
    BORG_RELOCATED_REPO_ACCESS_IS_OK: 'yes',
    BORG_CACHE_DIR: join(dir, 'borg-cache'),
    XDG_CACHE_HOME: join(dir, 'cache'),
  };
  try {
    log(`creating a ${fmtSize(size)} image (40% zeros, 30% random, 30% repeated)`);
    makeImage(image, size);
    const change = changes(size);
    log(`${change.length} changes of 64 KiB (${fmtSize(change.length * CHANGE)})`);
    const expected: { sha?: string } = {};
    const applyToImage = () => {
      const fd = openSync(image, 'r+');
      for (const c of change) writeSync(fd, c.data, 0, c.data.length, c.offset);
      closeSync(fd);
    };

    const record = (
      s: string,
      r: {
        first: number;
        second: number;
        sizeAfterFirst: number;
        growth: number;
        restore: number;
        peak: number;
      },
    ) => {
      m.first.values[s] = size / MiB / r.first;
      m.second.values[s] = r.second;
      m.size.values[s] = r.sizeAfterFirst / MiB;
      m.growth.values[s] = r.growth / MiB;
      m.growthRatio.values[s] = r.growth / (change.length * CHANGE);
      m.restore.values[s] = size / MiB / r.restore;
      m.rss.values[s] = r.peak / MiB;
      log(
        `${s}: first ${r.first.toFixed(2)} s, second ${r.second.toFixed(2)} s, restore ${r.restore.toFixed(2)} s, repo ${fmtSize(r.sizeAfterFirst)} (+${fmtSize(r.growth)}), peak RSS ${fmtSize(r.peak)}`,
      );
    };

    // Each tool starts from the original image; the changes are applied between its backups.
    const original = join(dir, 'original.img');
    await run('cp', ['--sparse=always', image, original]);

    const tools: Record<string, () => Promise<void>> = {
      [HAVEN]: async () => {
        const data = join(dir, 'site');
        const repo = join(dir, 'haven-repo');
        const haven = (...args: string[]) => measured(process.execPath, [HAVEN_BIN, ...args], env);
        await haven('pool', 'create', 'default', '--data', data);
        await haven('volume', 'import', image, '--name', 'bench', '--data', data);
        await haven('repo', 'init', '--repo', repo);
        await syncAll();
        const b1 = await haven('backup', 'volume:bench', '--data', data, '--repo', repo, '--json');
        const sizeAfterFirst = await du(repo);
        // The changes reach the volume through its I/O tap, as a VM's writes would.
        const storage = StorageService.open(data);
        try {
          const dev = storage.openDevice('bench');
          for (const c of change) await dev.write(c.data, c.offset);
          await dev.flush();
        } finally {
          storage.close();
        }
        await syncAll();
        const b2 = await haven('backup', 'volume:bench', '--data', data, '--repo', repo, '--json');
        const { result: snap } = JSON.parse(b2.out) as {
          result: { snapshot: string; parent?: string; stats: { readBytes: number } };
        };
        if (!snap.parent) throw new Error('the second Haven backup was not incremental');
        log(`haven: the second backup read ${fmtSize(snap.stats.readBytes)}`);
        const growth = (await du(repo)) - sizeAfterFirst;
        await syncAll();
        const out = join(dir, 'haven-restore.img');
        const r = await durable(haven('restore', snap.snapshot, '--repo', repo, '--to', out));
        if (sha256File(out) !== expected.sha) throw new Error('the Haven restore differs from the image');
        rmSync(out);
        record(HAVEN, {
          first: b1.seconds,
          second: b2.seconds,
          sizeAfterFirst,
          growth,
          restore: r.seconds,
          peak: Math.max(b1.peak, b2.peak, r.peak),
        });
        // Scaling: the same 1% change (fresh data each round) on this volume, then on the volume
        // grown to 16× (thin: the new space is never written). An incremental must cost what
        // changed, not what the disk or its index holds.
        const rounds = Math.max(1, opts.repeat);
        const incremental = async (seed: number) => {
          const rnd = stream(seed);
          const storage = StorageService.open(data);
          try {
            const dev = storage.openDevice('bench');
            for (const c of change) await dev.write(rnd(CHANGE), c.offset);
            await dev.flush();
          } finally {
            storage.close();
          }
          await syncAll();
          return (await haven('backup', 'volume:bench', '--data', data, '--repo', repo, '--json')).seconds;
        };
        const small: number[] = [];
        for (let i = 0; i < rounds; i++) small.push(await incremental(100 + i));
        await haven('volume', 'resize', 'bench', '--size', String(16 * size), '--data', data);
        await haven('backup', 'volume:bench', '--data', data, '--repo', repo, '--json');
        const large: number[] = [];
        for (let i = 0; i < rounds; i++) large.push(await incremental(200 + i));
        m.incSmall.values[HAVEN] = median(small);
        m.incLarge.values[HAVEN] = median(large);
        m.incRatio.values[HAVEN] = median(large) / median(small);
        m.incSmall.samples = { [HAVEN]: small };
        m.incLarge.samples = { [HAVEN]: large };
        m.incSmall.method = m.incLarge.method = `median of ${rounds}`;
        log(
          `haven: incremental ${median(small).toFixed(3)} s at ${fmtSize(size)}, ${median(large).toFixed(3)} s at ${fmtSize(16 * size)}`,
        );
      },
      [RESTIC]: async () => {
        const repo = join(dir, 'restic-repo');
        const restic = (...args: string[]) =>
          measured('restic', ['-r', repo, '--no-cache', ...args], env, dir);
        await restic('init');
        warmFile(image);
        const b1 = await restic('backup', '--quiet', 'disk.img');
        const sizeAfterFirst = await du(repo);
        applyToImage();
        warmFile(image);
        const b2 = await restic('backup', '--quiet', 'disk.img');
        const growth = (await du(repo)) - sizeAfterFirst;
        const target = join(dir, 'restic-restore');
        await syncAll();
        const r = await durable(restic('restore', 'latest', '--target', target));
        if (sha256File(join(target, 'disk.img')) !== expected.sha)
          throw new Error('the restic restore differs from the image');
        rmSync(target, { recursive: true, force: true });
        record(RESTIC, {
          first: b1.seconds,
          second: b2.seconds,
          sizeAfterFirst,
          growth,
          restore: r.seconds,
          peak: Math.max(b1.peak, b2.peak, r.peak),
        });
      },
      [BORG]: async () => {
        const repo = join(dir, 'borg-repo');
        const borg = (args: string[], cwd = dir) => measured('borg', args, env, cwd);
        await borg(['init', '-e', 'none', repo]);
        warmFile(image);
        const create = (name: string) =>
          borg(['create', '--chunker-params', 'fixed,4194304', `${repo}::${name}`, 'disk.img']);
        const b1 = await create('first');
        const sizeAfterFirst = await du(repo);
        applyToImage();
        warmFile(image);
        const b2 = await create('second');
        const growth = (await du(repo)) - sizeAfterFirst;
        const target = join(dir, 'borg-restore');
        mkdirSync(target);
        await syncAll();
        const r = await durable(borg(['extract', `${repo}::second`], target));
        if (sha256File(join(target, 'disk.img')) !== expected.sha)
          throw new Error('the borg restore differs from the image');
        rmSync(target, { recursive: true, force: true });
        record(BORG, {
          first: b1.seconds,
          second: b2.seconds,
          sizeAfterFirst,
          growth,
          restore: r.seconds,
          peak: Math.max(b1.peak, b2.peak, r.peak),
        });
      },
    };

    // The expected content after the changes.
    applyToImage();
    expected.sha = sha256File(image);
    for (const s of subjects) {
      await run('cp', ['--sparse=always', original, image]);
      await syncAll();
      try {
        await tools[s]!();
      } catch (e) {
        errors[s] = (e as Error).message;
        log(`${s} failed: ${(e as Error).message.split('\n')[0]}`);
      }
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
    unregister();
  }
  return {
    name: 'backup',
    title: 'Backup: Haven vs restic and borg',
    ...runSpan(startedAt),
    haven: HAVEN,
    subjects,
    errors,
    metrics: Object.values(m),
    settings: {
      imageBytes: size,
      image: '40% zeros, 30% random, 30% repeated 1 MiB regions',
      changes: '1% of the image in scattered 64 KiB blocks',
      haven:
        'the image as a Haven volume (offline site), repository with 256 KiB chunks, unencrypted; second backup from changed-block tracking',
      restic: 'restic backup of the image file (restic always encrypts)',
      borg: 'borg create --chunker-params fixed,4194304, -e none',
    },
    environment: {
      ...environment({}),
      restic: toolVersion('restic', ['version']),
      borg: toolVersion('borg', ['--version']),
      loadAverageAtEnd: loadavg(),
    },
    notes: [
      'restic always encrypts (AES-256 and Poly1305); Haven and borg run unencrypted here',
      'restore times run until the restored image is on the disk (each tool, then sync): Haven flushes before it reports success, restic and borg do not',
      ...(opts.quick || size < 2 * 1024 * MiB ? [`image ${fmtSize(size)}: a development run`] : []),
    ],
  };
}

export const backupBenchmark: Benchmark = {
  name: 'backup',
  title: 'Backup: Haven vs restic and borg',
  description:
    'First backup, second backup after 1% scattered changes (Haven with changed-block tracking), and restore, of a synthetic disk image; throughput, repository size and growth, peak RSS.',
  run: runBackup,
};
