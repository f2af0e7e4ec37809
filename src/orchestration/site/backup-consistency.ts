import { accessSync, constants, statSync } from 'node:fs';
import { join } from 'node:path';
import { invalidArgument } from '../../common/index.js';
import { quiescedSnapshot, type ConsistencyRecord } from '../../protection/index.js';
import type { ComputeService } from './compute.js';

/** What a VM backup request asks of the guest around its snapshot. */
export interface ConsistencyOptions {
  /** A hook run before the freeze: a file name in the site's hooks directory (resolved: its path). */
  preFreezeHook?: string;
  /** A hook run after the thaw, likewise. */
  postThawHook?: string;
  /** Fail rather than back up crash-consistent. */
  requireAppConsistent?: boolean;
}

/** How long the guest agent may take to answer the connection's sync, and then the freeze. */
const AGENT_SYNC_MS = 5_000;
const AGENT_FREEZE_MS = 10_000;

/**
 * Hooks are named, not given as paths: each is an executable file in the site's hooks directory
 * (`DATA/hooks/`, which only the host's administrator can write), so that the right to start a
 * backup through the API is not the right to run any program of the host. Refuses, before any
 * job starts, hooks that cannot run and options that need a VM; returns the hooks' paths.
 */
export function resolveConsistencyOptions(
  o: ConsistencyOptions,
  isVm: boolean,
  hooksDir: string,
): ConsistencyOptions {
  if (!isVm && (o.preFreezeHook || o.postThawHook || o.requireAppConsistent))
    throw invalidArgument(
      'freeze hooks and --require-app-consistent apply to VM backups (vm:NAME): a volume has no guest to freeze',
    );
  const hook = (what: string, name: string): string => {
    if (!/^[A-Za-z0-9_][A-Za-z0-9._-]*$/.test(name))
      throw invalidArgument(
        `the ${what} is named by its file name in the site's hooks directory ${hooksDir}, not "${name}"`,
      );
    const path = join(hooksDir, name);
    try {
      if (!statSync(path).isFile()) throw new Error('not a file');
      accessSync(path, constants.X_OK);
    } catch {
      throw invalidArgument(`the ${what} ${name} is not an executable file in ${hooksDir}`);
    }
    return path;
  };
  return {
    ...(o.preFreezeHook ? { preFreezeHook: hook('pre-freeze hook', o.preFreezeHook) } : {}),
    ...(o.postThawHook ? { postThawHook: hook('post-thaw hook', o.postThawHook) } : {}),
    ...(o.requireAppConsistent ? { requireAppConsistent: true } : {}),
  };
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
