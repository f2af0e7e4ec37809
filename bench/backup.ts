/**
 * Backup benchmark: Haven against restic and borg (borg with its fixed 4 MiB chunker, the mode
 * it recommends for disk images), encrypted and not, and the restore against the target
 * filesystem's own sequential write speed (fio, in the same run). A synthetic disk image (40%
 * zeros, 30% random, 30% repeated regions, deterministic) is backed up; then 1% of it is changed
 * in scattered 64 KiB blocks and backed up again; then the second backup is restored to a file
 * and checked by hash. Restic always encrypts; Haven and borg back the image up twice, into an
 * unencrypted repository and into an encrypted one (Haven AES-256-GCM with HMAC-SHA-256 chunk
 * ids, borg repokey: AES-256-CTR with HMAC-SHA-256), and the encrypted first backup is restored
 * too. Haven backs the image up as a Haven volume, so that its second backup uses changed-block
 * tracking; restic and borg read the image file. Wall time, throughput, repository size and
 * peak RSS.
 */
import { spawn } from 'node:child_process';
import {
  closeSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeSync,
} from 'node:fs';
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
/** The target filesystem itself: fio writing sequentially what a restore writes. */
const FS = 'fio';
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
  const subjects = [HAVEN, RESTIC, BORG, FS].filter((s) => !opts.only || opts.only.includes(s));
  ensurePeerTools(
    [
      { command: 'restic', pkg: 'restic' },
      { command: 'borg', pkg: 'borgbackup' },
      { command: 'fio', pkg: 'fio' },
    ].filter((t) => subjects.includes(t.command)),
    opts.install,
    log,
  );
  const values = () => Object.fromEntries(subjects.map((s) => [s, null])) as Record<string, number | null>;
  const metric = (
    key: string,
    label: string,
    unit: string,
    better: 'higher' | 'lower',
    target?: Metric['target'],
  ): Metric => ({ key, label, unit, better, values: values(), ...(target ? { target } : {}) });
  const ratio = (peer: string, min: number) => ({ kind: 'ratio' as const, peer, min });
  const m = {
    first: metric('first-backup', 'first backup, unencrypted (restic encrypts)', 'MiB/s', 'higher', [
      ratio(BORG, 1.5),
    ]),
    firstEnc: metric('first-backup-encrypted', 'first backup, encrypted', 'MiB/s', 'higher', [
      ratio(RESTIC, 3),
      ratio(BORG, 1.5),
    ]),
    second: metric(
      'second-backup',
      'second backup, after 1% scattered changes',
      's',
      'lower',
      ratio(RESTIC, 1 / 20),
    ),
    growth: metric(
      'repo-growth',
      'repository growth on the second backup',
      'MiB',
      'lower',
      ratio(RESTIC, 0.3),
    ),
    restore: metric(
      'restore',
      'restore, unencrypted (image size / s)',
      'MiB/s',
      'higher',
      ratio(RESTIC, 1.5),
    ),
    restoreEnc: metric(
      'restore-encrypted',
      'restore, encrypted (image size / s)',
      'MiB/s',
      'higher',
      ratio(RESTIC, 1.5),
    ),
    write: metric(
      'restore-write',
      'restore, unencrypted: data written / s',
      'MiB/s',
      'higher',
      ratio(FS, 0.9),
    ),
    writeEnc: metric(
      'restore-write-encrypted',
      'restore, encrypted: data written / s',
      'MiB/s',
      'higher',
      ratio(FS, 0.9),
    ),
    size: metric('repo-size', 'repository size after the first backup', 'MiB', 'lower', ratio(RESTIC, 1.05)),
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
  const raw: Record<string, unknown> = {};
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
  const encEnv = { ...env, HAVEN_PASSPHRASE: 'bench-passphrase', BORG_PASSPHRASE: 'bench-passphrase' };
  /** Bytes a restore writes to a fresh file: the image's data, not its holes (Haven's count). */
  let dataBytes = 0;
  try {
    log(`creating a ${fmtSize(size)} image (40% zeros, 30% random, 30% repeated)`);
    makeImage(image, size);
    const change = changes(size);
    log(`${change.length} changes of 64 KiB (${fmtSize(change.length * CHANGE)})`);
    const expected: { sha?: string; original?: string } = {};
    const applyToImage = () => {
      const fd = openSync(image, 'r+');
      for (const c of change) writeSync(fd, c.data, 0, c.data.length, c.offset);
      closeSync(fd);
    };
    const peaks: Record<string, number> = {};
    const peak = (s: string, ...runs: { peak: number }[]) =>
      (peaks[s] = Math.max(peaks[s] ?? 0, ...runs.map((r) => r.peak)));
    const say = (s: string, what: string, seconds: number) =>
      log(`${s}: ${what} ${seconds.toFixed(2)} s (${(size / MiB / seconds).toFixed(0)} MiB/s of image)`);

    // Each tool starts from the original image; the changes are applied between its backups.
    const original = join(dir, 'original.img');
    await run('cp', ['--sparse=always', image, original]);

    const tools: Record<string, () => Promise<void>> = {
      [HAVEN]: async () => {
        const data = join(dir, 'site');
        const repo = join(dir, 'haven-repo');
        const repoEnc = join(dir, 'haven-repo-enc');
        const haven = (e: NodeJS.ProcessEnv, ...args: string[]) =>
          measured(process.execPath, [HAVEN_BIN, ...args], e);
        // The site makes its pool 'default' when it first opens.
        await haven(env, 'volume', 'import', image, '--name', 'bench', '--data', data);
        // The encrypted repository backs up its own copy: the volume's backup bitmap follows one repository.
        await haven(env, 'volume', 'import', image, '--name', 'bench-enc', '--data', data);
        await haven(env, 'repo', 'init', '--repo', repo);
        await haven(encEnv, 'repo', 'init', '--repo', repoEnc, '--encrypt');
        await syncAll();
        // In the page cache, as restic's and borg's image file is (warmFile) before they read it.
        const warmVolumes = () => {
          const families = join(data, 'pools', 'default', 'families');
          for (const f of readdirSync(families)) warmFile(join(families, f, 'data'));
        };
        warmVolumes();
        const b1 = await haven(env, 'backup', 'volume:bench', '--data', data, '--repo', repo, '--json');
        say(HAVEN, 'first backup, unencrypted', b1.seconds);
        const sizeAfterFirst = await du(repo);
        await syncAll();
        warmVolumes();
        const e1 = await haven(
          encEnv,
          'backup',
          'volume:bench-enc',
          '--data',
          data,
          '--repo',
          repoEnc,
          '--json',
        );
        say(HAVEN, 'first backup, encrypted', e1.seconds);
        const { result: encSnap } = JSON.parse(e1.out) as { result: { snapshot: string } };
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
        const b2 = await haven(env, 'backup', 'volume:bench', '--data', data, '--repo', repo, '--json');
        const { result: snap } = JSON.parse(b2.out) as {
          result: { snapshot: string; parent?: string; stats: { readBytes: number } };
        };
        if (!snap.parent) throw new Error('the second Haven backup was not incremental');
        log(`haven: the second backup read ${fmtSize(snap.stats.readBytes)}`);
        const growth = (await du(repo)) - sizeAfterFirst;
        const restoreTo = async (e: NodeJS.ProcessEnv, id: string, from: string, sha: string | undefined) => {
          const out = join(dir, 'haven-restore.img');
          await syncAll();
          const r = await durable(haven(e, 'restore', id, '--repo', from, '--to', out, '--json'));
          if (sha256File(out) !== sha) throw new Error(`the Haven restore of ${from} differs from the image`);
          rmSync(out);
          const { result } = JSON.parse(r.out) as { result: { dataBytes: number; seconds: number } };
          return { ...r, dataBytes: result.dataBytes, inProcess: result.seconds };
        };
        const r = await restoreTo(env, snap.snapshot, repo, expected.sha);
        say(HAVEN, 'restore, unencrypted', r.seconds);
        const re = await restoreTo(encEnv, encSnap.snapshot, repoEnc, expected.original);
        say(HAVEN, 'restore, encrypted', re.seconds);
        dataBytes = r.dataBytes;
        m.first.values[HAVEN] = size / MiB / b1.seconds;
        m.firstEnc.values[HAVEN] = size / MiB / e1.seconds;
        m.second.values[HAVEN] = b2.seconds;
        m.size.values[HAVEN] = sizeAfterFirst / MiB;
        m.growth.values[HAVEN] = growth / MiB;
        m.growthRatio.values[HAVEN] = growth / (change.length * CHANGE);
        m.restore.values[HAVEN] = size / MiB / r.seconds;
        m.restoreEnc.values[HAVEN] = size / MiB / re.seconds;
        m.write.values[HAVEN] = r.dataBytes / MiB / r.seconds;
        m.writeEnc.values[HAVEN] = re.dataBytes / MiB / re.seconds;
        peak(HAVEN, b1, e1, b2, r, re);
        // The engine's own times beside the wall times (process start, opening, flush): where a slow step lost it.
        const engine = (x: { out: string }) =>
          (JSON.parse(x.out) as { result: { stats: { seconds: number } } }).result.stats.seconds;
        const inEngine = {
          first: engine(b1),
          firstEncrypted: engine(e1),
          restore: r.inProcess,
          restoreEncrypted: re.inProcess,
        };
        log(`haven: in the engine ${JSON.stringify(inEngine)}`);
        raw[HAVEN] = {
          repoEncryptedBytes: await du(repoEnc),
          restoreDataBytes: r.dataBytes,
          wallSeconds: {
            first: b1.seconds,
            firstEncrypted: e1.seconds,
            restore: r.seconds,
            restoreEncrypted: re.seconds,
          },
          engineSeconds: inEngine,
        };
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
          return (await haven(env, 'backup', 'volume:bench', '--data', data, '--repo', repo, '--json'))
            .seconds;
        };
        const small: number[] = [];
        for (let i = 0; i < rounds; i++) small.push(await incremental(100 + i));
        await haven(env, 'volume', 'resize', 'bench', '--size', String(16 * size), '--data', data);
        await haven(env, 'backup', 'volume:bench', '--data', data, '--repo', repo, '--json');
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
        say(RESTIC, 'first backup', b1.seconds);
        const sizeAfterFirst = await du(repo);
        applyToImage();
        warmFile(image);
        const b2 = await restic('backup', '--quiet', 'disk.img');
        const growth = (await du(repo)) - sizeAfterFirst;
        const target = join(dir, 'restic-restore');
        await syncAll();
        const r = await durable(restic('restore', 'latest', '--target', target));
        say(RESTIC, 'restore', r.seconds);
        if (sha256File(join(target, 'disk.img')) !== expected.sha)
          throw new Error('the restic restore differs from the image');
        rmSync(target, { recursive: true, force: true });
        // restic has one mode, encrypted: the same figures stand in both rows.
        m.first.values[RESTIC] = m.firstEnc.values[RESTIC] = size / MiB / b1.seconds;
        m.second.values[RESTIC] = b2.seconds;
        m.size.values[RESTIC] = sizeAfterFirst / MiB;
        m.growth.values[RESTIC] = growth / MiB;
        m.growthRatio.values[RESTIC] = growth / (change.length * CHANGE);
        m.restore.values[RESTIC] = m.restoreEnc.values[RESTIC] = size / MiB / r.seconds;
        peak(RESTIC, b1, b2, r);
      },
      [BORG]: async () => {
        const repo = join(dir, 'borg-repo');
        const repoEnc = join(dir, 'borg-repo-enc');
        const borg = (args: string[], cwd = dir, e: NodeJS.ProcessEnv = env) =>
          measured('borg', args, e, cwd);
        await borg(['init', '-e', 'none', repo]);
        await borg(['init', '-e', 'repokey', repoEnc], dir, encEnv);
        warmFile(image);
        const create = (at: string, name: string, e: NodeJS.ProcessEnv = env) =>
          borg(['create', '--chunker-params', 'fixed,4194304', `${at}::${name}`, 'disk.img'], dir, e);
        const b1 = await create(repo, 'first');
        say(BORG, 'first backup, unencrypted', b1.seconds);
        const sizeAfterFirst = await du(repo);
        warmFile(image);
        const e1 = await create(repoEnc, 'first', encEnv);
        say(BORG, 'first backup, encrypted', e1.seconds);
        applyToImage();
        warmFile(image);
        const b2 = await create(repo, 'second');
        const growth = (await du(repo)) - sizeAfterFirst;
        const extract = async (archive: string, sha: string | undefined, e: NodeJS.ProcessEnv = env) => {
          const target = join(dir, 'borg-restore');
          mkdirSync(target);
          await syncAll();
          const r = await durable(borg(['extract', archive], target, e));
          if (sha256File(join(target, 'disk.img')) !== sha)
            throw new Error(`the borg restore of ${archive} differs from the image`);
          rmSync(target, { recursive: true, force: true });
          return r;
        };
        const r = await extract(`${repo}::second`, expected.sha);
        say(BORG, 'restore, unencrypted', r.seconds);
        const re = await extract(`${repoEnc}::first`, expected.original, encEnv);
        say(BORG, 'restore, encrypted', re.seconds);
        m.first.values[BORG] = size / MiB / b1.seconds;
        m.firstEnc.values[BORG] = size / MiB / e1.seconds;
        m.second.values[BORG] = b2.seconds;
        m.size.values[BORG] = sizeAfterFirst / MiB;
        m.growth.values[BORG] = growth / MiB;
        m.growthRatio.values[BORG] = growth / (change.length * CHANGE);
        m.restore.values[BORG] = size / MiB / r.seconds;
        m.restoreEnc.values[BORG] = size / MiB / re.seconds;
        peak(BORG, b1, e1, b2, r, re);
      },
      [FS]: async () => {
        // As much as a restore writes (its data; a fresh target's holes are not written), 1 MiB
        // sequential writes, then fsync: what the filesystem under the restores can take.
        const bytes = Math.max(MiB, Math.floor((dataBytes || size * 0.6) / MiB) * MiB);
        const file = join(dir, 'fio-write.dat');
        await syncAll();
        const f = await measured(
          'fio',
          [
            '--name=seqwrite',
            `--filename=${file}`,
            '--rw=write',
            '--bs=1M',
            `--size=${bytes}`,
            '--ioengine=psync',
            '--end_fsync=1',
            '--output-format=json',
          ],
          env,
        );
        rmSync(file, { force: true });
        log(
          `fio: ${fmtSize(bytes)} written in ${f.seconds.toFixed(2)} s (${(bytes / MiB / f.seconds).toFixed(0)} MiB/s)`,
        );
        m.write.values[FS] = m.writeEnc.values[FS] = bytes / MiB / f.seconds;
        raw[FS] = { bytes, seconds: f.seconds };
      },
    };

    // The expected content after the changes.
    applyToImage();
    expected.sha = sha256File(image);
    expected.original = sha256File(original);
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
    for (const [s, p] of Object.entries(peaks)) m.rss.values[s] = p / MiB;
  } finally {
    rmSync(dir, { recursive: true, force: true });
    unregister();
  }
  return {
    name: 'backup',
    title: 'Backup: Haven vs restic and borg, encrypted and not; restore vs the filesystem',
    ...runSpan(startedAt),
    haven: HAVEN,
    subjects,
    errors,
    metrics: Object.values(m),
    raw,
    settings: {
      imageBytes: size,
      image: '40% zeros, 30% random, 30% repeated 1 MiB regions',
      changes: '1% of the image in scattered 64 KiB blocks',
      haven:
        'the image as a Haven volume (offline site), repository with 256 KiB chunks, unencrypted and --encrypt (AES-256-GCM, HMAC-SHA-256 chunk ids); second backup from changed-block tracking',
      restic: 'restic backup of the image file (restic always encrypts: AES-256-CTR and Poly1305)',
      borg: 'borg create --chunker-params fixed,4194304, -e none and -e repokey (AES-256-CTR, HMAC-SHA-256)',
      fio: 'fio --rw=write --bs=1M --ioengine=psync --end_fsync=1, as many bytes as the restore writes, in the same folder',
    },
    environment: {
      ...environment({}),
      restic: toolVersion('restic', ['version']),
      borg: toolVersion('borg', ['--version']),
      fio: toolVersion('fio', ['--version']),
    },
    notes: [
      'restic always encrypts: its figures stand in the unencrypted and the encrypted rows alike',
      'the second backup, growth and size rows are of the unencrypted repositories; the encrypted restores restore the first backup',
      'restore times run until the restored image is on the disk (each tool, then sync): Haven flushes before it reports success, restic and borg do not',
      '"data written / s" counts the bytes a restore writes (a fresh file\'s holes are not written); fio writes as many, sequentially',
      ...(opts.quick || size < 2 * 1024 * MiB ? [`image ${fmtSize(size)}: a development run`] : []),
    ],
  };
}

export const backupBenchmark: Benchmark = {
  name: 'backup',
  title: 'Backup: Haven vs restic and borg, encrypted and not; restore vs the filesystem',
  description:
    "First backup (unencrypted and encrypted, beside restic and borg in the matching modes), second backup after 1% scattered changes (Haven with changed-block tracking), and restore of a synthetic disk image, the restore also against the filesystem's own sequential write speed (fio); throughput, repository size and growth, peak RSS.",
  run: runBackup,
};
