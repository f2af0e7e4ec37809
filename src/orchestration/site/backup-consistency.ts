import { accessSync, constants, statSync } from 'node:fs';
import { isAbsolute } from 'node:path';
import { invalidArgument } from '../../common/index.js';
import { quiescedSnapshot, type ConsistencyRecord } from '../../protection/index.js';
import type { ComputeService } from './compute.js';

/** What a VM backup request asks of the guest around its snapshot. */
export interface ConsistencyOptions {
  /** An executable on the site's host run before the freeze. */
  preFreezeHook?: string;
  /** An executable run after the thaw. */
  postThawHook?: string;
  /** Fail rather than back up crash-consistent. */
  requireAppConsistent?: boolean;
}

/** How long the guest agent may take to answer the connection's sync, and then the freeze. */
const AGENT_SYNC_MS = 5_000;
const AGENT_FREEZE_MS = 10_000;

/** Refuses, before any job starts, hooks that cannot run and options that need a VM. */
export function checkConsistencyOptions(o: ConsistencyOptions, isVm: boolean): void {
  if (!isVm && (o.preFreezeHook || o.postThawHook || o.requireAppConsistent))
    throw invalidArgument(
      'freeze hooks and --require-app-consistent apply to VM backups (vm:NAME): a volume has no guest to freeze',
    );
  for (const [what, path] of [
    ['pre-freeze hook', o.preFreezeHook],
    ['post-thaw hook', o.postThawHook],
  ] as const) {
    if (path === undefined) continue;
    if (!isAbsolute(path))
      throw invalidArgument(`the ${what} must be an absolute path on the site's host, not ${path}`);
    try {
      if (!statSync(path).isFile()) throw new Error('not a file');
      accessSync(path, constants.X_OK);
    } catch {
      throw invalidArgument(`the ${what} ${path} is not an executable file on the site's host`);
    }
  }
}

/**
 * The quiesce step of a VM backup: hooks and a freeze through the VM's guest agent around the
 * storage snapshot (see quiescedSnapshot), each step in the job's log.
 */
export function vmQuiesce(
  compute: ComputeService,
  vm: string,
  o: ConsistencyOptions,
  log: (message: string, level?: 'info' | 'warning' | 'error') => void,
): (snapshot: () => void) => Promise<ConsistencyRecord> {
  return (snapshot) =>
    quiescedSnapshot(
      {
        vm,
        agent: async () => {
          const a = await compute.guestAgent(vm, AGENT_SYNC_MS);
          return {
            freeze: (ms) => a.execute<number>('guest-fsfreeze-freeze', undefined, ms),
            thaw: (ms) => a.execute<number>('guest-fsfreeze-thaw', undefined, ms),
            close: () => a.close(),
          };
        },
        freezeTimeoutMs: AGENT_FREEZE_MS,
        ...(o.preFreezeHook ? { preFreezeHook: o.preFreezeHook } : {}),
        ...(o.postThawHook ? { postThawHook: o.postThawHook } : {}),
        ...(o.requireAppConsistent ? { requireAppConsistent: true } : {}),
        log,
      },
      () => {
        snapshot();
        log("storage snapshot taken: the backup's point in time");
      },
    );
}
