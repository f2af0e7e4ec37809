import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { BenchResult } from './types.js';

/**
 * Writes the result as `<dir>/<name>-<timestamp>.json` and `<dir>/<name>-latest.json`
 * (bench-results/ is git-ignored). Returns the timestamped path.
 */
export function writeResult(dir: string, r: BenchResult): string {
  mkdirSync(dir, { recursive: true });
  const stamp = r.startedAt.replace(/[:.]/g, '-');
  const text = `${JSON.stringify(r, null, 2)}\n`;
  const path = join(dir, `${r.name}-${stamp}.json`);
  writeFileSync(path, text);
  writeFileSync(join(dir, `${r.name}-latest.json`), text);
  return path;
}
