import { setTimeout as sleep } from 'node:timers/promises';
import { HavenError, conflict, errorMessage, invalidArgument, logger } from '../../common/index.js';
import { SiteDomain, type Actor, type SiteParts } from './domain.js';
import type { Job, JobContext } from './jobs.js';
import type { LinkPeer, PeerLinks } from './peer-links.js';
import type { RecoveredCheckpoint } from './replication-groups.js';
import type { ReplicationGroupAnswer, SiteReplication } from './replication.js';
import {
  planTakeover,
  round,
  runTakeover,
  type TakeoverHost,
  type TakeoverReport,
  type TakeoverRequest,
} from './dr-takeover.js';

import {
  cleanupRehearsal,
  planRehearsal,
  runRehearsal,
  type RehearsalHost,
  type RehearsalRequest,
} from './dr-rehearsal.js';

import {
  cleanupService,
  planServiceRehearsal,
  planServiceTakeover,
  runServiceRehearsal,
  runServiceTakeover,
  tierByTier,
  type ServiceReport,
} from './dr-services.js';
import { BusinessServices, type BusinessService } from './services.js';
import { planEvacuation, runEvacuation, type EvacuateHost, type EvacuateRequest } from './dr-evacuate.js';
import { NetworkMaps, type NetworkMapEntry } from './network-maps.js';
import {
  planServiceStart,
  planServiceStop,
  runServiceStart,
  runServiceStop,
  type ServicePowerHost,
} from './service-power.js';
import type { Db } from './database.js';
import { DrReports } from './dr-reports.js';
import type { Objective } from './objectives.js';

export type { TakeoverReport, TakeoverRequest } from './dr-takeover.js';
export type { ServiceReport } from './dr-services.js';
export type { BusinessService } from './services.js';
export type { NetworkMapEntry } from './network-maps.js';
export type { RehearsalReport, RehearsalRequest } from './dr-rehearsal.js';
export type { EvacuateReport, EvacuateRequest } from './dr-evacuate.js';

const log = logger('dr');

export interface MigrateRequest {
  group: string;
  /** Seconds each guest has to power off (ACPI) before it is stopped hard (default 60). */
  graceSeconds?: number;
  /** Compare the replica with the source at the final checkpoint before promoting it (default true). */
  verify?: boolean;
  /** Source network → network of the target site. */
  networkMap?: Record<string, string>;
}

/** A business service's resync: each group's answer, in tier order. */
export interface ServiceResync {
  service: string;
  groups: ReplicationGroupAnswer[];
}

/** What a migrate did. */
export interface MigrateReport {
  group: string;
  from: string;
  to: string;
  /** The final checkpoint: every write the guests completed before they stopped. */
  checkpoint: RecoveredCheckpoint;
  verified: boolean;
  stopped: { name: string; stoppedAt: string; forced: boolean }[];
  started: TakeoverReport['vms'];
  /** From the first guest stopping to the last running at the target. */
  downtimeSeconds: number;
  /** Replication runs the other way now (else `haven dr resync` at the target, and why). */
  reversed: boolean;
  reverseError?: string;
}

/**
 * Disaster recovery operations of a site over its replication groups (issue 17; decision 0015):
 * a takeover at the site holding a replica when the source is lost, the resync back after it,
 * and the planned migrate (run at the source: stop the guests, drain to a final checkpoint,
 * verify, promote at the target, start there, replicate back) — failback is a migrate back.
 */
export class SiteDr extends SiteDomain {
  private readonly host: TakeoverHost & RehearsalHost;
  /** Business services: groups in tiers (each site holds the definitions of both sides). */
  readonly services: BusinessServices;
  /** The reports of DR operations, kept when their jobs end (dr-reports.ts). */
  readonly reports: DrReports;
  /** The service objective that applies to a group or service (set by the site: site-objectives.ts). */
  objectiveFor: (target: string) => Objective | undefined = () => undefined;
  /** Where each paired site's networks go here on a recovery and a rehearsal. */
  readonly networkMaps: NetworkMaps;

