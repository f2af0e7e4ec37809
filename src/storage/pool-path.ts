import { existsSync, readFileSync, readdirSync, realpathSync, statSync } from 'node:fs';
import { basename, dirname, isAbsolute, join, relative, resolve, sep } from 'node:path';
import { conflict, invalidArgument } from '../common/index.js';

/** The file Haven writes first into every pool directory: the pool's id, so its files are known as Haven's. */
export const POOL_MARKER = '.haven-pool';

/** Directories of the operating system: never a pool, nor anything inside them. */
const SYSTEM_TREES = [
  '/bin',
  '/boot',
  '/dev',
  '/etc',
  '/lib',
  '/lib32',
  '/lib64',
  '/libx32',
  '/proc',
  '/sbin',
  '/sys',
  '/usr',
];
/** Directories that hold others' data: never a pool themselves (a folder inside one may be). */
const SYSTEM_DIRS = [
  '/',
  '/home',
  '/media',
  '/mnt',
  '/opt',
  '/root',
  '/run',
  '/srv',
  '/tmp',
  '/var',
  '/var/lib',
  '/var/tmp',
];

/**
 * Checks where a new pool may go and returns its canonical path (symbolic links resolved, so
 * that a link cannot smuggle in a forbidden place). Refused: a relative path; `/` and the
 * system's directories; the data directory, its ancestors, and anything in it but `pools/`; the
 * path of another pool, its ancestors and descendants; an existing directory that is neither
 * empty nor a pool creation that Haven left unfinished. A pool's delete removes only its own
 * files, so these rules are what keeps the operator's data out of reach.
 */
export function checkPoolPath(path: string, ctx: { dataDir: string; otherPools: string[] }): string {
  if (!isAbsolute(path))
    throw invalidArgument(
      `pool path "${path}" is relative: give an absolute path (the daemon's working directory is not yours)`,
    );
  const p = canonical(path);
  const refuse = (why: string) => invalidArgument(`pool path ${path} is refused: ${why}`);
  const data = canonical(ctx.dataDir);
  const pools = join(data, 'pools');
  // A folder of the data directory's pools/ is always fine, wherever the operator put the data.
  const inPools = p !== pools && within(p, pools);
  if (!inPools && SYSTEM_DIRS.includes(p))
    throw refuse(`${p} is a system directory; use a directory of its own inside it`);
  for (const s of SYSTEM_TREES)
    if (!inPools && within(p, s)) throw refuse(`it is inside ${s}, a directory of the operating system`);
  if (within(data, p))
    throw refuse(
      p === data
        ? `it is the site's data directory (${data}); leave --path out to put the pool inside it`
        : `it holds the site's data directory ${data}`,
    );
  if (within(p, data) && !inPools)
    throw refuse(`inside the data directory ${data}, a pool is a folder of ${pools}`);
  for (const other of ctx.otherPools) {
    const o = canonical(other);
    if (within(p, o) || within(o, p))
      throw conflict(`pool path ${path} overlaps the pool at ${o}: pools may not nest or share a directory`);
  }
  if (existsSync(p)) {
    if (!statSync(p).isDirectory()) throw refuse('it is not a directory');
    const foreign = readdirSync(p).filter((e) => !unfinishedCreation(p, e));
    if (foreign.length)
      throw refuse(
        `the directory is not empty (${foreign.slice(0, 3).join(', ')}${foreign.length > 3 ? ', …' : ''}) and is not a pool Haven began; give an empty or new directory`,
      );
  }
  return p;
}

/** What an interrupted Pool.create leaves: the marker and an empty families/ folder (no pool.json yet). */
function unfinishedCreation(dir: string, entry: string): boolean {
  if (entry === POOL_MARKER) return markerValid(join(dir, entry));
  if (entry === 'families') return readdirSync(join(dir, entry)).length === 0;
  return false;
}

function markerValid(path: string): boolean {
  try {
    return typeof (JSON.parse(readFileSync(path, 'utf8')) as { id?: unknown }).id === 'string';
  } catch {
    return false;
  }
}

/** `a` is `b` or inside it. */
function within(a: string, b: string): boolean {
  const r = relative(b, a);
  return r === '' || (r !== '..' && !r.startsWith(`..${sep}`) && !isAbsolute(r));
}

/** The path with `..` and symbolic links resolved, as far as it exists. */
function canonical(path: string): string {
  const abs = resolve(path);
  if (existsSync(abs)) return realpathSync(abs);
  const parent = dirname(abs);
  return parent === abs ? abs : join(canonical(parent), basename(abs));
}
