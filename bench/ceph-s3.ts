/**
 * Ceph benchmark, backup part: Haven's repository in S3 against restic's, both on the same
 * throw-away single-node radosgw (scripts/ceph). A synthetic disk image (40% zeros, 30% random,
 * 30% repeated regions) is backed up into an encrypted repository, then 1% of it is changed in
 * scattered 64 KiB blocks and backed up again (both read the image file), then the second backup
 * is restored to a file and checked by hash. Haven runs with its default 256 KiB chunks and with
 * 4 MiB chunks (fewer PUTs: docs/decisions/0023-s3-repository.md); restic with its defaults
 * (content-defined chunks packed into ~4–16 MiB pack files). Wall time and throughput.
 */
import { mkdtempSync, rmSync, openSync, writeSync, closeSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { CreateBucketCommand, S3Client } from '@aws-sdk/client-s3';
import { HAVEN_BIN, run } from '../test/support/proc.js';
import { startCeph } from '../test/support/ceph.js';
import { runSpan } from './lib/results.js';
import type { Benchmark, BenchOptions, BenchResult, Metric } from './lib/types.js';
import { ensurePeerTools, toolVersion } from './lib/peers.js';
import { fmtSize, keystream, makeDiskImage, sha256File } from './lib/image.js';
import { environment } from './lib/env.js';
import { BenchSite } from './lib/site.js';

const HAVEN = 'haven';
const HAVEN_4M = 'haven-4M';
const HAVEN_CBT = 'haven-cbt';
const RESTIC = 'restic';
const MiB = 1024 * 1024;
const CHANGE = 64 * 1024;

/** The 1% change: scattered 64 KiB blocks, the same for every subject (a fixed key stream). */
function changes(size: number): { offset: number; data: Buffer }[] {
  const rnd = keystream(2);
  const n = Math.max(1, Math.round((size * 0.01) / CHANGE));
  const out: { offset: number; data: Buffer }[] = [];
  for (let i = 0; i < n; i++) {
    const data = rnd(CHANGE);
    out.push({ data, offset: (rnd(4).readUInt32LE(0) % (size / CHANGE)) * CHANGE });
  }
  return out;
}

function change(path: string, size: number): void {
  const fd = openSync(path, 'r+');
  try {
    for (const c of changes(size)) writeSync(fd, c.data, 0, CHANGE, c.offset);
  } finally {
    closeSync(fd);
  }
}

/**
 * The same change written through a volume's NBD export of a running site, by QEMU's own block
 * layer (qemu-io), as a VM's writes would reach it: the volume's dirty bitmap records them.
 */
async function changeThroughNbd(uri: string, size: number, dir: string): Promise<void> {
  const cmds: string[] = [];
  changes(size).forEach((c, i) => {
    const f = join(dir, `change-${i}.bin`);
    writeFileSync(f, c.data);
    cmds.push('-c', `write -s ${f} ${c.offset} ${CHANGE}`);
  });
  await run('qemu-io', ['-f', 'raw', ...cmds, '-c', 'flush', uri]);
  for (let i = 0; i < cmds.length / 2; i++) rmSync(join(dir, `change-${i}.bin`));
}

async function timed(cmd: string, args: string[], env: NodeJS.ProcessEnv): Promise<number> {
  const t = performance.now();
  await run(cmd, args, { env });
  return (performance.now() - t) / 1000;
}

async function runCeph(opts: BenchOptions): Promise<BenchResult> {
  const startedAt = new Date();
  const { log } = opts;
  ensurePeerTools([{ command: 'restic', pkg: 'restic' }], opts.install, log);
  const size = opts.sizeGiven ? opts.size : opts.quick ? 256 * MiB : 1024 * MiB;
  const subjects = [HAVEN, HAVEN_4M, HAVEN_CBT, RESTIC].filter((s) => !opts.only || opts.only.includes(s));
  const values = () => Object.fromEntries(subjects.map((s) => [s, null])) as Record<string, number | null>;
  const metric = (
    key: string,
    label: string,
    unit: string,
    better: 'higher' | 'lower',
    target?: Metric['target'],
  ): Metric => ({
    key,
    label,
    unit,
    better,
    values: values(),
    ...(target ? { target } : {}),
  });
  // haven and haven-cbt (the daemon, changed-block tracking) are each held to restic.
  const vsRestic = (): Metric['target'] => [
    { kind: 'ratio', peer: RESTIC, min: 1 },
    ...(subjects.includes(HAVEN_CBT)
      ? [{ kind: 'ratio' as const, peer: RESTIC, min: 1, subject: HAVEN_CBT }]
      : []),
  ];
  const m = {
    first: metric(
      'first-backup',
      'first backup to S3, encrypted (image size / s)',
      'MiB/s',
      'higher',
      vsRestic(),
    ),
    second: metric('incremental', 'second backup after 1% changed', 's', 'lower', vsRestic()),
    restore: metric('restore', 'restore from S3 (image size / s)', 'MiB/s', 'higher', vsRestic()),
  };
  const errors: Record<string, string> = {};
  const dir = mkdtempSync(join(opts.workdir, 'haven-bench-ceph-'));
  const ceph = await startCeph();
  try {
    const s3 = new S3Client({
      endpoint: ceph.s3.endpoint,
      region: ceph.s3.region,
      forcePathStyle: true,
      credentials: { accessKeyId: ceph.s3.accessKeyId, secretAccessKey: ceph.s3.secretAccessKey },
    });
    const original = join(dir, 'original.img');
    makeDiskImage(original, size);
    const passFile = join(dir, 'pass');
    await run('sh', ['-c', `printf 'bench passphrase' > ${passFile}`]);
    const env = {
      ...process.env,
      HAVEN_S3_CREDENTIALS: join(ceph.dir, 'env'),
      HAVEN_PASSPHRASE: 'bench passphrase',
      AWS_ACCESS_KEY_ID: ceph.s3.accessKeyId,
      AWS_SECRET_ACCESS_KEY: ceph.s3.secretAccessKey,
      RESTIC_PASSWORD: 'bench passphrase',
    };
    // Each subject backs up its own copy of the image; the phases are interleaved (every
    // subject's first backup, then every subject's change and second backup, then every restore),
    // so that a change in the machine's load falls on all subjects about alike.
    interface Steps {
      first(): Promise<number>;
      change(): Promise<void>;
      second(): Promise<number>;
      restore(): Promise<number>;
      stop?(): Promise<void>;
    }
    const steps = new Map<string, Steps>();
    const phase = async (what: string, f: (s: string, st: Steps) => Promise<void>) => {
      for (const [s, st] of steps) {
        if (errors[s]) continue;
        try {
          await f(s, st);
        } catch (e) {
          errors[s] = (e as Error).message;
          log(`${s} failed (${what}): ${(e as Error).message.split('\n')[0]}`);
        }
      }
    };
    try {
      for (const s of subjects) {
        const bucket = s.toLowerCase().replace(/[^a-z0-9]/g, '');
        const image = join(dir, `${bucket}.img`);
        const out = join(dir, `${bucket}-restored.img`);
        await run('cp', ['--sparse=always', original, image]);
        await s3.send(new CreateBucketCommand({ Bucket: bucket }));
        if (s === RESTIC) {
          const repo = `s3:${ceph.s3.endpoint}/${bucket}`;
          const restic = (...args: string[]) => timed('restic', ['-r', repo, '--no-cache', ...args], env);
          await restic('init');
          steps.set(s, {
            first: () => restic('backup', '--quiet', image),
            change: async () => change(image, size),
            second: () => restic('backup', '--quiet', image),
            restore: async () => {
              const target = join(dir, 'restic-restore');
              const r = await restic('restore', 'latest', '--target', target);
              if (sha256File(join(target, image)) !== sha256File(image))
                throw new Error('the restic restore differs');
              rmSync(target, { recursive: true, force: true });
              return r;
            },
          });
        } else if (s === HAVEN_CBT) {
          // The disk is a Haven volume of a running site (`haven serve`, its own data directory):
          // the daemon holds the S3 client and opens the repository; each command is a thin CLI
          // process speaking the site's API. The passphrase is the daemon's own $HAVEN_PASSPHRASE.
          const repo = `s3://${bucket}/r`;
          const site = new BenchSite(join(dir, 'cbt'), 600_000);
          site.env.HAVEN_PASSPHRASE = env.HAVEN_PASSPHRASE;
          site.env.HAVEN_S3_CREDENTIALS = env.HAVEN_S3_CREDENTIALS;
          const offline: NodeJS.ProcessEnv = { ...env };
          delete offline.HAVEN_DATA;
          const cli: NodeJS.ProcessEnv = { ...env, HAVEN_DATA: site.data, HAVEN_LOG_LEVEL: 'warn' };
          delete cli.HAVEN_PASSPHRASE;
          await run(HAVEN_BIN, ['volume', 'import', image, '--name', 'bench', '--data', site.data], {
            env: offline,
          });
          await run(HAVEN_BIN, ['repo', 'init', '--encrypt', '--repo', repo], { env: offline });
          await site.start();
          const backup = async () => {
            const t = performance.now();
            const o = (
              await run(HAVEN_BIN, ['backup', 'volume:bench', '--repo', repo, '--json'], { env: cli })
            ).stdout;
            const { result } = JSON.parse(o) as {
              result: { snapshot: string; parent?: string; stats: { readBytes: number } };
            };
            return { seconds: (performance.now() - t) / 1000, ...result };
          };
          let last = '';
          steps.set(s, {
            first: async () => (await backup()).seconds,
            change: async () => {
              change(image, size); // the file the restore is checked against
              await changeThroughNbd(site.nbd('bench'), size, dir);
            },
            second: async () => {
              const b2 = await backup();
              if (!b2.parent) throw new Error('the second haven-cbt backup was not incremental');
              log(`${s}: the second backup read ${fmtSize(b2.stats.readBytes)}`);
              last = b2.snapshot;
              return b2.seconds;
            },
            // A restore to an image file runs in the command's own process (as the haven row's).
            restore: async () => {
              const r = await timed(HAVEN_BIN, ['restore', last, '--repo', repo, '--to', out], offline);
              if (sha256File(out) !== sha256File(image)) throw new Error('the haven-cbt restore differs');
              rmSync(out);
              return r;
            },
            stop: () => site.stop(),
          });
        } else {
          const repo = `s3://${bucket}/r`;
          const haven = (...args: string[]) => timed(HAVEN_BIN, [...args, '--repo', repo], env);
          await haven('repo', 'init', '--encrypt', ...(s === HAVEN_4M ? ['--chunk-size', '4M'] : []));
          steps.set(s, {
            first: () => haven('backup', image),
            change: async () => change(image, size),
            second: () => haven('backup', image),
            restore: async () => {
              const list = JSON.parse(
                (await run(HAVEN_BIN, ['repo', 'list', '--json', '--repo', repo], { env })).stdout,
              ) as { id: string }[];
              const r = await haven('restore', list[list.length - 1]!.id, '--to', out);
              if (sha256File(out) !== sha256File(image)) throw new Error('the Haven restore differs');
              rmSync(out);
              return r;
            },
          });
        }
      }
      log(`${fmtSize(size)} image; first backups`);
      await phase('first backup', async (s, st) => {
        m.first.values[s] = size / MiB / (await st.first());
      });
      log('second backups after the change');
      await phase('second backup', async (s, st) => {
        await st.change();
        m.second.values[s] = await st.second();
      });
      log('restores');
      await phase('restore', async (s, st) => {
        m.restore.values[s] = size / MiB / (await st.restore());
      });
    } finally {
      for (const st of steps.values()) await st.stop?.();
    }
    s3.destroy();
  } finally {
    await ceph.stop();
    rmSync(dir, { recursive: true, force: true });
  }
  return {
    name: 'ceph',
    title: 'Ceph: backup to S3 (radosgw), Haven vs restic',
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
        'haven backup of the image file into s3://BUCKET/r, --encrypt; 256 KiB chunks (haven) and 4 MiB (haven-4M)',
      'haven-cbt':
        'the image as a Haven volume of a running site (haven serve); the change written through its NBD export (qemu-io); haven backup volume:bench through the daemon, the second from changed-block tracking; 256 KiB chunks',
      restic: 'restic backup of the image file into s3:ENDPOINT/BUCKET, --no-cache',
      store: 'single-node Ceph radosgw of scripts/ceph, on loopback',
    },
    environment: {
      ...environment({}),
      restic: toolVersion('restic', ['version']),
    },
    notes: [
      'haven and haven-4M, like restic, read the image file in full for the second backup (no changed-block tracking); haven-cbt reads only the blocks its dirty bitmap records',
      'every time is wall time of the whole command, process start included; haven-cbt commands are thin CLI processes, the work is done by the site daemon, started before',
      ...(size < 1024 * MiB ? [`image ${fmtSize(size)}: a development run`] : []),
    ],
  };
}

export const cephS3Benchmark: Benchmark = {
  name: 'ceph-s3',
  title: 'Ceph: backup to S3 (radosgw), Haven vs restic',
  description:
    'First backup, second backup after 1% scattered changes, and restore of a synthetic disk image, Haven (256 KiB and 4 MiB chunks) and restic into the same radosgw, encrypted; throughput and wall time.',
  run: runCeph,
};
