import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { HavenError, conflict, errorMessage, invalidArgument, logger, notFound } from '../../common/index.js';
import { REPLICA_LABEL, checkName } from '../../storage/index.js';
import type { Db } from './database.js';
import { now } from './database.js';
import { SiteDomain, type Actor, type SiteParts } from './domain.js';
import type { LinkPeer, PeerLinks } from './peer-links.js';
import {
  ReplicationGroups,
  type GroupRow,
  type RecoveredCheckpoint,
  type RehearsalRecord,
  type ReplicatedVm,
  type SourceConfig,
  type TargetConfig,
} from './replication-groups.js';
import {
  FenceWatch,
  finishPromotions,
  pickCheckpoint,
  promote,
  roleOf,
  type FailoverHost,
} from './replication-failover.js';
import { ResiliencyGroupStore } from './resiliency-groups.js';
import { describeVm, replicatedVms } from './replicated-vms.js';
import type { Job } from './jobs.js';
import {
  SourceRunner,
  TargetRunner,
  checksumArgs,
  type CheckpointAnswer,
  type SourceGroupStatus,
  type TargetGroupStatus,
} from './replication-runners.js';

const log = logger('replication');

export interface EnableReplicationRequest {
  group: string;
  /** The VMs; left out, those of the resiliency group of that name. */
  vms?: string[];
  /** The paired site holding the replica. */
  to: string;
  /** The pool of that site for the replica volumes. */
  pool: string;
  rpoSeconds?: number;
  checkpointSeconds?: number;
  keepSeconds?: number;
  sync?: boolean;
  compress?: boolean;
  bytesPerSecond?: number;
  journalBytes?: number;
  /**
   * The target site holds a copy already: volumes of the source volumes' names on `pool` (a
   * restored backup, say). They become the replicas and the initial sync sends only the extents
   * whose checksums differ.
   */
  seeded?: boolean;
}

/** A replication group as the API shows it, from either side. */
export interface ReplicationGroupAnswer {
  name: string;
  role: 'source' | 'target';
  /** The other site. */
  peer: string;
  vms?: string[];
  volumes: { source: string; replica: string }[];
  pool: string;
  rpoObjectiveSeconds?: number;
  checkpointSeconds?: number;
  keepSeconds: number;
  sync?: boolean;
  compress?: boolean;
  bytesPerSecond?: number;
  journalBytes: number;
  seeded?: boolean;
  paused: boolean;
  createdAt: string;
  /** At the target: this site took the group over (its replicas are its own VMs' disks now). */
  takenOver?: { at: string; checkpoint: RecoveredCheckpoint };
  /** At the source: the target took the group over; its VMs stay stopped here. */
  fenced?: NonNullable<SourceConfig['fenced']>;
  source?: SourceGroupStatus;
  target?: TargetGroupStatus;
}

const DEFAULTS = {
  rpoSeconds: 15,
  keepSeconds: 3600,
  journalBytes: 256 * 1024 * 1024,
};
/** Checkpoints come often enough that the RPO holds with room to spare. */
const checkpointFor = (rpoSeconds: number) => Math.max(1, Math.min(5, Math.floor(rpoSeconds / 3)));

/** What the source asks the target to make ready (RPC replication.prepare). */
interface PrepareArgs {
  group: string;
  pool: string;
  keepSeconds: number;
  journalBytes: number;
  volumes: { name: string; size: number; allocatedBytes: number }[];
  /** Use the target's volumes of these names (a restored copy) as the replicas. */
  seeded?: boolean;
  /** A resync after a takeover: the target is the group's old, fenced source; its volumes become the replicas. */
  reverse?: boolean;
  /** The group's VMs (what a takeover defines and starts at the target). */
  vms?: ReplicatedVm[];
}

/**
 * Continuous replication of consistency groups between paired sites (issue 15, decision 0012):
 * the source side of groups whose VMs run here, the target side of groups replicated here. The
 * configuration is in the site database and the gateways' state in DATA/replication/GROUP, so
 * both sides go on by themselves after a restart. Between the sites there are only the peer
 * links (mutual TLS with pinned certificates): a `replication` channel per group for the journal,
 * and calls (`replication.prepare`, …) for what the source asks of the target.
 */
export class SiteReplication extends SiteDomain {
  private readonly groups: ReplicationGroups;
  private readonly sources = new Map<string, SourceRunner>();
  private readonly targets = new Map<string, TargetRunner>();
  /** VMs of enables under way (they wait for the target): not in two groups at once. */
  private readonly enabling = new Set<string>();
  private readonly failover: FailoverHost;
  private readonly fences: FenceWatch;

