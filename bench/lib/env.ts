import { cpus, loadavg, totalmem } from 'node:os';
import { spawnSync } from 'node:child_process';
import { toolVersion } from './peers.js';

/** The load average (1, 5, 15 min), two decimals. */
export const roundedLoad = (): number[] => loadavg().map((x) => Math.round(x * 100) / 100);

/** Machine and tool versions recorded beside the numbers (the runner adds the load at start and end). */
export function environment(tools: Record<string, string[]>): Record<string, unknown> {
  const commit = spawnSync('git', ['rev-parse', '--short', 'HEAD'], { encoding: 'utf8' }).stdout?.trim();
  return {
    node: process.version,
    cpus: cpus().length,
    cpuModel: cpus()[0]?.model ?? '',
    memoryGiB: Math.round((totalmem() / 2 ** 30) * 10) / 10,
    commit: commit || null,
    tools: Object.fromEntries(Object.entries(tools).map(([t, args]) => [t, toolVersion(t, args)])),
  };
}
