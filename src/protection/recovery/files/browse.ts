import { createHash } from 'node:crypto';
import { constants, createReadStream } from 'node:fs';
import {
  chmod,
  lstat,
  lutimes,
  mkdir,
  open,
  rm,
  stat,
  symlink,
  utimes,
  type FileHandle,
} from 'node:fs/promises';
import { join, posix } from 'node:path';
import { conflict, HavenError, invalidArgument, notFound } from '../../../common/index.js';
import type { Debugfs, FileType } from './debugfs.js';

const ROOT_INODE = 2;

/** One entry of a listing (`haven backup files … PATH`). */
export interface FileEntry {
  name: string;
  type: FileType;
  size: number;
  /** Permission bits as octal text ("0755"), setuid/setgid/sticky included. */
  mode: string;
  /** ISO 8601, UTC. */
  mtime: string;
  /** A symlink's target, as stored (never followed). */
  target?: string;
}

interface Node {
  /** Path below the extracted root ('' for the root itself). */
  rel: string;
  inode: number;
  type: FileType;
  mode: number;
  size: number;
}

/** `/a/b/`, `a/b`, `/a/./b` → `/a/b`; never above the root. */
export function normalisePath(path: string): string {
  return posix.normalize(posix.join('/', path)).replace(/(.)\/$/, '$1');
}

/** The inode a path names, its type and size, following no symlink (a symlink is itself). */
async function resolve(fs: Debugfs, path: string, what: string): Promise<Node> {
  const p = normalisePath(path);
  let node: Node = { rel: '', inode: ROOT_INODE, type: 'directory', mode: 0o755, size: 0 };
  let sofar = '';
  for (const name of p.split('/').filter(Boolean)) {
    if (node.type !== 'directory')
      throw notFound(`${what}: ${sofar} is a ${node.type}, not a directory, so ${p} does not exist`);
    const e = (await fs.list(node.inode)).find((x) => x.name === name);
    sofar += `/${name}`;
    if (!e) throw notFound(`${what} has no ${sofar}${sofar !== p ? ` (looking for ${p})` : ''}`);
    node = { rel: '', inode: e.inode, type: e.type, mode: e.mode, size: e.size };
  }
  return node;
}

/** Lists a directory of the filesystem (or one entry, if `path` is not a directory). */
export async function listFiles(fs: Debugfs, path: string, what: string): Promise<FileEntry[]> {
  const at = await resolve(fs, path, what);
  const p = normalisePath(path);
  const entries =
    at.type === 'directory'
      ? (await fs.list(at.inode)).sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))
      : [{ ...at, name: posix.basename(p) }];
  const info = await fs.stat(entries.map((e) => e.inode));
  const slow = entries.filter((e) => e.type === 'symlink' && !info.get(e.inode)?.fastLink);
  const targets = await readLinks(fs, slow);
  return entries.map((e) => {
    const i = info.get(e.inode)!;
    const target = e.type === 'symlink' ? (i.fastLink ?? targets.get(e.inode)) : undefined;
    return {
      name: e.name,
      type: e.type,
      size: e.size,
      mode: e.mode.toString(8).padStart(4, '0'),
      mtime: new Date(Math.floor(i.mtime * 1000)).toISOString(),
      ...(target !== undefined ? { target } : {}),
    };
  });
}

async function readLinks(
  fs: Debugfs,
  links: { inode: number; size: number }[],
): Promise<Map<number, string>> {
  const parts = links.map(() => [] as Buffer[]);
  await fs.cat(
    links,
    async (i, b) => void parts[i]!.push(Buffer.from(b)),
    async () => undefined,
  );
  return new Map(links.map((l, i) => [l.inode, Buffer.concat(parts[i]!).toString('utf8')]));
}

export interface ExtractOptions {
  /** Replace existing files, symlinks and what stands where a directory goes (never following a symlink). */
  force?: boolean;
  signal?: AbortSignal;
}

export interface ExtractResult {
  /** Where the extracted path landed. */
  to: string;
  files: number;
  directories: number;
  symlinks: number;
  /** Bytes of file data written, each file read back and its sha256 matched to what the filesystem gave. */
  bytes: number;
  /** Device nodes, FIFOs and sockets, which are not recreated. */
  skipped: string[];
}

/**
 * Extracts `path` (a file, a symlink or a whole directory tree) into `toDir`: `/etc/hosts` becomes
 * `toDir/hosts`, `/etc` becomes `toDir/etc/…`, `/` puts the filesystem's top level in `toDir`.
 * Modes and modification times are kept (ownership is not: the files belong to whoever runs
 * this). Below `toDir` nothing is followed: directories are entered only when they are real
 * directories, files are created with O_EXCL|O_NOFOLLOW, symlinks are recreated as symlinks.
 * Every file is read back after it is written and its sha256 compared with the filesystem's bytes.
 */
