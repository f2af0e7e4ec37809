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

/** A result's start, end and duration, for a run that started at `startedAt` and ends now. */
export function runSpan(startedAt: Date): Pick<BenchResult, 'startedAt' | 'finishedAt' | 'durationSeconds'> {
  const finishedAt = new Date();
  return {
    startedAt: startedAt.toISOString(),
    finishedAt: finishedAt.toISOString(),
    durationSeconds: (finishedAt.getTime() - startedAt.getTime()) / 1000,
  };
}