  constructor(
    parts: SiteParts,
    private readonly replication: SiteReplication,
    private readonly links: PeerLinks,
    db: Db,
    private readonly site: string,
  ) {
    super(parts);
    this.services = new BusinessServices(
      db,
      (n) => replication.hasGroup(n),
      (n) => replication.resiliency.find(n) !== undefined,
    );
    this.reports = new DrReports(db, site);
    links.handle('dr.service.put', async (_peer, args) =>
      this.services.put(serviceArgs(args), { replace: true }),
    );
    links.handle('dr.service.delete', async (_peer, args) => {
      const name = (args as { name?: unknown } | null)?.name;
      if (typeof name === 'string' && this.services.find(name)) this.services.delete(name);
      return { name };
    });
    this.networkMaps = new NetworkMaps(
      db,
      (n) => links.get(n),
      (n) => this.compute.network(n),
    );
    this.host = {
      replication,
      compute: this.compute,
      storage: this.storage,
      exports: this.exports,
      networkMaps: this.networkMaps,
    };
    links.handle('dr.promote', (peer, args) => this.promoteFor(peer, args));
    links.handle('dr.reverse', (peer, args) => this.reverseFor(peer, args));
  }

  /** Stores where a paired site's network goes here on a recovery (and a rehearsal). */
  mapNetwork(
    actor: Actor,
    e: { peer: string; source: string; recovery: string; rehearsal?: string },
  ): NetworkMapEntry {
    return this.audited(
      actor,
      'network.map',
      `${e.peer}/${e.source}`,
      () => this.networkMaps.put(e),
      (m) =>
        `network ${m.source} of site ${m.peer} maps to ${m.recovery} here${m.rehearsal ? `, to ${m.rehearsal} in rehearsals` : ''}`,
    );
  }

  unmapNetwork(actor: Actor, peer: string, source: string): { peer: string; source: string } {
    return this.audited(actor, 'network.unmap', `${peer}/${source}`, () => {
      this.networkMaps.delete(peer, source);
      return { peer, source };
    });
  }

  /**
   * Defines a business service here and at the sites its groups replicate with (so that it can
   * be taken over where the replicas are when this site is lost); a site that does not answer is
   * named in `notTold`.
   */
  async createService(
    actor: Actor,
    req: { name: string; tiers: string[][]; bootDelaySeconds?: number },
  ): Promise<BusinessService & { notTold?: string[] }> {
    const s = this.audited(actor, 'service.create', req.name, () => this.services.put(req));
    const notTold: string[] = [];
    for (const peer of this.peersOf(s))
      try {
        await this.links.call(peer, 'dr.service.put', s, { timeoutMs: 5000 });
      } catch (err) {
        notTold.push(`${peer}: ${errorMessage(err)}`);
      }
    return { ...s, ...(notTold.length ? { notTold } : {}) };
  }

  async deleteService(actor: Actor, name: string): Promise<{ name: string }> {
    const s = this.services.get(name);
    this.audited(actor, 'service.delete', name, () => this.services.delete(name));
    for (const peer of this.peersOf(s))
      await this.links.call(peer, 'dr.service.delete', { name }, { timeoutMs: 5000 }).catch(() => undefined);
    return { name };
  }

  private peersOf(s: BusinessService): string[] {
    return [...new Set(s.tiers.flat().map((g) => this.replication.show(g).peer))];
  }

  /** Checks everything first (nothing changes on a refusal), then runs the takeover as a job. */
  async takeover(actor: Actor, req: TakeoverRequest): Promise<Job> {
    const service = this.services.find(req.group);
    if (service) return this.takeoverService(actor, service, req);
    const plan = planTakeover(this.host, req);
    const peerReachable = await this.reachable(plan.peer);
    if (peerReachable && !req.force)
      throw conflict(
        `site ${plan.peer} answers: a takeover now would let group ${req.group} run at both sites; stop its VMs there and migrate, or take over with --force (the source then fences itself as soon as it asks)`,
      );
    return this.reported(
      this.jobs.start({ kind: 'dr.takeover', target: req.group, actor }, (ctx) =>
        runTakeover(this.host, plan, { start: req.start !== false, peerReachable }, ctx),
      ),
    );
  }

