import type { Command } from 'commander';
import { HavenError, errorMessage } from '../common/index.js';
import { withHint } from './hints.js';

/** One line on stderr naming what went wrong; exit status is set by the caller. */
export function reportError(err: unknown): void {
  const prefix =
    err instanceof HavenError ? `haven: ${err.code.toLowerCase().replace(/_/g, ' ')}: ` : 'haven: ';
  const code = err instanceof HavenError ? err.code : undefined;
  process.stderr.write(prefix + withHint(code, errorMessage(err).split('\n')[0]!) + '\n');
}

/** Prints a result: JSON with --json, otherwise the human form. */
export function printResult(json: boolean, data: unknown, human: () => string): void {
  process.stdout.write(json ? JSON.stringify(data, null, 2) + '\n' : human() + '\n');
}

/** A `show` command's text: one "label: value" line each, values aligned. */
export function fields(rows: [string, string | number][]): string {
  const width = Math.max(...rows.map(([k]) => k.length)) + 2;
  return rows.map(([k, v]) => `${`${k}:`.padEnd(width)}${v}`).join('\n');
}

/** `haven repo verify`: damage was found (and named). Nothing else exits with it. */
export const EXIT_DAMAGE = 1;
/** `haven repo verify`: the check could not be done (usage, a repository that cannot be read …). */
export const EXIT_FAILED = 2;

const failureStatus = new WeakMap<Command, number>();

/** Makes a command's usage errors exit with `status` (its own errors it reports itself). */
export function failWith(cmd: Command, status: number): void {
  failureStatus.set(cmd, status);
}

/** The exit status of a usage error in `cmd`: its own (failWith), else commander's. */
export function usageStatus(cmd: Command, status: number): number {
  return status === 0 ? 0 : (failureStatus.get(cmd) ?? status);
}
