import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** A fresh temporary directory, removed by the returned cleanup (call it in `after`). */
export function tempDir(prefix = 'haven-test-', root = tmpdir()): { path: string; cleanup: () => void } {
  const path = mkdtempSync(join(root, prefix));
  return { path, cleanup: () => rmSync(path, { recursive: true, force: true }) };
}

/** SHA-256 over every file of a directory tree, names and contents (to show it did not change). */
export function treeHash(dir: string): string {
  const h = createHash('sha256');
  const files = readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((e) => e.isFile())
    .map((e) => join(e.parentPath, e.name))
    .sort();
  for (const f of files) h.update(f).update(readFileSync(f));
  return h.digest('hex');
}