  /**
   * A rehearsal at the site holding the replica (dr-rehearsal.ts), as a job: a heartbeat that
   * fails fails it (the VMs stay up to look at); replication and production go on untouched.
   */
  rehearse(actor: Actor, req: RehearsalRequest): Job {
    const service = this.services.find(req.group);
    if (service) {
      const plans = planServiceRehearsal(this.host, service, req);
      return this.reported(
        this.jobs.start({ kind: 'dr.rehearse', target: service.name, actor }, (ctx) =>
          runServiceRehearsal(this.host, service, plans, ctx),
        ),
      );
    }
    const record = planRehearsal(this.host, req);
    return this.reported(
      this.jobs.start({ kind: 'dr.rehearse', target: req.group, actor }, async (ctx) => {
        const report = await runRehearsal(this.host, req, record, ctx);
        if (!report.passed)
          throw new HavenError(
            'CORRUPT',
            `rehearsal of group ${req.group} failed: ${report.vms
              .filter((v) => !v.passed)
              .map((v) => `${v.name}: ${v.detail}`)
              .join('; ')} (its VMs stay up until haven dr cleanup ${req.group})`,
          );
        return report;
      }),
    );
  }

  /** Keeps the job's report when it ends, whatever the end (dr-reports.ts). */
  private reported(job: Job, groupsOf?: string[]): Job {
    const service = this.services.find(job.target);
    const groups = groupsOf ?? (service ? service.tiers.flat() : [job.target]);
    void this.jobs.wait(job.id).then((end) => {
      try {
        const o = this.objectiveFor(job.target);
        this.reports.record(end, this.jobs.logOf(job.id), groups, o);
      } catch (err) {
        log.error({ job: job.id, err: errorMessage(err) }, 'the DR report could not be kept');
      }
    });
    return job;
  }

  /** Starts a business service here in its order, tier by tier (service-power.ts), as a job. */
  startService(actor: Actor, name: string): Job {
    const s = this.services.get(name);
    const h = this.powerHost();
    const vms = planServiceStart(h, s);
    return this.jobs.start({ kind: 'service.start', target: s.name, actor }, (ctx) =>
      runServiceStart(h, s, vms, ctx),
    );
  }

  /** Stops a business service here, the last tier first (ACPI, hard after the grace), as a job. */
  stopService(actor: Actor, name: string, opts: { graceSeconds?: number } = {}): Job {
    const s = this.services.get(name);
    const grace = opts.graceSeconds ?? 60;
    const h = this.powerHost();
    const vms = planServiceStop(h, s, grace);
    return this.jobs.start({ kind: 'service.stop', target: s.name, actor }, (ctx) =>
      runServiceStop(h, s, vms, grace, ctx),
    );
  }

  private powerHost(): ServicePowerHost {
    return { compute: this.compute, replication: this.replication, fencedBy: this.fencedBy };
  }

  /** Removes every trace of a group's rehearsal. */
  async cleanup(actor: Actor, group: string): Promise<{ group: string; removed: string[] }> {
    const service = this.services.find(group);
    const r = service
      ? { group, removed: (await cleanupService(this.host, service)).removed }
      : await cleanupRehearsal(this.host, group);
    this.events.append({
      actor,
      action: 'dr.cleanup',
      target: group,
      outcome: 'ok',
      message: `rehearsal of group ${group} cleaned up: ${r.removed.join(', ') || 'nothing was left'}`,
    });
    return r;
  }

  /**
   * Resync after a takeover: the group replicates back from this site to its old source (which
   * must answer), sending only the extents whose checksums differ; it runs as replication does,
   * `haven replication show` follows it.
   */
  resync(
    actor: Actor,
    group: string,
    opts: { rpoSeconds?: number } = {},
  ): Promise<ReplicationGroupAnswer | ServiceResync> {
    const service = this.services.find(group);
    if (service) return this.resyncService(actor, service, opts);
    return this.replication.reverse(actor, group, opts);
  }

  /**
   * The resync of every group of a business service taken over here, in tier order; every group
   * is checked first (taken over by this site), so that a refusal changes nothing.
   */
  private async resyncService(
    actor: Actor,
    s: BusinessService,
    opts: { rpoSeconds?: number },
  ): Promise<ServiceResync> {
    for (const g of s.tiers.flat()) this.replication.checkReversible(g);
    const groups: ReplicationGroupAnswer[] = [];
    for (const g of s.tiers.flat()) groups.push(await this.replication.reverse(actor, g, opts));
    return { service: s.name, groups };
  }

