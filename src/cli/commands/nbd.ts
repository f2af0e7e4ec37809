import type { Command } from 'commander';
import { registerNbdCopy } from './nbd-copy.js';
import { registerNbdInfo } from './nbd-info.js';
import { registerNbdServe } from './nbd-serve.js';

/** `haven nbd …`: serve, inspect and copy disks over the Network Block Device protocol. */
export function registerNbd(program: Command): void {
  const nbd = program.command('nbd').description('serve, inspect and copy disks over NBD');
  registerNbdServe(nbd);
  registerNbdInfo(nbd);
  registerNbdCopy(nbd);
}
