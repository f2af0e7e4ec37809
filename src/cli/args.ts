import type { Command } from 'commander';
import { invalidArgument } from '../common/index.js';

const UNITS: Record<string, number> = { '': 1, K: 2 ** 10, M: 2 ** 20, G: 2 ** 30, T: 2 ** 40, P: 2 ** 50 };

/** "10G", "512M", "1.5T", "4096" → bytes (binary units, as qemu-img reads them). */
export function parseSize(s: string, what = 'size'): number {
  const m = /^(\d+(?:\.\d+)?)\s*([KMGTP]?)(?:i?B)?$/i.exec(s.trim());
  if (!m) throw invalidArgument(`${what} "${s}" is not a size (e.g. 4096, 512M, 10G, 2T)`);
  const bytes = Number(m[1]) * UNITS[m[2]!.toUpperCase()]!;
  if (!Number.isSafeInteger(bytes)) throw invalidArgument(`${what} "${s}" is not a whole number of bytes`);
  return bytes;
}

/** The --data option shared by the commands that work on a site's data directory. */
export function dataOption(cmd: Command): Command {
  return cmd.option(
    '--data <dir>',
    "the site's data directory (default: $HAVEN_DATA or ~/.local/share/haven)",
  );
}

export function table(rows: (string | number)[][]): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => String(r[i] ?? '').length)));
  return rows
    .map((r) =>
      r
        .map((c, i) => String(c).padEnd(widths[i]!))
        .join('  ')
        .trimEnd(),
    )
    .join('\n');
}

export function bytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${i === 0 ? v : v.toFixed(1)} ${units[i]}`;
}

const SECONDS: Record<string, number> = { ms: 0.001, s: 1, m: 60, h: 3600, d: 86400 };

/** "5s", "500ms", "15m", "1h", "30d", "10" (seconds) → seconds. */
export function parseDuration(s: string, what = 'duration', opts: { zero?: boolean } = {}): number {
  const m = /^(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?$/i.exec(s.trim());
  const n = m ? Number(m[1]) * SECONDS[(m[2] ?? 's').toLowerCase()]! : NaN;
  if (!m || !(n > 0 || (opts.zero && n === 0)))
    throw invalidArgument(`${what} "${s}" is not a duration (e.g. 5s, 500ms, 15m, 1h, 7d)`);
  return n;
}

/** A commander option parser for an option given more than once: every value, in order. */
export function repeatable(v: string, all: string[] = []): string[] {
  return [...all, v];
}