export async function extractFiles(
  fs: Debugfs,
  path: string,
  toDir: string,
  what: string,
  opts: ExtractOptions = {},
): Promise<ExtractResult> {
  const p = normalisePath(path);
  const root = await resolve(fs, p, what);
  const base = p === '/' ? toDir : join(toDir, posix.basename(p));
  const nodes = await walk(fs, root, opts.signal);
  const dest = (n: Node) => (n.rel ? join(base, n.rel) : base);
  const skipped = nodes.filter((n) => !['file', 'directory', 'symlink'].includes(n.type));
  const todo = nodes.filter((n) => !skipped.includes(n) && !(p === '/' && n.rel === ''));

  const there = await stat(toDir).catch(() => null);
  if (there && !there.isDirectory()) throw invalidArgument(`--to ${toDir} is not a directory`);
  if (!there) await mkdir(toDir, { recursive: true });
  // Decide every clash before writing anything.
  const replace: string[] = [];
  const clashes: string[] = [];
  // Below a directory that does not exist yet (or is replaced) nothing can clash, and nothing is
  // looked at: a symlink standing there must not lead the check outside.
  const fresh = new Set<string>();
  for (const n of todo) {
    if (n.rel && fresh.has(posix.dirname(n.rel) === '.' ? '' : posix.dirname(n.rel))) {
      if (n.type === 'directory') fresh.add(n.rel);
      continue;
    }
    const s = await lstatOrNull(dest(n));
    if (s && n.type === 'directory' && s.isDirectory()) continue;
    if (s) (opts.force ? replace : clashes).push(dest(n));
    if (n.type === 'directory') fresh.add(n.rel);
  }
  if (clashes.length)
    throw conflict(
      `${clashes.length} file(s) already exist, e.g. ${clashes.slice(0, 3).join(', ')}: give --force to replace them, or extract into an empty directory`,
    );
  for (const d of replace) await rm(d, { recursive: true, force: true }); // removes a symlink, never its target

  const info = await fs.stat(todo.map((n) => n.inode));
  const result: ExtractResult = {
    to: base,
    files: 0,
    directories: 0,
    symlinks: 0,
    bytes: 0,
    skipped: skipped.map((n) => posix.join(p, n.rel)),
  };
  for (const n of todo.filter((x) => x.type === 'directory')) {
    await mkdir(dest(n), { recursive: false }).catch((e: NodeJS.ErrnoException) => {
      if (e.code !== 'EEXIST') throw e;
    });
    result.directories++;
  }
  const links = todo.filter((n) => n.type === 'symlink');
  const slow = await readLinks(
    fs,
    links.filter((n) => !info.get(n.inode)!.fastLink),
  );
  for (const n of links) {
    await symlink(info.get(n.inode)!.fastLink ?? slow.get(n.inode)!, dest(n));
    const t = info.get(n.inode)!.mtime;
    await lutimes(dest(n), t, t);
    result.symlinks++;
  }
  const files = todo.filter((n) => n.type === 'file');
  const handles: (FileHandle | undefined)[] = [];
  const hashes = files.map(() => createHash('sha256'));
  try {
    await fs.cat(
      files,
      async (i, bytes) => {
        handles[i] ??= await open(
          dest(files[i]!),
          constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW,
          0o600,
        );
        hashes[i]!.update(bytes);
        await handles[i].write(bytes);
      },
      async (i) => {
        const n = files[i]!;
        const h =
          handles[i] ??
          (await open(
            dest(n),
            constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW,
            0o600,
          ));
        handles[i] = undefined;
        await h.chmod(n.mode);
        await h.close();
        const t = info.get(n.inode)!.mtime;
        await utimes(dest(n), t, t);
        const want = hashes[i]!.digest('hex');
        const got = await sha256File(dest(n));
        if (got !== want)
          throw new HavenError('CORRUPT', `${dest(n)} reads back as sha256 ${got}, but ${what} gave ${want}`);
        result.files++;
        result.bytes += n.size;
      },
    );
  } catch (err) {
    // A file cut short is not left behind looking whole: those still open are removed.
    for (const [i, h] of handles.entries())
      if (h) {
        await h.close().catch(() => undefined);
        await rm(dest(files[i]!), { force: true });
      }
    throw err;
  }
  // Directories last, deepest first: writing into them changed their times.
  for (const n of todo.filter((x) => x.type === 'directory').reverse()) {
    await chmod(dest(n), n.mode);
    const t = info.get(n.inode)!.mtime;
    await utimes(dest(n), t, t);
  }
  return result;
}

/** Every node below (and including) `root`, parents before children; one debugfs run per level. */
async function walk(fs: Debugfs, root: Node, signal?: AbortSignal): Promise<Node[]> {
  const out: Node[] = [root];
  let level = root.type === 'directory' ? [root] : [];
  while (level.length) {
    signal?.throwIfAborted();
    const listed = await fs.listMany(level.map((d) => d.inode));
    const next: Node[] = [];
    for (const d of level)
      for (const e of listed.get(d.inode)!) {
        const n: Node = {
          rel: d.rel ? `${d.rel}/${e.name}` : e.name,
          inode: e.inode,
          type: e.type,
          mode: e.mode,
          size: e.size,
        };
        out.push(n);
        if (n.type === 'directory') next.push(n);
      }
    level = next;
  }
  return out;
}

async function lstatOrNull(p: string) {
  return lstat(p).catch((e: NodeJS.ErrnoException) => {
    if (e.code === 'ENOENT') return null;
    throw e;
  });
}

function sha256File(p: string): Promise<string> {
  return new Promise((res, rej) => {
    const h = createHash('sha256');
    createReadStream(p)
      .on('data', (d) => h.update(d))
      .on('end', () => res(h.digest('hex')))
      .on('error', rej);
  });
}
