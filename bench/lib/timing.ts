import { run } from '../../test/support/proc.js';

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

/** Runs a command to completion and returns its wall-clock seconds (startup included). */
export async function timeCommand(cmd: string, args: string[], timeoutMs: number): Promise<number> {
  const t0 = process.hrtime.bigint();
  await run(cmd, args, { timeout: timeoutMs });
  return Number(process.hrtime.bigint() - t0) / 1e9;
}

/**
 * Runs `fn` `n` times and summarises the per-run values by their median (robust to one outlier
 * on a shared machine); every sample is kept for the record.
 */
export async function medianOf(
  n: number,
  fn: () => Promise<number>,
): Promise<{ value: number; samples: number[] }> {
  const samples: number[] = [];
  for (let i = 0; i < n; i++) samples.push(await fn());
  return { value: median(samples), samples };
}