  constructor(
    parts: SiteParts,
    db: Db,
    private readonly links: PeerLinks,
    private readonly dataDir: string,
    private readonly siteName: string,
    /** The operator's resiliency groups: a group replicates their VMs, a VM is in one. */
    readonly resiliency: ResiliencyGroupStore = new ResiliencyGroupStore(db),
  ) {
    super(parts);
    this.groups = new ReplicationGroups(db, (name) => this.resiliency.find(name) !== undefined);
    links.onChannel('replication', (socket, peer, open) => {
      const group = typeof open.group === 'string' ? open.group : '';
      const runner = this.targets.get(group);
      if (!runner || runner.peer !== peer.name) {
        log.warn({ group, peer: peer.name }, 'replication link for a group this site is not the target of');
        socket.destroy();
        return;
      }
      runner.accept(socket);
    });
    links.handle('replication.prepare', (peer, args) => this.prepare(peer, args));
    links.handle('replication.disable', (peer, args) => this.disableTarget(peer, groupArg(args)));
    links.handle('replication.checkpoints', async (peer, args) =>
      this.ownTarget(peer, groupArg(args)).checkpoints(),
    );
    links.handle('replication.checksums', (peer, args) =>
      this.ownTarget(peer, groupArg(args)).gateway.checksums(checksumArgs(args)),
    );
    links.handle('replication.describe', async (peer, args) => this.described(peer, args));
    links.handle('replication.role', async (peer, args) => roleOf(this.failover, peer, groupArg(args)));
    this.failover = {
      groups: this.groups,
      storage: this.storage,
      exports: this.exports,
      compute: this.compute,
      events: this.events,
      links,
      targetRunner: (n) => this.targets.get(n),
      sourceRunner: (n) => this.sources.get(n),
      stopRunner: (n) => this.stop(n),
    };
    this.fences = new FenceWatch(this.failover);
    // A replicated VM's recovery settings changed: its target must hold them before a takeover.
    this.events.on('event', (e: { action: string; target: string; outcome: string }) => {
      if (e.action !== 'vm.recovery' || e.outcome !== 'ok') return;
      const g = this.sourceGroupOfVm(e.target);
      if (g) void this.describe(g);
    });
  }

  /** Starts every group's gateway (at site start). */
  startAll(): void {
    // A takeover that a crash interrupted is finished before anything else touches its volumes.
    finishPromotions(this.failover, this.groups.list());
    for (const g of this.groups.list()) {
      if (g.role === 'target' ? g.config.takenOver : g.config.fenced) continue; // never to run again
      try {
        this.run(g);
        // The target learns the VMs as they are now (for a takeover); best effort, told again at the next start.
        if (g.role === 'source') void this.describe(g);
      } catch (err) {
        log.error({ group: g.name, err: errorMessage(err) }, 'replication group could not start');
        this.events.append({
          actor: 'system',
          action: 'replication.start',
          target: g.name,
          outcome: 'failed',
          message: `replication group ${g.name} could not start: ${errorMessage(err)}`,
        });
      }
    }
    // A site that comes back after its groups were taken over learns it before its VMs start.
    void this.fences.checkAll();
  }

  /** Whether a group of that name is at this site (either side). */
  hasGroup(name: string): boolean {
    return this.groups.find(name) !== undefined;
  }

  list(): ReplicationGroupAnswer[] {
    return this.groups.list().map((g) => this.answer(g));
  }

  /** The group whose takeover fenced this VM here, if any (such a VM is not started). */
  fencedGroupOfVm(vm: string): { group: string; by: string; at: string } | undefined {
    for (const g of this.groups.list())
      if (g.role === 'source' && g.config.fenced && g.config.vms.includes(vm))
        return { group: g.name, by: g.config.fenced.by, at: g.config.fenced.takenOverAt };
    return undefined;
  }

  /** Asks every source group's target whether it took the group over (fencing); tests call it to not wait. */
  checkFences(): Promise<void> {
    return this.fences.checkAll();
  }

  /** A group replicated to this site, as a takeover needs it (its VMs, volumes and checkpoints). */
  replicaOf(name: string): { peer: string; config: TargetConfig; checkpoints: CheckpointAnswer[] } {
    const g = this.groups.get(name);
    if (g.role !== 'target')
      throw conflict(
        `replication group ${name} is replicated from this site to ${g.peer}: a takeover is run at the site holding the replica`,
      );
    if (g.config.takenOver)
      throw conflict(
        `replication group ${name} was taken over already, at ${g.config.takenOver.at} (checkpoint ${g.config.takenOver.checkpoint.seq})`,
      );
    if (g.config.rehearsal)
      throw conflict(
        `replication group ${name} has a rehearsal running since ${g.config.rehearsal.startedAt}: clean it up first (haven dr cleanup ${name})`,
      );
    const runner = this.targets.get(name);
    return { peer: g.peer, config: g.config, checkpoints: runner ? runner.checkpoints() : [] };
  }

  /** The chosen checkpoint (newest, a sequence number or a name) of a group replicated here. */
  checkpointOf(name: string, which?: string): CheckpointAnswer {
    return pickCheckpoint(name, this.replicaOf(name).checkpoints, which);
  }

  /** Refuses a resync of a group that this site did not take over; the group's target side. */
  checkReversible(name: string) {
    const g = this.groups.get(name);
    if (g.role !== 'target' || !g.config.takenOver)
      throw conflict(
        `replication group ${name} was not taken over by this site: a resync replicates a taken-over group back to its old source`,
      );
    return g;
  }

