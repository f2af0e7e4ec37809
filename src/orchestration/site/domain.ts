import { HavenError, conflict } from '../../common/index.js';
import type { CapabilitySet, StorageExports, StorageService } from '../../storage/index.js';
import type { ComputeService } from './compute.js';
import type { EventLog } from './events.js';
import type { JobManager } from './jobs.js';
import type { ProviderPools } from './provider-pools.js';

/** Who asks: recorded in jobs and events. */
export type Actor = string;

/** What the domains of a site share: its storage and exports, its jobs, event log and VMs. */
export interface SiteParts {
  storage: StorageService;
  exports: StorageExports;
  jobs: JobManager;
  events: EventLog;
  compute: ComputeService;
  /** The replication group holding a volume or VM, if any (such a one is not deleted). */
  replicatedBy?: (kind: 'volume' | 'vm', name: string) => string | undefined;
  /** Why a VM must not start here (its group was taken over by another site), if it must not. */
  fencedBy?: (vm: string) => string | undefined;
  /** Policies, as storage needs them: where a new volume goes, declared capabilities, adopting a volume. */
  policy?: PolicyHooks;
  /** Pools of out-of-process storage providers: their registrations. */
  providerPools?: ProviderPools;
}

export interface PolicyHooks {
  /** The pool for a new volume (by the policy named or that of the VM it is for); refuses one that does not satisfy it. */
  place(req: { pool?: string; policy?: string; vm?: string; needBytes?: number }): string;
  /** A volume created under a policy gets it assigned. */
  adopt(actor: Actor, volume: string, policy: string): void;
  /** Operator-declared capabilities of a pool: replaced, or forgotten with the pool. */
  declare(pool: string, capabilities: string[]): void;
  forget(pool: string): void;
  /** A deleted VM or volume loses its policy. */
  forgetObject(kind: 'vm' | 'volume', name: string): void;
  /** Everything a pool advertises (its provider's and the declared). */
  advertised(pool: string): CapabilitySet;
}

/**
 * One domain of a site (volumes, backups, VMs): its operations over the shared parts, each
 * change audited in the event log. The Site is a thin facade holding one of each.
 */
export abstract class SiteDomain {
  protected readonly storage: StorageService;
  protected readonly exports: StorageExports;
  protected readonly jobs: JobManager;
  protected readonly events: EventLog;
  protected readonly compute: ComputeService;
  private readonly replicatedBy: SiteParts['replicatedBy'];
  protected readonly fencedBy: SiteParts['fencedBy'];
  protected readonly policy: PolicyHooks | undefined;
  protected readonly providerPools: ProviderPools | undefined;

  constructor(parts: SiteParts) {
    this.storage = parts.storage;
    this.exports = parts.exports;
    this.jobs = parts.jobs;
    this.events = parts.events;
    this.compute = parts.compute;
    this.replicatedBy = parts.replicatedBy;
    this.fencedBy = parts.fencedBy;
    this.policy = parts.policy;
    this.providerPools = parts.providerPools;
  }

  /** Refuses to delete (resize, revert) a volume or VM that a replication group holds: the replica would not follow. */
  protected refuseIfReplicated(kind: 'volume' | 'vm', name: string): void {
    const group = this.replicatedBy?.(kind, name);
    if (group)
      throw conflict(
        `${kind === 'vm' ? 'VM' : 'volume'} ${name} is in replication group ${group}: disable the group first (haven replication disable ${group})`,
      );
  }

  protected audited<T>(
    actor: Actor,
    action: string,
    target: string,
    fn: () => T,
    describe?: (r: T) => string,
  ): T {
    try {
      const r = fn();
      this.auditOk(actor, action, target, describe?.(r));
      return r;
    } catch (err) {
      if (!(err instanceof HavenError) || err.code !== 'IO') this.auditFailed(actor, action, target, err);
      throw err;
    }
  }

  /** `audited` for an operation that waits (on a storage provider): the event is recorded once it ended. */
  protected async auditedAsync<T>(
    actor: Actor,
    action: string,
    target: string,
    fn: () => Promise<T>,
    describe?: (r: T) => string,
  ): Promise<T> {
    let r: T;
    try {
      r = await fn();
    } catch (err) {
      this.auditFailed(actor, action, target, err);
      throw err;
    }
    this.auditOk(actor, action, target, describe?.(r));
    return r;
  }

  private auditOk(actor: Actor, action: string, target: string, message: string | undefined): void {
    this.events.append({ actor, action, target, outcome: 'ok', message: message ?? `${action} ${target}` });
  }

  /** The audit event of an operation refused or failed for a reason it names (not an internal error). */
  protected auditFailed(actor: Actor, action: string, target: string, err: unknown): void {
    if (err instanceof HavenError && err.code !== 'INTERNAL')
      this.events.append({
        actor,
        action,
        target,
        outcome: 'failed',
        message: `${action} ${target}: ${err.message}`,
      });
  }

  protected refuseIfRunning(volume: string, what: string): void {
    const user = this.compute
      .usersOf(volume)
      .find((v) => v.state !== 'stopped' && v.state !== 'defined' && v.state !== 'crashed');
    if (user) throw conflict(`cannot ${what} volume ${volume}: VM ${user.name} is ${user.state}`);
  }
}