  /**
   * A planned migrate, with no data lost, of a group replicated from this site to its target —
   * or of a business service: every group checked first, the VMs stopped last tier first, then
   * each group switched and its VMs started at the target tier by tier.
   */
  async migrate(actor: Actor, req: MigrateRequest): Promise<Job> {
    const grace = req.graceSeconds ?? 60;
    if (!Number.isFinite(grace) || grace < 0) throw invalidArgument(`grace ${grace}: seconds, at least 0`);
    const service = this.services.find(req.group);
    const groups = service ? service.tiers.flat() : [req.group];
    const plans = new Map<string, { peer: string; vms: string[] }>();
    for (const group of groups) plans.set(group, await this.checkMigrate(group));
    if (!service)
      return this.reported(
        this.jobs.start({ kind: 'dr.migrate', target: req.group, actor }, async (ctx) => {
          const plan = plans.get(req.group)!;
          const firstStop = Date.now();
          const stopped = await this.stopForMigrate(plan.vms, grace, ctx);
          return this.switchGroup(req, plan, stopped, firstStop, ctx, true);
        }),
      );
    return this.reported(
      this.jobs.start({ kind: 'dr.migrate', target: service.name, actor }, (ctx) =>
        this.runServiceMigrate(service, req, plans, grace, ctx),
      ),
    );
  }

  /**
   * Evacuate (dr-evacuate.ts): every business service (and lone group) replicated from this site,
   * or with a VM on one of its hosts, migrates to its target in order; all checked first.
   */
  async evacuate(actor: Actor, req: EvacuateRequest): Promise<Job> {
    const h: EvacuateHost = {
      site: this.site,
      compute: this.compute,
      replication: this.replication,
      services: this.services,
      checkMigratable: async (g) => void (await this.checkMigrate(g)),
      // The evacuation stopped the VMs (and starts them again on a failure): the switch only.
      migrate: async (g, ctx) => {
        const { peer, config } = this.replication.sourceOf(g);
        return this.switchGroup(
          {
            group: g,
            ...(req.verify !== undefined ? { verify: req.verify } : {}),
            ...(req.networkMap ? { networkMap: req.networkMap } : {}),
          },
          { peer, vms: config.vms },
          [],
          Date.now(),
          ctx,
          false,
        );
      },
    };
    const units = await planEvacuation(h, req);
    return this.reported(
      this.jobs.start(
        { kind: 'dr.evacuate', target: req.host !== undefined ? `host:${req.host}` : this.site, actor },
        (ctx) => runEvacuation(h, req, units, ctx),
      ),
      units.flatMap((u) => u.tiers.flat()),
    );
  }

  /**
   * Failback of a group or service that runs here after a takeover or a migrate: the groups not
   * yet replicating back are resynced (only what differs is sent), the job waits until every one
   * replicates current, then migrates back (its own `dr.migrate` job, whose report it returns).
   */
  failback(actor: Actor, req: MigrateRequest): Job {
    const service = this.services.find(req.group);
    const groups = service ? service.tiers.flat() : [req.group];
    const toResync: string[] = [];
    const roles = new Map(this.replication.list().map((x) => [x.name, x.role]));
    for (const g of groups) {
      if (!roles.has(g)) this.replication.checkReversible(g); // NOT_FOUND names it
      if (roles.get(g) === 'source') {
        this.replication.sourceOf(g); // a fenced one is refused, naming who runs it
        continue;
      }
      try {
        this.replication.checkReversible(g);
      } catch {
        throw conflict(
          `replication group ${g} neither replicates from this site nor was taken over here: nothing to fail back (run it where the group runs now)`,
        );
      }
      toResync.push(g);
    }
    return this.reported(
      this.jobs.start({ kind: 'dr.failback', target: req.group, actor }, async (ctx) => {
        for (const g of toResync) {
          const r = await this.replication.reverse(actor, g, {});
          ctx.log(`group ${g} resyncs back to site ${r.peer}, sending only what differs`);
        }
        ctx.progress(0, 0, 'waiting for the replicas to be current');
        for (const g of groups)
          for (;;) {
            const st = this.replication.sourceOf(g).runner.gateway.status();
            if (st.mode === 'replicating' && st.link === 'up' && st.applied) break;
            if (ctx.signal.aborted) throw new HavenError('CANCELLED', 'failback cancelled');
            await sleep(500, undefined, { signal: ctx.signal }).catch(() => undefined);
          }
        ctx.log(`every group replicates current: migrating ${req.group} back`);
        const job = await this.migrate(actor, req);
        ctx.log(`migrate job ${job.id}`);
        const done = await this.jobs.wait(job.id);
        if (done.state !== 'succeeded')
          throw new HavenError(
            done.errorCode ?? 'INTERNAL',
            `the migrate back (job ${job.id}) failed: ${done.error ?? done.state}`,
          );
        return done.result;
      }),
    );
  }