  /**
   * Resync after a takeover: the group, taken over here, replicates back to its old source,
   * which holds a diverged copy; only what differs is sent (a seeded, checksum-compared sync).
   */
  async reverse(
    actor: Actor,
    name: string,
    opts: Pick<EnableReplicationRequest, 'rpoSeconds' | 'checkpointSeconds' | 'bytesPerSecond'> = {},
  ): Promise<ReplicationGroupAnswer> {
    const g = this.checkReversible(name);
    const vms = (g.config.vms ?? []).map((v) => v.name);
    return this.enable(
      actor,
      {
        group: name,
        vms,
        to: g.peer,
        pool: g.config.pool,
        keepSeconds: g.config.keepSeconds,
        journalBytes: g.config.journalBytes,
        seeded: true,
        ...opts,
      },
      { reverse: true },
    );
  }

  /** A group replicated from this site, as a migrate needs it: its config and running gateway. */
  sourceOf(name: string): { peer: string; config: SourceConfig; runner: SourceRunner } {
    const g = this.groups.get(name);
    if (g.role !== 'source')
      throw conflict(
        `replication group ${name} is replicated to this site from ${g.peer}: migrate it from there`,
      );
    if (g.config.fenced)
      throw conflict(`replication group ${name} was taken over by site ${g.config.fenced.by}: it runs there`);
    return { peer: g.peer, config: g.config, runner: this.source(name) };
  }

  /** A planned switch: this site gave the group to its target, which promoted `checkpoint`. */
  fenceForMigrate(name: string, checkpoint: number): Promise<void> {
    const g = this.groups.get(name);
    if (g.role !== 'source') throw conflict(`replication group ${name} is not replicated from this site`);
    return this.fences.fence(name, g.peer, g.config, { at: now(), checkpoint });
  }

  /** Records (or, with undefined, forgets) the rehearsal of a group replicated here. */
  setRehearsal(name: string, rehearsal: RehearsalRecord | undefined): void {
    const g = this.groups.get(name);
    if (g.role !== 'target') throw conflict(`replication group ${name} is not replicated to this site`);
    const { rehearsal: _old, ...rest } = g.config;
    this.groups.setConfig(name, rehearsal ? { ...rest, rehearsal } : rest);
  }

  /** The rehearsal of a group replicated here, if one was made and not cleaned up. */
  rehearsalOf(name: string): RehearsalRecord | undefined {
    const g = this.groups.get(name);
    return g.role === 'target' ? g.config.rehearsal : undefined;
  }

  /** Promotes the replica of a group at `cp` (a takeover): see replication-failover.ts. */
  promote(name: string, cp: CheckpointAnswer): Promise<TargetConfig> {
    return promote(this.failover, name, cp);
  }

  show(name: string): ReplicationGroupAnswer {
    return this.answer(this.groups.get(name));
  }

  /** The group a volume belongs to (either side), if any: such a volume is not deleted. */
  groupOf(volume: string): string | undefined {
    for (const g of this.groups.list())
      if (g.role === 'source' ? g.config.volumes.includes(volume) : g.config.volumes.includes(volume))
        return g.name;
    return undefined;
  }

  /** The group a VM is replicated by, if any. */
  groupOfVm(vm: string): string | undefined {
    return this.sourceGroupOfVm(vm)?.name;
  }

  private sourceGroupOfVm(vm: string): GroupRow | undefined {
    return this.groups.list().find((g) => g.role === 'source' && g.config.vms.includes(vm));
  }

  /** Replicates the VMs' disks as one consistency group to a paired site (the target makes its replicas first). */
  async enable(
    actor: Actor,
    req: EnableReplicationRequest,
    /** Resync after a takeover (`reverse`): the taken-over record of the group is replaced. */
    internal: { reverse?: boolean } = {},
  ): Promise<ReplicationGroupAnswer> {
    let config: SourceConfig | undefined;
    try {
      config = this.checkEnable(req, internal.reverse ? req.group : undefined);
      for (const vm of config.vms) this.enabling.add(vm);
      const prepare: PrepareArgs = {
        ...(config.seeded ? { seeded: true } : {}),
        ...(internal.reverse ? { reverse: true } : {}),
        vms: config.vms.map((v) => describeVm(this.compute.vm(v))),
        group: req.group,
        pool: req.pool,
        keepSeconds: config.keepSeconds,
        journalBytes: config.journalBytes,
        volumes: config.volumes.map((v) => {
          const info = this.storage.volume(v);
          return { name: v, size: info.size, allocatedBytes: info.allocatedBytes };
        }),
      };
      const made = (await this.links.call(req.to, 'replication.prepare', prepare)) as {
        volumes: string[];
        pool?: string;
      };
      config.replicas = made.volumes;
      if (made.pool) config.pool = made.pool; // a reverse keeps the volumes where they are
      if (internal.reverse) {
        rmSync(join(this.dataDir, 'replication', req.group), { recursive: true, force: true });
        this.groups.delete(req.group); // the taken-over record: this site is the source now
      }
      const row: GroupRow = {
        name: req.group,
        role: 'source',
        peer: req.to,
        config,
        paused: false,
        createdAt: now(),
      };
      this.groups.insert(row);
      // Replicating VMs makes them a resiliency group, if the operator had not defined it.
      if (!this.resiliency.find(req.group)) this.resiliency.create(req.group, config.vms);
      this.run(row);
      this.events.append({
        actor,
        action: 'replication.enable',
        target: req.group,
        outcome: 'ok',
        message: `replication group ${req.group}: VM(s) ${config.vms.join(', ')} (${config.volumes.length} volume(s)) to site ${req.to}, pool ${req.pool}${config.sync ? ', synchronous' : ''}`,
      });
      return this.answer(row);
    } catch (err) {
      this.auditFailed(actor, 'replication.enable', req.group, err);
      throw err;
    } finally {
      for (const vm of config?.vms ?? []) this.enabling.delete(vm);
    }
  }

