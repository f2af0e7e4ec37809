import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import type { Command } from 'commander';
import { invalidArgument } from '../../common/index.js';
import type { BackupSnapshot, Job, RepoAccess, RetentionPolicy } from '../../orchestration/index.js';
import { orchestration, type Orchestration } from '../lazy.js';

const openRepository = async (...a: Parameters<Orchestration['openRepository']>) =>
  (await orchestration()).openRepository(...a);
const backupSource = async (...a: Parameters<Orchestration['backupSource']>) =>
  (await orchestration()).backupSource(...a);
const restoreSnapshot = async (...a: Parameters<Orchestration['restoreSnapshot']>) =>
  (await orchestration()).restoreSnapshot(...a);
import { apiOptions, daemonPassphraseFile, type ApiOpts } from '../api.js';
import { bytes, parseSize, table } from '../args.js';
import { runJob, runLocal } from '../jobs.js';
import { stopOnSignal } from './nbd-serve.js';
import { EXIT_DAMAGE, EXIT_FAILED, failWith, fields, printResult, reportError } from '../output.js';
import { registerBackupFiles, type RepoOpts } from './backup-files.js';

function repoOptions(cmd: Command): Command {
  return cmd
    .option('--repo <dir>', 'the backup repository: a directory or s3://BUCKET/PREFIX (default: $HAVEN_REPO)')
    .option('--endpoint <url>', "an s3:// repository's S3 endpoint (default: $HAVEN_S3_ENDPOINT)")
    .option(
      '--passphrase-file <file>',
      "file holding an encrypted repository's passphrase (default: $HAVEN_PASSPHRASE)",
    );
}

function access(o: RepoOpts): RepoAccess {
  const repo = o.repo ?? process.env.HAVEN_REPO;
  if (!repo) throw invalidArgument('give --repo DIR (or set HAVEN_REPO)');
  // Read where the repository is opened (s3Settings), as are the credentials: never on a command line.
  if (o.endpoint) process.env.HAVEN_S3_ENDPOINT = o.endpoint;
  const passphrase = o.passphraseFile
    ? readFileSync(o.passphraseFile, 'utf8').replace(/\r?\n$/, '')
    : process.env.HAVEN_PASSPHRASE;
  return { repo, ...(passphrase !== undefined ? { passphrase } : {}) };
}

/** A repository address made absolute (a directory) or kept (s3://). */
const repoPath = (repo: string) => (repo.startsWith('s3://') ? repo : resolve(repo));

function wholeNumber(v: string, what: string): number {
  if (!/^\d+$/.test(v)) throw invalidArgument(`${what} "${v}" is not a whole number`);
  return Number(v);
}

/** Damaged snapshots, on stderr: named with the way out, while the rest is listed as usual. */
function warnDamaged(damaged: { id: string; reason: string }[]): void {
  for (const d of damaged) process.stderr.write(`haven: warning: ${d.reason}\n`);
}

function snapshotRows(list: BackupSnapshot[]): string {
  return table([
    ['ID', 'CREATED', 'SOURCE', 'CONSISTENCY', 'SIZE', 'READ', 'NEW', 'PARENT', 'FLAGS'],
    ...list.map((s) => [
      s.id,
      s.createdAt,
      `${s.source.kind}:${s.source.name}`,
      s.consistency,
      bytes(s.disks.reduce((n, d) => n + d.size, 0)),
      bytes(s.stats.readBytes),
      bytes(s.stats.storedBytes),
      s.parent ?? '-',
      s.protected ? 'protected' : '',
    ]),
  ]);
}

