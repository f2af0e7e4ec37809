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