  /** Stops replicating. At the target the replica volumes stay, with their checkpoints. */
  async disable(actor: Actor, name: string): Promise<{ group: string; target?: string }> {
    const g = this.groups.get(name);
    let targetNote: string | undefined;
    if (g.role === 'source') {
      await this.stop(name);
      try {
        await this.links.call(g.peer, 'replication.disable', { group: name });
      } catch (err) {
        // The source stops regardless: the target's side goes with its own `disable`.
        targetNote = `site ${g.peer} was not told (${errorMessage(err)}); disable the group there too`;
      }
    } else await this.stop(name);
    rmSync(join(this.dataDir, 'replication', name), { recursive: true, force: true });
    this.groups.delete(name);
    this.events.append({
      actor,
      action: 'replication.disable',
      target: name,
      outcome: targetNote ? 'warning' : 'ok',
      message: `replication group ${name} disabled${
        g.role === 'target' ? `; replica volumes ${g.config.volumes.join(', ')} kept` : ''
      }${targetNote ? `; ${targetNote}` : ''}`,
    });
    return { group: name, ...(targetNote ? { target: targetNote } : {}) };
  }

  pause(actor: Actor, name: string): ReplicationGroupAnswer {
    return this.audited(actor, 'replication.pause', name, () => {
      this.source(name).gateway.pause();
      this.groups.setPaused(name, true);
      return this.show(name);
    });
  }

  resume(actor: Actor, name: string): ReplicationGroupAnswer {
    return this.audited(actor, 'replication.resume', name, () => {
      this.source(name).gateway.resume();
      this.groups.setPaused(name, false);
      return this.show(name);
    });
  }

  /** Changes the link's bandwidth limit while it runs (0: unlimited). */
  setLimit(actor: Actor, name: string, bytesPerSecond: number): ReplicationGroupAnswer {
    return this.audited(actor, 'replication.limit', name, () => {
      if (!Number.isSafeInteger(bytesPerSecond) || bytesPerSecond < 0)
        throw invalidArgument(`bandwidth limit ${bytesPerSecond} is not a whole number of bytes per second`);
      const runner = this.source(name);
      runner.gateway.setLimit(bytesPerSecond);
      this.groups.setConfig(name, { ...runner.config, bytesPerSecond });
      runner.config.bytesPerSecond = bytesPerSecond;
      return this.show(name);
    });
  }

  /** Marks a group-wide consistent point now (named, e.g. "before-upgrade"). */
  checkpoint(actor: Actor, name: string, label?: string): { group: string; seq: number; name?: string } {
    return this.audited(
      actor,
      'replication.checkpoint',
      name,
      () => {
        if (label !== undefined && !/^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$/.test(label))
          throw invalidArgument(
            `checkpoint name "${label}": use 1-64 letters, digits, '.', '_', ':' or '-', starting with a letter or digit`,
          );
        const runner = this.source(name);
        const seq = runner.gateway.checkpoint(label);
        if (seq === undefined)
          throw conflict(
            `replication group ${name} is ${runner.gateway.status().mode}: no consistent point to mark until it is replicating`,
          );
        return { group: name, seq, ...(label ? { name: label } : {}) };
      },
      (r) => `replication group ${name}: checkpoint ${r.name ?? r.seq} taken`,
    );
  }

