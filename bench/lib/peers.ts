import { spawnSync } from 'node:child_process';

/** A command a benchmark needs and the Debian package that provides it. */
export interface PeerTool {
  command: string;
  pkg: string;
}

export function hasCommand(command: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${command}`], { stdio: 'ignore' }).status === 0;
}

function aptGet(args: string[], log: (msg: string) => void): boolean {
  log(`apt-get ${args.join(' ')}`);
  const r = spawnSync('apt-get', args, {
    stdio: ['ignore', 'ignore', 'pipe'],
    env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' },
    encoding: 'utf8',
  });
  if (r.status !== 0) log(`apt-get ${args[0]} failed: ${(r.stderr ?? '').trim().split('\n').pop() ?? ''}`);
  return r.status === 0;
}

/**
 * Makes sure every tool is on PATH, installing the missing ones' packages with apt-get (as root,
 * with one `apt-get update` and retry if the first attempt fails). Throws naming what is missing
 * when they cannot be installed.
 */
export function ensurePeerTools(tools: PeerTool[], install: boolean, log: (msg: string) => void): void {
  const missing = tools.filter((t) => !hasCommand(t.command));
  if (missing.length === 0) return;
  const pkgs = [...new Set(missing.map((t) => t.pkg))];
  const what = `${missing.map((t) => t.command).join(', ')} (Debian packages: ${pkgs.join(' ')})`;
  if (!install) throw new Error(`missing peer tools: ${what}; run without --no-install or install them`);
  if (process.getuid?.() !== 0) throw new Error(`missing peer tools: ${what}; install them as root`);
  if (!aptGet(['install', '-y', '--no-install-recommends', ...pkgs], log)) {
    aptGet(['update'], log);
    aptGet(['install', '-y', '--no-install-recommends', ...pkgs], log);
  }
  const still = tools.filter((t) => !hasCommand(t.command));
  if (still.length)
    throw new Error(`could not install peer tools: ${still.map((t) => t.command).join(', ')}`);
}

/** First line of `command --version` (or of the given arguments), for the result's environment. */
export function toolVersion(command: string, args: string[] = ['--version']): string {
  const r = spawnSync(command, args, { encoding: 'utf8' });
  const out = `${r.stdout ?? ''}${r.stderr ?? ''}`.trim();
  return out.split('\n')[0] ?? '';
}