  /** Refuses a migrate of `group` unless it replicates current with its link up and its target answers. */
  private async checkMigrate(group: string): Promise<{ peer: string; vms: string[] }> {
    const { peer, config, runner } = this.replication.sourceOf(group);
    const state = runner.gateway.status();
    if (state.mode !== 'replicating' || state.link !== 'up')
      throw conflict(
        `replication group ${group} is ${state.mode === 'replicating' ? 'replicating but its link is down' : state.mode}: a migrate needs the replica current and the link up${state.mode === 'initial-sync' || state.mode === 'resyncing' ? ' (wait for the sync to complete)' : ''}`,
      );
    if (!(await this.reachable(peer)))
      throw conflict(
        `site ${peer} does not answer: a migrate needs both sites; if this site is being lost, take over at ${peer}`,
      );
    return { peer, vms: config.vms };
  }

  /** Stops the VMs in reverse order (the last to start, the first to stop): ACPI, hard after `grace`. */
  private async stopForMigrate(
    vms: string[],
    grace: number,
    ctx: JobContext,
  ): Promise<MigrateReport['stopped']> {
    const stopped: MigrateReport['stopped'] = [];
    for (const vm of [...vms].reverse()) {
      if (this.compute.vm(vm).state !== 'running') continue;
      ctx.log(`stopping VM ${vm} (ACPI power-off, hard after ${grace} s)`);
      const before = Date.now();
      await this.compute.stop(vm, { graceMs: grace * 1000 });
      stopped.push({
        name: vm,
        stoppedAt: new Date().toISOString(),
        forced: Date.now() - before >= grace * 1000,
      });
    }
    return stopped;
  }

  /** Starts again here the VMs a migrate stopped (in their start order), after it stopped before the switch. */
  private async restartHere(stopped: MigrateReport['stopped'], why: string, ctx: JobContext): Promise<void> {
    for (const s of [...stopped].reverse())
      try {
        this.compute.beginStart(s.name);
        await this.compute.launch(s.name);
      } catch (err) {
        ctx.log(`VM ${s.name} could not be started again here: ${errorMessage(err)}`, 'error');
      }
    ctx.log(`migrate stopped before the switch (${why}); the VMs run here again`, 'error');
  }