  /**
   * Verify (decision 0014) as a job: the replica compared with the source at a checkpoint, SHA-256
   * per extent on both sides. Differences fail the job (CORRUPT, naming the ranges) unless
   * `repair` resends them through the journal; a repair is checked by a second verify after it.
   */
  verify(actor: Actor, name: string, opts: { repair?: boolean } = {}): Job {
    const runner = this.source(name);
    return this.jobs.start({ kind: 'replication.verify', target: name, actor }, async (ctx) => {
      ctx.progress(0, 0, opts.repair ? 'verify and repair' : 'verify');
      const report = await runner.gateway.verify(opts.repair ? { repair: true, recheck: true } : {});
      const ranges = report.differences.map(
        (d) => `${d.name ?? `volume ${d.volume}`} at ${d.offset} (${d.length} bytes)`,
      );
      for (const r of ranges) ctx.log(`DIFFERS ${r}`, opts.repair ? 'warning' : 'error');
      const left = report.recheck?.differences.length ?? report.differences.length;
      if (report.repair?.skipped) ctx.log(`repair skipped: ${report.repair.skipped}`, 'error');
      if (left && (!opts.repair || report.repair?.skipped || report.recheck))
        throw new HavenError(
          'CORRUPT',
          `replication group ${name}: the replica differs from the source at checkpoint ${report.checkpoint} in ${report.differences.length} range(s): ${ranges.slice(0, 8).join(', ')}${ranges.length > 8 ? ', …' : ''}${opts.repair ? (report.repair?.skipped ? `; not repaired: ${report.repair.skipped}` : '; still after the repair') : '; repair with --repair'}`,
        );
      return report;
    });
  }

  /** The checkpoints the replica holds (any of them can be recovered), oldest first. */
  async checkpoints(name: string): Promise<CheckpointAnswer[]> {
    const g = this.groups.get(name);
    if (g.role === 'target') return this.target(name).checkpoints();
    return (await this.links.call(g.peer, 'replication.checkpoints', { group: name })) as CheckpointAnswer[];
  }

  async close(): Promise<void> {
    this.fences.close();
    for (const name of [...this.sources.keys(), ...this.targets.keys()]) await this.stop(name);
  }

  private checkEnable(req: EnableReplicationRequest, replacing?: string): SourceConfig {
    checkName('replication group', req.group);
    if (replacing === undefined && this.groups.find(req.group))
      throw conflict(`replication group ${req.group} exists already`);
    this.links.get(req.to); // a paired site, or NOT_FOUND naming it
    const vms = this.vmsToReplicate(req, replacing !== undefined);
    const volumes: string[] = [];
    for (const name of vms) {
      const vm = this.compute.vm(name); // NOT_FOUND for an unknown VM
      if (this.enabling.has(name)) throw conflict(`VM ${name} is being added to another replication group`);
      const other = this.groupOfVm(name);
      if (other && other !== replacing) throw conflict(`VM ${name} is replicated by group ${other} already`);
      for (const d of vm.disks) {
        if (d.readOnly || volumes.includes(d.volume)) continue;
        const inGroup = this.groupOf(d.volume);
        if (inGroup && inGroup !== replacing)
          throw conflict(`volume ${d.volume} of VM ${name} is in replication group ${inGroup} already`);
        volumes.push(d.volume);
      }
    }
    if (!volumes.length) throw invalidArgument(`VM(s) ${vms.join(', ')} have no writable disk to replicate`);
    const rpoSeconds = positive('RPO', req.rpoSeconds ?? DEFAULTS.rpoSeconds);
    const checkpointSeconds = positive(
      'checkpoint interval',
      req.checkpointSeconds ?? checkpointFor(rpoSeconds),
    );
    if (checkpointSeconds > rpoSeconds)
      throw invalidArgument(
        `a checkpoint every ${checkpointSeconds} s cannot meet an RPO of ${rpoSeconds} s: take them more often`,
      );
    const bytesPerSecond = req.bytesPerSecond ?? 0;
    if (!Number.isSafeInteger(bytesPerSecond) || bytesPerSecond < 0)
      throw invalidArgument(`bandwidth limit ${bytesPerSecond} is not a whole number of bytes per second`);
    const journalBytes = req.journalBytes ?? DEFAULTS.journalBytes;
    if (!Number.isSafeInteger(journalBytes) || journalBytes < 1024 * 1024)
      throw invalidArgument(`journal size ${journalBytes}: at least 1 MiB`);
    return {
      vms,
      volumes,
      replicas: [],
      pool: req.pool,
      rpoSeconds,
      checkpointSeconds,
      keepSeconds: positive('checkpoint history', req.keepSeconds ?? DEFAULTS.keepSeconds),
      sync: req.sync ?? false,
      compress: req.compress ?? true,
      bytesPerSecond,
      journalBytes,
      ...(req.seeded ? { seeded: true } : {}),
    };
  }

  /**
   * The VMs a group replicates: those of the resiliency group of its name when there is one (the
   * request may leave them out, or must name exactly those); none in another resiliency group.
   */
  private vmsToReplicate(req: EnableReplicationRequest, replacing: boolean): string[] {
    const defined = this.resiliency.find(req.group);
    const asked = [...new Set(req.vms ?? [])];
    if (defined && !replacing) {
      if (!defined.vms.length)
        throw invalidArgument(
          `group ${req.group} has no VMs yet: add them first (haven group add ${req.group} VM…)`,
        );
      if (asked.length && asked.slice().sort().join(',') !== defined.vms.slice().sort().join(','))
        throw invalidArgument(
          `group ${req.group} holds VM(s) ${defined.vms.join(', ')}: replicate exactly those (leave the VMs out), or change the group first (haven group add|remove)`,
        );
      return defined.vms;
    }
    if (!asked.length)
      throw invalidArgument(
        `a replication group needs at least one VM: name them, or define group ${req.group} first (haven group create ${req.group} --vm …)`,
      );
    for (const vm of asked) {
      const other = this.resiliency.groupOfVm(vm);
      if (other && other !== req.group)
        throw conflict(
          `VM ${vm} is in group ${other}: a VM belongs to at most one group (replicate ${other} instead)`,
        );
    }
    return asked;
  }

