import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync, statSync } from 'node:fs';
import { delimiter, dirname, join } from 'node:path';
import { writeFileAtomic } from '../../common/index.js';

const QEMU = 'qemu-system-x86_64';

/**
 * "QEMU 8.2.2", as `qemu-system-x86_64 --version` says, remembered in `cacheFile` for as long as
 * the binary on $PATH is the same file (path, size, mtime): running it cost every site open
 * (each offline CLI command) ~20 ms.
 */
export function hypervisorName(cacheFile: string): string {
  const binary = findOnPath(QEMU);
  if (!binary) return `QEMU (${QEMU} not found)`;
  const key = `${binary.path}:${binary.size}:${binary.mtimeMs}`;
  try {
    const cached = JSON.parse(readFileSync(cacheFile, 'utf8')) as { key?: string; name?: string };
    if (cached.key === key && typeof cached.name === 'string') return cached.name;
  } catch {
    // none yet, or unreadable: ask the binary
  }
  let name = 'QEMU';
  try {
    const v = execFileSync(binary.path, ['--version'], { encoding: 'utf8' });
    name = /version ([\d.]+)/.exec(v)?.[0].replace('version', 'QEMU') ?? name;
  } catch {
    return `QEMU (${QEMU} does not run)`;
  }
  try {
    mkdirSync(dirname(cacheFile), { recursive: true });
    writeFileAtomic(cacheFile, JSON.stringify({ key, name }) + '\n');
  } catch {
    // a read-only data directory only costs the next open the same 20 ms
  }
  return name;
}

function findOnPath(cmd: string): { path: string; size: number; mtimeMs: number } | undefined {
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    if (!dir) continue;
    const path = join(dir, cmd);
    try {
      const st = statSync(path);
      if (st.isFile() && st.mode & 0o111) return { path, size: st.size, mtimeMs: st.mtimeMs };
    } catch {
      // not in this directory
    }
  }
  return undefined;
}