/** `haven repo …`, `haven backup`, `haven restore` (standalone: files and NBD URIs, or a site's data directory). */
export function registerBackup(program: Command): void {
  const repo = program
    .command('repo')
    .description('backup repositories: deduplicated, compressed, optionally encrypted');
  repoOptions(repo.command('init'))
    .description('create a repository')
    .option('--chunk-size <size>', 'bytes per chunk (power of two, 64K to 16M)', '256K')
    .option(
      '--encrypt',
      'encrypt with AES-256-GCM under the passphrase ($HAVEN_PASSPHRASE or --passphrase-file)',
    )
    .option(
      '--object-lock-days <days>',
      's3:// only: keep every snapshot immutable (S3 Object Lock) this many days from its backup',
    )
    .option('--object-lock-mode <mode>', 'COMPLIANCE (nobody can shorten it) or GOVERNANCE', 'COMPLIANCE')
    .option('--json', 'print JSON')
    .action(
      async (
        o: RepoOpts & {
          chunkSize: string;
          encrypt?: boolean;
          objectLockDays?: string;
          objectLockMode: string;
        },
      ) => {
        const a = access(o);
        if (o.encrypt && a.passphrase === undefined)
          throw invalidArgument(
            '--encrypt needs a passphrase: set HAVEN_PASSPHRASE or give --passphrase-file',
          );
        const lock =
          o.objectLockDays !== undefined
            ? {
                days: wholeNumber(o.objectLockDays, '--object-lock-days'),
                mode: o.objectLockMode.toUpperCase() as 'COMPLIANCE' | 'GOVERNANCE',
              }
            : undefined;
        const r = await (
          await orchestration()
        ).Repository.init(a.repo, {
          chunkSize: parseSize(o.chunkSize, '--chunk-size'),
          ...(o.encrypt ? { passphrase: a.passphrase! } : {}),
          ...(lock ? { objectLock: lock } : {}),
        });
        printResult(
          !!o.json,
          r.config,
          () =>
            `created ${r.encrypted ? 'an encrypted' : 'a'} repository at ${r.location} (chunks of ${bytes(r.config.chunkSize)})`,
        );
      },
    );
  repoOptions(repo.command('list'))
    .description('list the snapshots, oldest first')
    .option('--json', 'print JSON')
    .action(async (o: RepoOpts) => {
      const scan = await (await openRepository(access(o))).scanSnapshots();
      printResult(!!o.json, scan.snapshots, () => snapshotRows(scan.snapshots));
      warnDamaged(scan.damaged);
    });
  repoOptions(repo.command('show'))
    .description("a snapshot's manifest")
    .argument('<snapshot>')
    .option('--json', 'print JSON (the whole manifest)')
    .action(async (id: string, o: RepoOpts) => {
      const s = await (await openRepository(access(o))).snapshot(id);
      printResult(!!o.json, s, () =>
        [
          fields([
            ['snapshot', s.id],
            ['created', s.createdAt],
            ['source', `${s.source.kind}:${s.source.name}`],
            ['parent', s.parent ?? '- (full)'],
            ['transport', s.transport ?? '-'],
            ['tags', s.tags.join(' ') || '-'],
            ['protected', s.protected ? 'yes' : 'no'],
            [
              'read',
              `${bytes(s.stats.readBytes)} in ${s.stats.seconds.toFixed(2)} s; ${s.stats.newChunks} new chunks (${bytes(s.stats.storedBytes)} stored), ${s.stats.reusedChunks} reused`,
            ],
            ...(s.vm ? [['vm', 'its configuration is in the manifest (--json)'] as [string, string]] : []),
          ]),
          table([
            // Index version 2 counts 64 KiB granules, version 1 chunks: both shown as bytes.
            ['DISK', 'SIZE', 'CHUNK', 'DATA', 'ZEROES'],
            ...s.disks.map((d) => {
              const unit = d.granule ?? d.chunkSize;
              const data = Math.min(d.size, d.dataChunks * unit);
              return [d.name, bytes(d.size), bytes(d.chunkSize), bytes(data), bytes(d.size - data)];
            }),
          ]),
        ].join('\n'),
      );
    });
  repoOptions(repo.command('stats'))
    .description('snapshots, chunks, bytes stored and the deduplication ratio')
    .option('--json', 'print JSON')
    .action(async (o: RepoOpts) => {
      const s = await (await openRepository(access(o))).stats();
      printResult(
        !!o.json,
        s,
        () =>
          `${s.location}: ${s.snapshots} snapshot(s), ${s.chunks} chunks, ${bytes(s.storedBytes)} stored for ${bytes(s.dataBytes)} of data (${s.ratio.toFixed(2)}:1) in ${bytes(s.logicalBytes)} of disks${s.encrypted ? ', encrypted' : ''}`,
      );
      warnDamaged(s.damagedSnapshots);
    });
  const verify = repoOptions(repo.command('verify'))
    .description(
      'read and check every chunk of the snapshots (all, or those named); exit 0: sound, 1: damage found, 2: could not check',
    )
    .argument('[snapshots...]')
    .option('--rolling <n>', 'check the next 1/N of the chunks (by digest): N runs check them all')
    .option('--json', 'print JSON')
    .action(async (ids: string[], o: RepoOpts & { rolling?: string }) => {
      // Exit 1 means damage and nothing else: an error that stops the check is 2.
      let r;
      try {
        const a = access(o);
        const repository = await openRepository(a);
        const rolling = o.rolling !== undefined ? wholeNumber(o.rolling, '--rolling') : undefined;
        // It counts chunks; at most a chunk size of data each, so the bar speaks bytes.
        const cs = repository.config.chunkSize;
        r = await runLocal(
          o,
          { kind: 'repository.verify', target: a.repo },
          async (onProgress) =>
            (await orchestration()).verifyRepository(repository, ids.length ? ids : undefined, {
              onProgress: (d, t) => onProgress(d * cs, t * cs, 'verify'),
              ...(rolling !== undefined ? { rolling } : {}),
            }),
          (r) =>
            [
              `verified ${r.snapshots.length} snapshot(s)${r.slice ? ` (slice ${r.slice.index + 1} of ${r.slice.of})` : ''}: ${r.chunks} chunks, ${bytes(r.bytes)}; ${r.damagedChunks} damaged`,
              ...r.damaged.map(
                (d) =>
                  `DAMAGED ${d.snapshot} ${d.disk}: ${d.offsets.length ? `offsets ${d.offsets.join(', ')}` : d.disk === '(manifest)' ? 'unreadable' : '(index)'}: ${d.reason}`,
              ),
              ...r.chunkDamage.map((c) => `DAMAGED CHUNK ${c.key} (used ${c.uses} time(s)): ${c.reason}`),
            ].join('\n'),
        );
      } catch (err) {
        reportError(err);
        process.exitCode = EXIT_FAILED;
        return;
      }
      if (r.damagedChunks || r.damaged.length) process.exitCode = EXIT_DAMAGE;
      else if (r.cursorError) {
        reportError(new Error(r.cursorError));
        process.exitCode = EXIT_FAILED;
      }
    });
  failWith(verify, EXIT_FAILED);
  repoOptions(repo.command('prune'))
    .description(
      "delete the snapshots a retention policy does not keep, each source's on their own (protected ones are kept)",
    )
    .option('--keep-last <n>', 'the newest N')
    .option('--keep-hourly <n>', 'the newest of each of the last N hours')
    .option('--keep-daily <n>', 'the newest of each of the last N days')
    .option('--keep-weekly <n>', 'the newest of each of the last N weeks')
    .option('--keep-monthly <n>', 'the newest of each of the last N months')
    .option('--keep-yearly <n>', 'the newest of each of the last N years')
    .option(
      '--source <source>',
      'only the snapshots of this source (as repo list shows it: vm:web1, image:/…)',
    )
    .option('--delete-all', 'allow a policy that keeps no snapshot of a source (otherwise refused)')
    .option('--dry-run', 'say what would go, delete nothing')
    .option('--json', 'print JSON')
    .action(async (o: RepoOpts & Record<string, string | boolean | undefined>) => {
      const policy: RetentionPolicy = {};
      for (const k of ['last', 'hourly', 'daily', 'weekly', 'monthly', 'yearly'] as const) {
        const v = o[`keep${k[0]!.toUpperCase()}${k.slice(1)}`];
        if (v === undefined) continue;
        const n = Number(v);
        if (!Number.isInteger(n) || n < 0)
          throw invalidArgument(`--keep-${k} "${String(v)}" is not a whole number`);
        policy[k] = n;
      }
      if (Object.keys(policy).length === 0)
        throw invalidArgument(
          'give at least one --keep-… option (prune never deletes everything by default)',
        );
      const a = access(o);
      const repository = await openRepository(a);
      const r = await runLocal(
        o,
        { kind: 'repository.prune', target: a.repo },
        async () =>
          (await orchestration()).pruneRepository(repository, policy, {
            ...(o.dryRun ? { dryRun: true } : {}),
            ...(o.deleteAll ? { deleteAll: true } : {}),
            ...(typeof o.source === 'string' ? { source: o.source } : {}),
          }),
        (r) =>
          [
            ...r.sources.flatMap((p) => [
              `${p.source}:`,
              ...p.kept.map((k) => `  keep   ${k.id} (${k.reasons.join(', ')})`),
              ...p.removed.map((id) => `  ${o.dryRun ? 'would remove' : 'remove'} ${id}`),
            ]),
            ...r.inUse.map((x) => `kept   ${x.id}: ${x.reason}`),
          ].join('\n'),
      );
      warnDamaged(r.damaged);
    });
  repoOptions(repo.command('gc'))
    .description('delete chunks no snapshot uses (safe while backups run)')
    .option('--grace <seconds>', 'keep unreferenced chunks younger than this (writes in flight)', '300')
    .option('--json', 'print JSON')
    .action(async (o: RepoOpts & { grace: string }) => {
      const grace = Number(o.grace);
      if (!Number.isFinite(grace) || grace < 0)
        throw invalidArgument(`--grace "${o.grace}" is not a number of seconds`);
      const a = access(o);
      const repository = await openRepository(a);
      await runLocal(
        o,
        { kind: 'repository.gc', target: a.repo },
        async () => (await orchestration()).collectRepositoryGarbage(repository, { graceMs: grace * 1000 }),
        (r) =>
          `removed ${r.removedChunks} chunks (${bytes(r.removedBytes)}) and ${r.removedPartial} partial object(s); kept ${r.keptChunks} chunks (${bytes(r.keptBytes)})${r.claimedMeanwhile ? `, ${r.claimedMeanwhile} of them claimed by a backup while gc ran` : ''}${r.packs ? `; packs: ${r.packs.removedPacks} removed, ${r.packs.keptPacks} kept (${bytes(r.packs.garbageBytes)} unused in them)${r.packs.retainedPacks ? `, ${r.packs.retainedPacks} unused but retained by Object Lock` : ''}` : ''}`,
      );
    });
  repoOptions(repo.command('copy'))
    .description(
      'copy snapshots (all, or those named) to another repository: only the chunks it lacks, re-encrypted under its keys, verified there',
    )
    .argument('[snapshots...]')
    .requiredOption('--to <repo>', 'the target repository: a directory or s3://BUCKET/PREFIX')
    .option('--to-passphrase-file <file>', "file holding the target's passphrase (default: the source's)")
    .option('--json', 'print JSON')
    .action(async (ids: string[], o: RepoOpts & { to: string; toPassphraseFile?: string }) => {
      const a = access(o);
      const from = await openRepository(a);
      const toPass = o.toPassphraseFile
        ? readFileSync(o.toPassphraseFile, 'utf8').replace(/\r?\n$/, '')
        : a.passphrase;
      const to = await openRepository({
        repo: o.to,
        ...(toPass !== undefined ? { passphrase: toPass } : {}),
      });
      await runLocal(
        o,
        { kind: 'repository.copy', target: o.to },
        async () => (await orchestration()).copySnapshots(from, to, ids.length ? { ids } : {}),
        (r) =>
          `copied ${r.copied.length} snapshot(s) to ${to.location} (${r.newChunks} new chunks), ${r.skipped.length} there already`,
      );
    });
  repoOptions(repo.command('protect'))
    .description('protect a snapshot from prune and delete (--off to lift it)')
    .argument('<snapshot>')
    .option('--off', 'lift the protection')
    .action(async (id: string, o: RepoOpts & { off?: boolean }) => {
      await (await openRepository(access(o))).setProtected(id, !o.off);
    });
  repoOptions(repo.command('forget'))
    .description('delete one snapshot (its chunks go at the next gc)')
    .argument('<snapshot>')
    .action(async (id: string, o: RepoOpts) => {
      await (await openRepository(access(o))).deleteSnapshot(id);
    });

  const backupCommand = apiOptions(repoOptions(program.command('backup')));
  repoOptions(backupCommand.command('mount'))
    .description(
      "serve a backup's disk over NBD in the foreground, read-only (or --writable through a throw-away overlay), for qemu-img, nbdcopy, guestfish or a VM",
    )
    .argument('<snapshot>')
    .option('--disk <n>', "which of the snapshot's disks", '0')
    .option('--writable', 'accept writes into an overlay that is discarded when the mount stops')
    .option('--listen <host:port>', 'TCP address (default 127.0.0.1:10809)')
    .option('--socket <path>', 'a unix socket instead of TCP')
    .option('--name <export>', 'export name (default: the snapshot id)')
    .action(async (id: string, _o: unknown, cmd: Command) => {
      // --repo and --passphrase-file are also the parent's options: take them from either.
      const o = cmd.optsWithGlobals<
        RepoOpts & { disk: string; writable?: boolean; listen?: string; socket?: string; name?: string }
      >();
      const disk = Number(o.disk);
      if (!Number.isInteger(disk) || disk < 0)
        throw invalidArgument(`--disk "${o.disk}" is not a disk number`);
      const serving = await (
        await orchestration()
      ).mountSnapshot({
        ...access(o),
        snapshot: id,
        disk,
        ...(o.writable ? { writable: true } : {}),
        ...(o.listen ? { listen: o.listen } : {}),
        ...(o.socket ? { socket: o.socket } : {}),
        ...(o.name ? { name: o.name } : {}),
      });
      process.stdout.write(
        `haven: backup ${serving.snapshot} disk ${disk} mounted ${o.writable ? 'writable (changes are discarded)' : 'read-only'} on ${serving.uri}\n`,
      );
      stopOnSignal(serving);
    });

  registerBackupFiles(repoOptions(backupCommand.command('files')), access);

  backupCommand
    .description(
      "back a source up: an image file (raw, qcow2, vmdk, vhdx), an NBD URI, qemu:QMP_SOCKET#NODE (a running QEMU VM Haven does not manage: its QMP socket and the disk's block node), volume:NAME or vm:NAME (through the site daemon; offline with --data)",
    )
    .argument('<source>')
    .option('--data <dir>', "the site's data directory, for volume:NAME offline (no daemon may hold it)")
    .option(
      '--bitmap <name>',
      'NBD sources: read only what this dirty bitmap marks (changes since the newest snapshot of the source)',
    )
    .option(
      '--format <format>',
      'image files: their format (raw, qcow2, vmdk, vhdx, vpc, vdi); default: probed, and an image naming other files (a backing file) is refused',
    )
    .option('--tag <tag>', 'a tag (repeat)', (v: string, all: string[] = []) => [...all, v])
    .option('--full', 'read the whole source (a full backup), even where an incremental is possible')
    .option(
      '--transport <name>',
      'through the daemon: auto (default), san, hotadd, nbds or nbd; files and NBD URIs carry their own',
    )
    .option(
      '--pre-freeze-hook <name>',
      "vm: an executable in the site's hooks directory (DATA/hooks/) run before the guest's file systems are frozen (env HAVEN_VM, HAVEN_HOOK_PHASE); if it fails the backup is crash-consistent",
    )
    .option(
      '--post-thaw-hook <name>',
      'vm: one run after the thaw (HAVEN_HOOK_PHASE=post-thaw, HAVEN_CONSISTENCY)',
    )
    .option(
      '--require-app-consistent',
      'vm: fail the backup rather than take it crash-consistent when the guest cannot be frozen',
    )
    .option('--no-wait', 'through the daemon: return once the job has started')
    .option('--json', 'print JSON')
    .action(async (source: string, o: BackupOpts) => {
      // A site's VMs and volumes: through its daemon, or with --data its site opened here.
      const daemon = /^vm:/.test(source) ? 'vms' : /^volume:/.test(source) ? 'volumes' : undefined;
      if (daemon) {
        const name = source.slice(source.indexOf(':') + 1);
        return runJob(
          o,
          (c) =>
            c.post<Job>(`/${daemon}/${encodeURIComponent(name)}/backup`, {
              ...daemonRepo(o),
              ...(o.transport ? { transport: o.transport } : {}),
              ...(o.preFreezeHook ? { preFreezeHook: o.preFreezeHook } : {}),
              ...(o.postThawHook ? { postThawHook: o.postThawHook } : {}),
              ...(o.requireAppConsistent ? { requireAppConsistent: true } : {}),
              ...(o.full ? { full: true } : {}),
            }),
          (j) => {
            const r = j.result as {
              snapshot: string;
              parent?: string;
              transport: string;
              consistency: string;
              consistencyReason?: string;
              stats: { readBytes: number; storedBytes: number };
            };
            return `snapshot ${r.snapshot} of ${source}${r.parent ? ` (incremental from ${r.parent})` : ''} over ${r.transport}: read ${bytes(r.stats.readBytes)}, stored ${bytes(r.stats.storedBytes)} new\n${r.consistency}-consistent${r.consistencyReason ? `: ${r.consistencyReason}` : ''}`;
          },
        );
      }
      if (o.preFreezeHook || o.postThawHook || o.requireAppConsistent)
        throw invalidArgument(
          'freeze hooks and --require-app-consistent apply to VM backups through the daemon (vm:NAME)',
        );
      if (o.transport && o.transport !== 'auto' && o.transport !== 'san')
        throw invalidArgument(
          `--transport ${o.transport} is for the volumes and VMs of a site (volume:NAME, vm:NAME); files and NBD URIs carry their own`,
        );
      await runLocal(
        o,
        { kind: source.startsWith('volume:') ? 'volume.backup' : 'backup', target: source },
        async (onProgress) =>
          (await orchestration()).backupResult(
            await backupSource({
              ...access(o),
              source,
              ...(o.bitmap ? { bitmap: o.bitmap } : {}),
              ...(o.format ? { format: o.format } : {}),
              ...(o.tag ? { tags: o.tag } : {}),
              ...(o.full ? { full: true } : {}),
              onProgress: (d, t) => onProgress(d, t, 'backup'),
            }),
          ),
        (m) =>
          `snapshot ${m.snapshot} of ${m.source.kind}:${m.source.name}${m.parent ? ` (incremental from ${m.parent})` : ''}: read ${bytes(m.stats.readBytes)}, stored ${bytes(m.stats.storedBytes)} new in ${m.stats.seconds.toFixed(2)} s\n${m.consistency}-consistent${m.consistencyReason ? `: ${m.consistencyReason}` : ''}`,
      );
    });

  apiOptions(repoOptions(program.command('restore')))
    .description(
      "restore a snapshot's disk to a new image file (raw), an NBD URI, or a new volume:NAME (through the site daemon; offline with --data)",
    )
    .argument('<snapshot>')
    .requiredOption('--to <target>', 'image file, NBD URI or volume:NAME')
    .option('--disk <n>', "which of the snapshot's disks", '0')
    .option('--data <dir>', "the site's data directory, for volume:NAME offline")
    .option('--pool <pool>', 'pool of a new volume', 'default')
    .option('--force', 'replace an existing image file (or write over a block device)')
    .option(
      '--rollback',
      'quick rollback: put the existing volume:NAME back to this (its newest) backup, rewriting only what changed since',
    )
    .option('--no-wait', 'through the daemon: return once the job has started')
    .option('--json', 'print JSON')
    .action(async (id: string, o: RestoreOpts) => {
      const disk = Number(o.disk);
      if (!Number.isInteger(disk) || disk < 0)
        throw invalidArgument(`--disk "${o.disk}" is not a disk number`);
      if (o.rollback) {
        if (!o.to.startsWith('volume:'))
          throw invalidArgument('--rollback works on an existing volume: --to volume:NAME');
        const volume = o.to.slice('volume:'.length);
        const said = (r: { changedBytes: number; dataBytes: number; zeroBytes: number }) =>
          `rolled volume ${volume} back to snapshot ${id}: ${bytes(r.changedBytes)} had changed, ${bytes(r.dataBytes + r.zeroBytes)} rewritten, every chunk verified`;
        return runJob(
          o,
          (c) =>
            c.post<Job>(`/volumes/${encodeURIComponent(volume)}/rollback`, {
              ...daemonRepo(o),
              snapshot: id,
            }),
          (j) => said(j.result as { changedBytes: number; dataBytes: number; zeroBytes: number }),
        );
      }
      if (o.to.startsWith('volume:')) {
        const body = {
          ...daemonRepo(o),
          snapshot: id,
          disk,
          name: o.to.slice('volume:'.length),
          pool: o.pool,
        };
        return runJob(
          o,
          (c) => c.post<Job>('/volumes/restore', body),
          () => `restored snapshot ${id} into ${o.to}, every chunk verified`,
        );
      }
      await runLocal(
        o,
        { kind: o.to.startsWith('volume:') ? 'volume.restore' : 'restore', target: o.to },
        (onProgress) =>
          restoreSnapshot({
            ...access(o),
            snapshot: id,
            to: o.to,
            disk,
            pool: o.pool,
            ...(o.force ? { force: true } : {}),
            onProgress: (d, t) => onProgress(d, t, 'restore'),
          }),
        (r) =>
          `restored ${r.disk} of snapshot ${r.snapshot} to ${o.to}: ${bytes(r.dataBytes)} of data, every chunk verified`,
      );
    });
}

type BackupOpts = RepoOpts &
  ApiOpts & {
    data?: string;
    bitmap?: string;
    format?: string;
    tag?: string[];
    transport?: string;
    preFreezeHook?: string;
    postThawHook?: string;
    requireAppConsistent?: boolean;
    full?: boolean;
    wait: boolean;
  };
type RestoreOpts = RepoOpts &
  ApiOpts & {
    to: string;
    disk: string;
    data?: string;
    pool: string;
    force?: boolean;
    rollback?: boolean;
    wait: boolean;
  };

/**
 * The repository as the site needs it: absolute paths; the passphrase stays in its file. A site
 * opened here (--data) reads this process's $HAVEN_PASSPHRASE itself.
 */
function daemonRepo(o: RepoOpts & { data?: string }): { repo: string; passphraseFile?: string } {
  const repo = o.repo ?? process.env.HAVEN_REPO;
  if (!repo) throw invalidArgument('give --repo DIR (or set HAVEN_REPO)');
  if (o.data)
    return {
      repo: repoPath(repo),
      ...(o.passphraseFile ? { passphraseFile: resolve(o.passphraseFile) } : {}),
    };
  return { repo: repoPath(repo), ...daemonPassphraseFile(o.passphraseFile) };
}