  /** The target side: makes the replica volumes and starts taking the source's journal. */
  private async prepare(peer: LinkPeer, raw: unknown): Promise<{ volumes: string[] }> {
    const args = prepareArgs(raw);
    const existing = this.groups.find(args.group);
    if (args.reverse) return this.prepareReverse(peer, args, existing);
    if (existing) {
      // The source asking again (it crashed before it stored the group): the same answer.
      if (
        existing.role === 'target' &&
        existing.peer === peer.name &&
        existing.config.sourceVolumes.join('\n') === args.volumes.map((v) => v.name).join('\n')
      )
        return { volumes: existing.config.volumes };
      throw conflict(`replication group ${args.group} exists already at site ${this.siteName}`);
    }
    const pool = this.storage.pool(args.pool).info(); // NOT_FOUND names the pool
    if (args.seeded) return this.prepareSeeded(peer, args);
    for (const v of args.volumes)
      if (this.storage.listVolumes().some((x) => x.name === v.name))
        throw conflict(
          `volume ${v.name} exists already at site ${this.siteName}: no replica can take its name`,
        );
    const needed = args.volumes.reduce((n, v) => n + v.allocatedBytes, 0);
    if (needed > pool.freeBytes)
      throw new HavenError(
        'NO_SPACE',
        `pool ${args.pool} at site ${this.siteName} has ${pool.freeBytes} bytes free; the replicas need ${needed}`,
      );
    const made: string[] = [];
    try {
      for (const v of args.volumes) {
        this.storage.createVolume(v.name, v.size, args.pool, {
          [REPLICA_LABEL]: `${peer.name}/${args.group}`,
        });
        made.push(v.name);
      }
      const config: TargetConfig = {
        sourceVolumes: args.volumes.map((v) => v.name),
        volumes: made,
        pool: args.pool,
        keepSeconds: args.keepSeconds,
        journalBytes: args.journalBytes,
        ...(args.vms ? { vms: args.vms } : {}),
      };
      this.startTarget(peer, args, config);
    } catch (err) {
      for (const v of made) this.storage.deleteVolume(v);
      throw err;
    }
    this.exports.refresh();
    this.events.append({
      actor: `site:${peer.name}`,
      action: 'replication.target',
      target: args.group,
      outcome: 'ok',
      message: `replication group ${args.group} from site ${peer.name}: replica volume(s) ${made.join(', ')} on pool ${args.pool}`,
    });
    return { volumes: made };
  }

  /**
   * A seeded target: the volumes of the source's names on the pool (restored from a backup, say)
   * become the replicas as they are, withdrawn from NBD clients; the source's initial sync then
   * sends only the extents whose checksums differ. Each must be the source volume's size and
   * nobody's disk, and no replica already.
   */
  private prepareSeeded(peer: LinkPeer, args: PrepareArgs): { volumes: string[] } {
    const labelled: string[] = [];
    for (const v of args.volumes) {
      const info = this.storage.listVolumes().find((x) => x.name === v.name);
      const where = `at site ${this.siteName}`;
      if (!info)
        throw notFound(
          `a seeded replica needs volume ${v.name} ${where} (restore a backup of it onto pool ${args.pool} first)`,
        );
      if (info.pool !== args.pool)
        throw conflict(`volume ${v.name} ${where} is on pool ${info.pool}, not ${args.pool}`);
      if (info.size !== v.size)
        throw conflict(
          `volume ${v.name} ${where} has ${info.size} bytes; the source volume has ${v.size}: a seed must be the same size`,
        );
      if (info.labels[REPLICA_LABEL])
        throw conflict(`volume ${v.name} ${where} is a replica of ${info.labels[REPLICA_LABEL]} already`);
      const user = this.compute.listVms().find((vm) => vm.disks.some((d) => d.volume === v.name));
      if (user)
        throw conflict(`volume ${v.name} ${where} is a disk of VM ${user.name}: a replica is nobody's disk`);
    }
    try {
      for (const v of args.volumes) {
        this.storage.setVolumeLabel(v.name, REPLICA_LABEL, `${peer.name}/${args.group}`);
        labelled.push(v.name);
      }
      this.exports.refresh(); // replicas are not exported: NBD clients of the seed are cut off now
      const volumes = args.volumes.map((v) => v.name);
      this.startTarget(peer, args, {
        sourceVolumes: volumes,
        volumes,
        pool: args.pool,
        keepSeconds: args.keepSeconds,
        journalBytes: args.journalBytes,
        ...(args.vms ? { vms: args.vms } : {}),
      });
    } catch (err) {
      for (const v of labelled) this.storage.setVolumeLabel(v, REPLICA_LABEL, undefined);
      this.exports.refresh();
      throw err;
    }
    this.events.append({
      actor: `site:${peer.name}`,
      action: 'replication.target',
      target: args.group,
      outcome: 'ok',
      message: `replication group ${args.group} from site ${peer.name}: seeded replica volume(s) ${args.volumes.map((v) => v.name).join(', ')} on pool ${args.pool}`,
    });
    return { volumes: args.volumes.map((v) => v.name) };
  }

