import { spawn } from 'node:child_process';
import { HavenError, errorMessage } from '../../common/index.js';

/**
 * How consistent a backup is: `application` when the guest's file systems were frozen (and the
 * pre-freeze hook, if any, succeeded) at the snapshot; `crash` otherwise — the state a power cut
 * would leave, which journaling file systems and databases recover from on their next start.
 */
export type Consistency = 'application' | 'crash';

export interface ConsistencyRecord {
  consistency: Consistency;
  /** Why a backup is crash-consistent. */
  reason?: string;
}

/** The guest side of a freeze: a guest agent session (QGA guest-fsfreeze-*). */
export interface GuestFreezer {
  /** Freezes the guest's file systems; resolves with how many it froze. */
  freeze(timeoutMs: number): Promise<number>;
  /** Thaws them; resolves with how many it thawed. */
  thaw(timeoutMs: number): Promise<number>;
  close(): void;
}

export interface QuiesceOptions {
  /** The VM's name, for hooks (HAVEN_VM) and messages. */
  vm: string;
  /** Opens a synchronised session with the guest agent; rejects when it is absent or silent. */
  agent: () => Promise<GuestFreezer>;
  /** An executable run before the freeze (HAVEN_HOOK_PHASE=pre-freeze). */
  preFreezeHook?: string;
  /** An executable run after the thaw (HAVEN_HOOK_PHASE=post-thaw), whenever the pre-freeze hook ran. */
  postThawHook?: string;
  /** Fail the backup instead of taking a crash-consistent one. */
  requireAppConsistent?: boolean;
  /** How long the agent may take to answer the freeze (default 10 s); connecting gets its own bound. */
  freezeTimeoutMs?: number;
  /** How long the agent may take to answer the thaw (default 10 s). */
  thawTimeoutMs?: number;
  /** How long each hook may run before it is killed (default 60 s). */
  hookTimeoutMs?: number;
  log: (message: string, level?: 'info' | 'warning' | 'error') => void;
}

/**
 * Takes a snapshot of a running VM's disks with its file systems frozen when it can:
 * pre-freeze hook, guest-fsfreeze-freeze, `snapshot()` (synchronous: the point in time), thaw at
 * once (always, also when the freeze failed or timed out: a late freeze must not stay), post-thaw
 * hook. Anything that goes wrong on the guest's side (no agent, a silent agent, a failed freeze,
 * a failing pre-freeze hook) makes the backup crash-consistent with the reason, never fails or
 * blocks it — unless `requireAppConsistent`, then it fails before the snapshot. The file systems
 * stay frozen only from the freeze's answer to the thaw: the snapshot is a metadata operation.
 */
export async function quiescedSnapshot(
  opts: QuiesceOptions,
  snapshot: () => void,
): Promise<ConsistencyRecord & { frozenMs?: number }> {
  const freezeTimeout = opts.freezeTimeoutMs ?? 10_000;
  const thawTimeout = opts.thawTimeoutMs ?? 10_000;
  const hookTimeout = opts.hookTimeoutMs ?? 60_000;
  let reason: string | undefined;
  let agent: GuestFreezer | undefined;
  let freezeSent = false;
  let frozenAt: number | undefined;
  let taken = false;
  let result: ConsistencyRecord & { frozenMs?: number } = { consistency: 'crash' };
  const hookRan = !!opts.preFreezeHook;
  try {
    if (opts.preFreezeHook) {
      const h = await runHook(opts.preFreezeHook, 'pre-freeze', opts.vm, hookTimeout, {});
      if (h.ok) opts.log(`pre-freeze hook ${opts.preFreezeHook} succeeded${h.output ? `: ${h.output}` : ''}`);
      else {
        reason = `the pre-freeze hook failed (${h.why})`;
        opts.log(`pre-freeze hook ${opts.preFreezeHook}: ${h.why}`, 'warning');
      }
    }
    if (!reason) {
      try {
        agent = await opts.agent();
        freezeSent = true;
        const n = await agent.freeze(freezeTimeout);
        frozenAt = performance.now();
        opts.log(`guest agent froze ${n} file system(s)`);
      } catch (err) {
        reason = errorMessage(err);
      }
    }
    if (reason) {
      if (opts.requireAppConsistent)
        throw new HavenError(
          'CONFLICT',
          `VM ${opts.vm}: no application-consistent backup (--require-app-consistent): ${reason}`,
        );
      opts.log(`backing up crash-consistent: ${reason}`, 'warning');
    }
    snapshot();
    taken = true;
    result = reason ? { consistency: 'crash', reason } : { consistency: 'application' };
  } finally {
    if (agent && freezeSent) {
      try {
        const n = await agent.thaw(thawTimeout);
        if (frozenAt !== undefined) {
          result.frozenMs = Math.round(performance.now() - frozenAt);
          opts.log(`guest agent thawed ${n} file system(s) (frozen for ${result.frozenMs} ms)`);
        }
      } catch (err) {
        opts.log(`the guest's file systems may still be frozen: thaw failed: ${errorMessage(err)}`, 'error');
      }
    }
    agent?.close();
    if (opts.postThawHook && (hookRan || taken)) {
      const h = await runHook(opts.postThawHook, 'post-thaw', opts.vm, hookTimeout, {
        HAVEN_CONSISTENCY: taken ? result.consistency : 'none',
      });
      if (h.ok) opts.log(`post-thaw hook ${opts.postThawHook} succeeded${h.output ? `: ${h.output}` : ''}`);
      else opts.log(`post-thaw hook ${opts.postThawHook}: ${h.why}`, 'warning');
    }
  }
  return result;
}

/** Runs a hook without a shell; its output (the last 500 bytes) goes to the job log. */
function runHook(
  path: string,
  phase: 'pre-freeze' | 'post-thaw',
  vm: string,
  timeoutMs: number,
  env: Record<string, string>,
): Promise<{ ok: boolean; why?: string; output: string }> {
  return new Promise((resolve) => {
    let out = '';
    let child;
    try {
      child = spawn(path, [], {
        stdio: ['ignore', 'pipe', 'pipe'],
        env: { ...process.env, HAVEN_VM: vm, HAVEN_HOOK_PHASE: phase, ...env },
      });
    } catch (err) {
      resolve({ ok: false, why: `cannot run it: ${errorMessage(err)}`, output: '' });
      return;
    }
    const take = (d: Buffer) => (out = (out + d.toString()).slice(-500));
    child.stdout.on('data', take);
    child.stderr.on('data', take);
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, timeoutMs);
    child.on('error', (err) => {
      clearTimeout(timer);
      resolve({ ok: false, why: `cannot run it: ${err.message}`, output: out.trim() });
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      const output = out.trim();
      if (code === 0) return resolve({ ok: true, output });
      const why = timedOut
        ? `killed after ${timeoutMs / 1000} s`
        : signal
          ? `killed by ${signal}`
          : `exit status ${code}`;
      resolve({ ok: false, why: output ? `${why}: ${output}` : why, output });
    });
  });
}
