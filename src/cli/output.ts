import { HavenError, errorMessage } from '../common/index.js';

/** One line on stderr naming what went wrong; exit status is set by the caller. */
export function reportError(err: unknown): void {
  const prefix =
    err instanceof HavenError ? `haven: ${err.code.toLowerCase().replace(/_/g, ' ')}: ` : 'haven: ';
  process.stderr.write(prefix + errorMessage(err).split('\n')[0] + '\n');
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
