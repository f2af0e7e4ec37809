import { conflict, errorMessage, logger, notFound } from '../../common/index.js';
import { REPLICA_LABEL, type StorageExports, type StorageService } from '../../storage/index.js';
import type { ComputeService } from './compute.js';
import { now } from './database.js';
import type { EventLog } from './events.js';
import type { LinkPeer, PeerLinks } from './peer-links.js';
import type {
  GroupRow,
  RecoveredCheckpoint,
  ReplicationGroups,
  SourceConfig,
  TargetConfig,
} from './replication-groups.js';
import type { CheckpointAnswer, SourceRunner, TargetRunner } from './replication-runners.js';

const log = logger('replication');

/** What promotion and fencing need of the site's replication. */
export interface FailoverHost {
  readonly groups: ReplicationGroups;
  readonly storage: StorageService;
  readonly exports: StorageExports;
  readonly compute: ComputeService;
  readonly events: EventLog;
  readonly links: PeerLinks;
  targetRunner(name: string): TargetRunner | undefined;
  sourceRunner(name: string): SourceRunner | undefined;
  stopRunner(name: string): Promise<void>;
}

/** What the target tells a source that asks about its group (`replication.role`). */
export interface RoleAnswer {
  group: string;
  takenOver?: { at: string; checkpoint: number };
}

/** The checkpoint a takeover recovers: the newest, or one named by its sequence number or name. */
export function pickCheckpoint(group: string, history: CheckpointAnswer[], which?: string): CheckpointAnswer {
  if (!history.length)
    throw conflict(
      `replication group ${group} has no checkpoint at this site yet (the initial sync has not completed): there is nothing consistent to recover`,
    );
  if (which === undefined || which === 'newest') return history.at(-1)!;
  const found = /^\d+$/.test(which)
    ? history.find((c) => c.seq === Number(which))
    : [...history].reverse().find((c) => c.name === which);
  if (!found)
    throw notFound(
      `replication group ${group} holds no checkpoint ${which}: it holds ${history.length}, from ${history[0]!.seq} (${history[0]!.time}) to ${history.at(-1)!.seq} (${history.at(-1)!.time})`,
    );
  return found;
}

/**
 * Promotion at the target (a takeover): the group's gateway stops for good, and the replica
 * volumes become the site's own at the chosen checkpoint. The choice is written first, so that a
 * crash halfway goes on where it was at the next start (`finishPromotions`) and never restarts
 * the applier over volumes being reverted; reverting to a checkpoint's snapshot is idempotent.
 */
export async function promote(host: FailoverHost, name: string, cp: CheckpointAnswer): Promise<TargetConfig> {
  const g = host.groups.get(name);
  if (g.role !== 'target') throw conflict(`replication group ${name} is not replicated to this site`);
  if (g.config.takenOver)
    throw conflict(`replication group ${name} was taken over at ${g.config.takenOver.at}`);
  await host.stopRunner(name);
  const checkpoint: RecoveredCheckpoint = { ...cp };
  const config: TargetConfig = { ...g.config, takenOver: { at: now(), checkpoint } };
  host.groups.setConfig(name, config);
  finishPromotion(host, name, config);
  return config;
}

/** Reverts the replicas to the promoted checkpoint and makes them ordinary volumes (again, after a crash). */
function finishPromotion(host: FailoverHost, name: string, config: TargetConfig): void {
  const cp = config.takenOver!.checkpoint;
  for (const v of config.volumes) {
    if (host.storage.volumeLabels(v)[REPLICA_LABEL] === undefined) continue; // done before a crash
    host.storage.revert(v, cp.snapshot);
    host.storage.setVolumeLabel(v, REPLICA_LABEL, undefined);
  }
  host.exports.refresh();
}

/** At start: promotions a crash interrupted are finished (their gateways are not started). */
export function finishPromotions(host: FailoverHost, groups: GroupRow[]): void {
  for (const g of groups)
    if (g.role === 'target' && g.config.takenOver) finishPromotion(host, g.name, g.config);
}

/** The target's answer to `replication.role` from the group's source site. */
export function roleOf(host: FailoverHost, peer: LinkPeer, group: string): RoleAnswer {
  const g = host.groups.find(group);
  if (!g || g.role !== 'target' || g.peer !== peer.name)
    throw notFound(`this site holds no replica of group ${group} for site ${peer.name}`);
  const t = g.config.takenOver;
  return { group, ...(t ? { takenOver: { at: t.at, checkpoint: t.checkpoint.seq } } : {}) };
}

/**
 * Fencing at a source site: while a group's link is down (and at start), the source asks the
 * target whether it took the group over. If it did, this site stops shipping and stops the
 * group's VMs, and refuses to start them (`fencedGroupOfVm`), so that the group never runs at
 * two sites at once — the first thing a site that comes back after a disaster does.
 */
export class FenceWatch {
  private readonly timer: NodeJS.Timeout;
  private checking = false;

  constructor(
    private readonly host: FailoverHost,
    intervalMs = 5000,
  ) {
    this.timer = setInterval(() => void this.checkAll(), intervalMs).unref();
  }

  /** Asks the targets of source groups whose link is down; resolves once every answer is in. */
  async checkAll(): Promise<void> {
    if (this.checking) return;
    this.checking = true;
    try {
      for (const g of this.host.groups.list()) {
        if (g.role !== 'source' || g.config.fenced) continue;
        const runner = this.host.sourceRunner(g.name);
        if (runner && runner.gateway.status().link === 'up') continue;
        let answer: RoleAnswer;
        try {
          answer = (await this.host.links.call(
            g.peer,
            'replication.role',
            { group: g.name },
            { timeoutMs: 3000 },
          )) as RoleAnswer;
        } catch {
          continue; // unreachable: nothing learnt; the VMs go on as they are
        }
        if (answer?.takenOver) await this.fence(g.name, g.peer, g.config, answer.takenOver);
      }
    } finally {
      this.checking = false;
    }
  }

  close(): void {
    clearInterval(this.timer);
  }

  /** Fences group `name` (its target `peer` took it over): see the class. */
  async fence(
    name: string,
    peer: string,
    config: SourceConfig,
    takenOver: NonNullable<RoleAnswer['takenOver']>,
  ): Promise<void> {
    await this.host.stopRunner(name);
    const g = this.host.groups.find(name);
    if (g?.role === 'source') config = g.config; // the newest record
    this.host.groups.setConfig(name, {
      ...config,
      fenced: { at: now(), by: peer, takenOverAt: takenOver.at, checkpoint: takenOver.checkpoint },
    });
    const stopped: string[] = [];
    for (const vm of config.vms) {
      const state = this.host.compute.listVms().find((v) => v.name === vm)?.state;
      if (state !== 'running') continue;
      try {
        await this.host.compute.stop(vm, { force: true });
        stopped.push(vm);
      } catch (err) {
        log.error({ group: name, vm, err: errorMessage(err) }, 'a fenced VM could not be stopped');
      }
    }
    log.warn({ group: name, peer, stopped }, 'replication group taken over by its target: fenced');
    this.host.events.append({
      actor: 'system',
      action: 'replication.fenced',
      target: name,
      outcome: 'warning',
      message: `replication group ${name} was taken over by site ${peer} at ${takenOver.at} (checkpoint ${takenOver.checkpoint}): its VMs ${config.vms.join(', ')} stay stopped here${stopped.length ? ` (stopped now: ${stopped.join(', ')})` : ''}`,
    });
  }
}