  /**
   * The switch of one group whose VMs are stopped: drain to a final checkpoint, verify, promote
   * and start at the target, fence here, replicate back. Before the switch, a failure restarts
   * the VMs here when `restartOnFailure`.
   */
  private async switchGroup(
    req: MigrateRequest,
    { peer, vms }: { peer: string; vms: string[] },
    stopped: MigrateReport['stopped'],
    firstStop: number,
    ctx: JobContext,
    restartOnFailure: boolean,
  ): Promise<MigrateReport> {
    const group = req.group;
    let switched = false;
    try {
      const { runner } = this.replication.sourceOf(group);
      const seq = runner.gateway.checkpoint('migrate');
      if (seq === undefined)
        throw conflict(`replication group ${group} stopped replicating during the migrate`);
      ctx.log(`final checkpoint ${seq}: waiting for site ${peer} to apply it`);
      await runner.gateway.waitApplied(seq, 10 * 60_000);
      let at = seq;
      if (req.verify !== false) {
        const report = await runner.gateway.verify();
        if (report.differences.length)
          throw new HavenError(
            'CORRUPT',
            `the replica differs from the source at the final checkpoint in ${report.differences.length} range(s): repair it (haven replication verify ${group} --repair) and migrate again`,
          );
        ctx.log(`replica verified equal at checkpoint ${report.checkpoint} (${report.comparedBytes} bytes)`);
        at = report.checkpoint;
      }
      ctx.progress(0, 0, 'promote at the target');
      let started: TakeoverReport;
      try {
        started = (await this.links.call(
          peer,
          'dr.promote',
          { group, checkpoint: String(at), ...(req.networkMap ? { networkMap: req.networkMap } : {}) },
          { timeoutMs: 10 * 60_000 },
        )) as TakeoverReport;
      } catch (err) {
        // Did the target switch before the answer was lost? Then restarting here would be split brain.
        const role = (await this.links
          .call(peer, 'replication.role', { group }, { timeoutMs: 5000 })
          .catch(() => undefined)) as { takenOver?: { checkpoint: number } } | undefined;
        if (role?.takenOver) {
          await this.replication.fenceForMigrate(group, role.takenOver.checkpoint);
          throw new HavenError(
            'TIMEOUT',
            `site ${peer} took group ${group} over but its answer was lost (${errorMessage(err)}): the VMs run there; this site is fenced; run haven dr resync ${group} at ${peer}`,
          );
        }
        if (!role) {
          switched = true; // unknown: never restart here blindly
          throw new HavenError(
            'TIMEOUT',
            `site ${peer} stopped answering during the switch (${errorMessage(err)}): the VMs are stopped here; if ${peer} runs group ${group} (haven replication show ${group} there), leave them stopped, else start them here again`,
          );
        }
        throw err; // the target refused: nothing changed there
      }
      switched = true;
      const downtimeSeconds = round((Date.parse(started.endedAt) - firstStop) / 1000);
      ctx.log(`site ${peer} runs ${started.vms.map((v) => v.name).join(', ')} from checkpoint ${at}`);
      // From here the group is the target's: this site must never run it again unasked.
      await this.replication.fenceForMigrate(group, at);
      let reverseError: string | undefined;
      try {
        await this.links.call(peer, 'dr.reverse', { group }, { timeoutMs: 60_000 });
        ctx.log(`replication runs from site ${peer} to this site now`);
      } catch (err) {
        reverseError = errorMessage(err);
        ctx.log(
          `replication back was not started (${reverseError}): run haven dr resync ${group} at ${peer}`,
          'warning',
        );
      }
      return {
        group,
        from: started.from,
        to: peer,
        checkpoint: started.checkpoint,
        verified: req.verify !== false,
        stopped,
        started: started.vms,
        downtimeSeconds,
        reversed: reverseError === undefined,
        ...(reverseError ? { reverseError } : {}),
      };
    } catch (err) {
      if (restartOnFailure && !switched && !this.replication.fencedGroupOfVm(vms[0]!))
        await this.restartHere(stopped, errorMessage(err), ctx);
      throw err;
    }
  }

  /**
   * A business service's migrate: every VM of it stopped last tier first (the whole service is
   * down from there, as it must be for no data to be lost across its tiers), then its groups
   * switched tier by tier, so that the target starts them in order. A group that fails to switch
   * stops the migrate: the groups before it run at their targets, it and the rest start here
   * again, and the error names which moved.
   */
  private async runServiceMigrate(
    s: BusinessService,
    req: MigrateRequest,
    plans: Map<string, { peer: string; vms: string[] }>,
    grace: number,
    ctx: JobContext,
  ): Promise<ServiceReport<MigrateReport>> {
    const firstStop = Date.now();
    const stopped = new Map<string, MigrateReport['stopped']>();
    for (const tier of [...s.tiers].reverse())
      for (const g of [...tier].reverse())
        stopped.set(g, await this.stopForMigrate(plans.get(g)!.vms, grace, ctx));
    const moved: string[] = [];
    try {
      return await tierByTier(s, ctx, async (i) => {
        const out: MigrateReport[] = [];
        for (const g of s.tiers[i]!) {
          out.push(
            await this.switchGroup(
              { ...req, group: g },
              plans.get(g)!,
              stopped.get(g)!,
              firstStop,
              ctx,
              false,
            ),
          );
          moved.push(g);
        }
        return out;
      });
    } catch (err) {
      const rest = s.tiers.flat().filter((g) => !moved.includes(g));
      for (const g of rest)
        if (!this.replication.fencedGroupOfVm(plans.get(g)!.vms[0]!))
          await this.restartHere(stopped.get(g)!, errorMessage(err), ctx);
      throw new HavenError(
        'CONFLICT',
        `migrate of business service ${s.name} stopped: ${errorMessage(err)}; ${moved.length ? `groups ${moved.join(', ')} run at their target now` : 'no group moved'}${rest.length ? `, groups ${rest.join(', ')} were started here again where they were not fenced` : ''}`,
      );
    }
  }