  /**
   * A resync asked by the site that took the group over: this site's own volumes of the group
   * (fenced, their VMs stopped) become the replicas as they are, and the new source sends only
   * the extents whose checksums differ — the union of both sides' changes since the takeover's
   * checkpoint. The fenced source record is replaced by a target one.
   */
  private prepareReverse(
    peer: LinkPeer,
    args: PrepareArgs,
    existing: GroupRow | undefined,
  ): { volumes: string[]; pool: string } {
    const g = existing;
    if (!g || g.role !== 'source' || g.peer !== peer.name || !g.config.fenced)
      throw conflict(
        `replication group ${args.group} is not a group of this site taken over by site ${peer.name}: nothing to resync back to`,
      );
    const c = g.config;
    if (args.volumes.length !== c.volumes.length || args.volumes.some((v, i) => v.name !== c.replicas[i]))
      throw conflict(
        `replication group ${args.group}: site ${peer.name} sends volumes ${args.volumes.map((v) => v.name).join(', ')}, this site replicated ${c.volumes.join(', ')} to ${c.replicas.join(', ')}`,
      );
    for (const [i, v] of c.volumes.entries()) {
      const info = this.storage.volume(v);
      if (info.size !== args.volumes[i]!.size)
        throw conflict(
          `volume ${v} has ${info.size} bytes; ${args.volumes[i]!.name} at site ${peer.name} has ${args.volumes[i]!.size}`,
        );
    }
    const running = c.vms.filter(
      (vm) => this.compute.listVms().find((x) => x.name === vm)?.state === 'running',
    );
    if (running.length) throw conflict(`VM(s) ${running.join(', ')} of group ${args.group} run at this site`);
    const pool = this.storage.volume(c.volumes[0]!).pool;
    const label = `${peer.name}/${args.group}`;
    for (const v of c.volumes) this.storage.setVolumeLabel(v, REPLICA_LABEL, label);
    this.exports.refresh();
    rmSync(join(this.dataDir, 'replication', args.group), { recursive: true, force: true });
    this.groups.delete(args.group);
    this.startTarget(peer, args, {
      sourceVolumes: args.volumes.map((v) => v.name),
      volumes: [...c.volumes],
      pool,
      keepSeconds: args.keepSeconds,
      journalBytes: args.journalBytes,
      ...(args.vms ? { vms: args.vms } : {}),
    });
    this.events.append({
      actor: `site:${peer.name}`,
      action: 'replication.target',
      target: args.group,
      outcome: 'ok',
      message: `replication group ${args.group} reversed: site ${peer.name} (which took it over) replicates back to this site's volumes ${c.volumes.join(', ')}, sending only what differs`,
    });
    return { volumes: [...c.volumes], pool };
  }

  private startTarget(peer: LinkPeer, args: PrepareArgs, config: TargetConfig): void {
    const row: GroupRow = {
      name: args.group,
      role: 'target',
      peer: peer.name,
      config,
      paused: false,
      createdAt: now(),
    };
    this.groups.insert(row);
    this.run(row);
  }

  private async disableTarget(peer: LinkPeer, group: string): Promise<{ group: string }> {
    this.ownTarget(peer, group);
    await this.disable(`site:${peer.name}`, group);
    return { group };
  }

  /** Tells the target the group's VMs as they are defined now. */
  private async describe(g: GroupRow): Promise<void> {
    if (g.role !== 'source') return;
    try {
      const vms = g.config.vms.map((v) => describeVm(this.compute.vm(v)));
      await this.links.call(g.peer, 'replication.describe', { group: g.name, vms });
    } catch (err) {
      log.info(
        { group: g.name, err: errorMessage(err) },
        'the target was not told the VMs (told at the next start)',
      );
    }
  }

  /** The source told its VMs: kept for a takeover (until the group is taken over). */
  private described(peer: LinkPeer, args: unknown): { group: string } {
    const name = groupArg(args);
    const g = this.groups.find(name);
    if (!g || g.role !== 'target' || g.peer !== peer.name)
      throw notFound(`site ${this.siteName} holds no replica of group ${name} for site ${peer.name}`);
    if (g.config.takenOver) return { group: name }; // what was taken over stays as it was
    const vms = replicatedVms((args as { vms?: unknown }).vms, 'replication.describe');
    this.groups.setConfig(name, { ...g.config, vms });
    return { group: name };
  }

