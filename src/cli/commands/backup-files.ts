import type { Command } from 'commander';
import { invalidArgument } from '../../common/index.js';
import type { RepoAccess } from '../../orchestration/index.js';
import { bytes, table } from '../args.js';
import { orchestration } from '../lazy.js';
import { printResult } from '../output.js';

/** Where the repository is, as every repository command takes it. */
export type RepoOpts = { repo?: string; endpoint?: string; passphraseFile?: string; json?: boolean };

type FilesOpts = RepoOpts & {
  disk: string;
  partition?: string;
  extract?: string;
  to?: string;
  force?: boolean;
};

/** `haven backup files`: list and extract the files of a backup's filesystems (ext2/3/4). */
export function registerBackupFiles(cmd: Command, access: (o: RepoOpts) => RepoAccess): void {
  cmd
    .description(
      "list a backup's partitions and filesystems, list a directory of one, or --extract a file or tree to a local directory, without restoring the disk (ext2/3/4)",
    )
    .argument('<snapshot>')
    .argument('[path]', 'a directory (or file) of the filesystem to list; without it, the partitions')
    .option('--disk <n>', "which of the snapshot's disks", '0')
    .option(
      '--partition <n>',
      'which partition (as Linux numbers them: 1 for sda1); needed when several are readable',
    )
    .option('--extract <path>', 'copy this file, symlink or directory tree out of the backup')
    .option('--to <dir>', 'with --extract: the local directory to put it in (created if missing)')
    .option('--force', 'with --extract: replace files that already exist (never following symlinks)')
    .option('--json', 'print JSON')
    .action(async (id: string, path: string | undefined, _o: unknown, c: Command) => {
      // --repo and --passphrase-file are also the parent's options: take them from either.
      const o = c.optsWithGlobals<FilesOpts>();
      const disk = whole(o.disk, '--disk');
      const partition = o.partition !== undefined ? whole(o.partition, '--partition') : undefined;
      if (o.extract !== undefined && path !== undefined)
        throw invalidArgument('give a path to list or --extract PATH, not both');
      if ((o.extract === undefined) !== (o.to === undefined))
        throw invalidArgument('--extract PATH and --to DIR go together');
      const ctl = new AbortController();
      const stop = () => ctl.abort();
      process.once('SIGINT', stop);
      process.once('SIGTERM', stop);
      const req = {
        ...access(o),
        snapshot: id,
        disk,
        ...(partition !== undefined ? { partition } : {}),
        signal: ctl.signal,
      };
      const orch = await orchestration();
      try {
        if (o.extract !== undefined) {
          const r = await orch.extractBackupFiles({
            ...req,
            path: o.extract,
            to: o.to!,
            ...(o.force ? { force: true } : {}),
          });
          return printResult(
            !!o.json,
            r,
            () =>
              `extracted ${r.path} to ${r.to}: ${count(r.files, 'file')}, ${count(r.directories, 'directory', 'directories')}, ${count(r.symlinks, 'symlink')}, ${bytes(r.bytes)}, every file read back and matched` +
              (r.skipped.length ? `\nskipped (device nodes, FIFOs, sockets): ${r.skipped.join(', ')}` : ''),
          );
        }
        if (path === undefined) {
          const r = await orch.listBackupFilesystems(req);
          return printResult(!!o.json, r, () =>
            [
              `${r.diskName} (${bytes(r.size)}): ${r.scheme === 'none' ? 'no partition table' : `${r.scheme.toUpperCase()} partition table`}`,
              table([
                ['PARTITION', 'START', 'SIZE', 'FILESYSTEM', 'FILES'],
                ...r.filesystems.map((f) => [
                  f.partition ?? '-',
                  f.start,
                  bytes(f.size),
                  f.type ?? '(none recognised)',
                  f.readable ? 'readable' : '',
                ]),
              ]),
            ].join('\n'),
          );
        }
        const r = await orch.listBackupFiles({ ...req, path });
        printResult(!!o.json, r, () =>
          table([
            ['MODE', 'SIZE', 'MTIME', 'NAME'],
            ...r.entries.map((e) => [
              `${TYPE_LETTER[e.type]}${e.mode}`,
              e.size,
              e.mtime.replace(/\.\d+Z$/, 'Z'),
              e.target !== undefined
                ? `${e.name} -> ${e.target}`
                : e.type === 'directory'
                  ? `${e.name}/`
                  : e.name,
            ]),
          ]),
        );
      } finally {
        process.off('SIGINT', stop);
        process.off('SIGTERM', stop);
      }
    });
}

const TYPE_LETTER = {
  file: '-',
  directory: 'd',
  symlink: 'l',
  'char-device': 'c',
  'block-device': 'b',
  fifo: 'p',
  socket: 's',
} as const;

function whole(v: string, what: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0) throw invalidArgument(`${what} "${v}" is not a whole number`);
  return n;
}

const count = (n: number, one: string, many = `${one}s`) => `${n} ${n === 1 ? one : many}`;