  /** The source of a group asks this site (its target) to promote and start it: a migrate's switch. */
  private async promoteFor(peer: LinkPeer, raw: unknown): Promise<TakeoverReport> {
    const a = raw as { group?: unknown; checkpoint?: unknown; networkMap?: unknown } | null;
    if (typeof a?.group !== 'string' || typeof a.checkpoint !== 'string')
      throw invalidArgument('dr.promote: a group and a checkpoint');
    const map = a.networkMap;
    if (
      map !== undefined &&
      (typeof map !== 'object' || map === null || Object.values(map).some((v) => typeof v !== 'string'))
    )
      throw invalidArgument('dr.promote: networkMap');
    const req: TakeoverRequest = {
      group: a.group,
      checkpoint: a.checkpoint,
      ...(map ? { networkMap: map as Record<string, string> } : {}),
    };
    const plan = planTakeover(this.host, req);
    if (plan.peer !== peer.name)
      throw conflict(`replication group ${req.group} is replicated here from ${plan.peer}, not ${peer.name}`);
    const job = this.reported(
      this.jobs.start({ kind: 'dr.takeover', target: req.group, actor: `site:${peer.name}` }, (ctx) =>
        runTakeover(this.host, plan, { start: true, peerReachable: true }, ctx),
      ),
    );
    const end = await this.jobs.wait(job.id);
    if (end.state !== 'succeeded')
      throw new HavenError(
        end.errorCode ?? 'INTERNAL',
        `the takeover at this site failed: ${end.error ?? end.state}`,
      );
    return end.result as TakeoverReport;
  }

  /** After a migrate's switch, the old source asks this site to replicate back to it. */
  private async reverseFor(peer: LinkPeer, raw: unknown): Promise<{ group: string }> {
    const group = (raw as { group?: unknown } | null)?.group;
    if (typeof group !== 'string') throw invalidArgument('dr.reverse: a group');
    const { peer: from } = this.replication.show(group);
    if (from !== peer.name) throw conflict(`replication group ${group} is not shared with site ${peer.name}`);
    await this.replication.reverse(`site:${peer.name}`, group);
    log.info({ group, to: peer.name }, 'replicating back after a migrate');
    return { group };
  }

  /** A takeover of every group of a service, tier by tier; all are checked before any starts. */
  private async takeoverService(actor: Actor, s: BusinessService, req: TakeoverRequest): Promise<Job> {
    const plans = planServiceTakeover(this.host, s, req);
    const peers = [...new Set(plans.flat().map((p) => p.peer))];
    const answering: string[] = [];
    for (const p of peers) if (await this.reachable(p)) answering.push(p);
    if (answering.length && !req.force)
      throw conflict(
        `site(s) ${answering.join(', ')} answer: a takeover now would let business service ${s.name} run at two sites; migrate its groups, or take over with --force`,
      );
    return this.reported(
      this.jobs.start({ kind: 'dr.takeover', target: s.name, actor }, (ctx) =>
        runServiceTakeover(
          this.host,
          s,
          plans,
          { start: req.start !== false, peerReachable: answering.length > 0 },
          ctx,
        ),
      ),
    );
  }

  /** The peer's health settled now: its heartbeats answered, or missed up to the limit (peer-health.ts). */
  private async reachable(peer: string): Promise<boolean> {
    return (await this.links.settle(peer)) === 'reachable';
  }
}

/** A service as a peer sends it: authenticated, not trusted to be well formed (put checks the rest). */
function serviceArgs(raw: unknown): { name: string; tiers: string[][]; bootDelaySeconds?: number } {
  const a = raw as { name?: unknown; tiers?: unknown; bootDelaySeconds?: unknown } | null;
  if (typeof a?.name !== 'string' || !Array.isArray(a.tiers))
    throw invalidArgument('dr.service.put: a name and tiers');
  return {
    name: a.name,
    tiers: a.tiers as string[][],
    ...(typeof a.bootDelaySeconds === 'number' ? { bootDelaySeconds: a.bootDelaySeconds } : {}),
  };
}