  private ownTarget(peer: LinkPeer, group: string): TargetRunner {
    const runner = this.targets.get(group);
    if (!runner || runner.peer !== peer.name)
      throw notFound(`site ${this.siteName} holds no replica of group ${group} for site ${peer.name}`);
    return runner;
  }

  private run(g: GroupRow): void {
    const dir = join(this.dataDir, 'replication', g.name);
    if (g.role === 'source')
      this.sources.set(
        g.name,
        new SourceRunner(g.name, g.peer, g.config, dir, this.storage, this.links, this.events, g.paused),
      );
    else this.targets.set(g.name, new TargetRunner(g.name, g.peer, g.config, dir, this.storage, this.events));
  }

  private async stop(name: string): Promise<void> {
    const s = this.sources.get(name);
    this.sources.delete(name);
    await s?.stop();
    const t = this.targets.get(name);
    this.targets.delete(name);
    await t?.stop();
  }

  private source(name: string): SourceRunner {
    const g = this.groups.get(name);
    const runner = this.sources.get(name);
    if (g.role !== 'source' || !runner)
      throw conflict(
        `replication group ${name} is replicated to this site from ${g.peer}: ask the source site`,
      );
    return runner;
  }

  private target(name: string): TargetRunner {
    const runner = this.targets.get(name);
    if (!runner) throw notFound(`replication group ${name} has no target here`);
    return runner;
  }

  private answer(g: GroupRow): ReplicationGroupAnswer {
    if (g.role === 'source') {
      const c = g.config;
      const runner = this.sources.get(g.name);
      return {
        name: g.name,
        role: 'source',
        peer: g.peer,
        vms: c.vms,
        volumes: c.volumes.map((v, i) => ({ source: v, replica: c.replicas[i] ?? v })),
        pool: c.pool,
        rpoObjectiveSeconds: c.rpoSeconds,
        checkpointSeconds: c.checkpointSeconds,
        keepSeconds: c.keepSeconds,
        sync: c.sync,
        compress: c.compress,
        bytesPerSecond: c.bytesPerSecond,
        journalBytes: c.journalBytes,
        ...(c.seeded ? { seeded: true } : {}),
        ...(c.fenced ? { fenced: c.fenced } : {}),
        paused: g.paused,
        createdAt: g.createdAt,
        ...(runner ? { source: runner.status() } : {}),
      };
    }
    const c = g.config;
    const runner = this.targets.get(g.name);
    return {
      name: g.name,
      role: 'target',
      peer: g.peer,
      volumes: c.volumes.map((v, i) => ({ source: c.sourceVolumes[i] ?? v, replica: v })),
      pool: c.pool,
      keepSeconds: c.keepSeconds,
      journalBytes: c.journalBytes,
      paused: g.paused,
      createdAt: g.createdAt,
      ...(c.takenOver ? { takenOver: c.takenOver } : {}),
      ...(runner ? { target: runner.status() } : {}),
    };
  }
}

function positive(what: string, n: number): number {
  if (!Number.isFinite(n) || n <= 0) throw invalidArgument(`${what} ${n}: must be more than 0 seconds`);
  return n;
}

function groupArg(args: unknown): string {
  const g = (args as { group?: unknown } | null)?.group;
  if (typeof g !== 'string') throw invalidArgument('the request names no group');
  return g;
}

/** A peer is authenticated, not trusted to send well-formed requests. */
function prepareArgs(raw: unknown): PrepareArgs {
  const a = raw as Partial<PrepareArgs> | null;
  const bad = (what: string) => invalidArgument(`replication.prepare: ${what}`);
  if (!a || typeof a !== 'object') throw bad('no arguments');
  if (typeof a.group !== 'string') throw bad('no group');
  checkName('replication group', a.group);
  if (typeof a.pool !== 'string') throw bad('no pool');
  if (!Number.isFinite(a.keepSeconds) || (a.keepSeconds ?? 0) <= 0) throw bad('bad keepSeconds');
  if (!Number.isSafeInteger(a.journalBytes) || (a.journalBytes ?? 0) < 1024 * 1024)
    throw bad('bad journalBytes');
  if (a.seeded !== undefined && typeof a.seeded !== 'boolean') throw bad('bad seeded');
  if (a.reverse !== undefined && (a.reverse !== true || a.seeded !== true)) throw bad('bad reverse');
  if (a.vms !== undefined) a.vms = replicatedVms(a.vms, 'replication.prepare');
  if (!Array.isArray(a.volumes) || !a.volumes.length) throw bad('no volumes');
  for (const v of a.volumes) {
    if (!v || typeof v.name !== 'string') throw bad('a volume without a name');
    checkName('volume', v.name);
    if (!Number.isSafeInteger(v.size) || v.size <= 0) throw bad(`volume ${v.name}: bad size`);
    if (!Number.isSafeInteger(v.allocatedBytes) || v.allocatedBytes < 0)
      throw bad(`volume ${v.name}: bad allocatedBytes`);
  }
  return a as PrepareArgs;
}
