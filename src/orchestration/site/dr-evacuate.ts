import { setTimeout as sleep } from 'node:timers/promises';
import { conflict, errorMessage, invalidArgument } from '../../common/index.js';
import type { ComputeService } from './compute.js';
import type { JobContext } from './jobs.js';
import type { SiteReplication } from './replication.js';
import type { BusinessServices } from './services.js';

export interface EvacuateRequest {
  /** This site's name: every business service (and group) replicated from it moves. */
  site?: string;
  /** A host of this site: the services (and groups) with a VM on it move. */
  host?: string;
  /** Seconds each guest has to power off (ACPI) before it is stopped hard (default 60). */
  graceSeconds?: number;
  verify?: boolean;
  networkMap?: Record<string, string>;
}

/** One service (or a group in none) to move: its groups in tiers, with the site they go to. */
export interface EvacuationUnit {
  service?: string;
  tiers: string[][];
  bootDelaySeconds: number;
  peer: string;
}

/** What a migrate of one group reports (dr.ts's MigrateReport, as far as the evacuation reads it). */
interface MovedGroup {
  group: string;
  checkpoint: { seq: number; time: string };
  started: { name: string; startedAt?: string }[];
}

export interface EvacuateReport {
  site: string;
  host?: string;
  /** Each service (or lone group) moved, in the order moved. */
  services: {
    service?: string;
    to: string;
    stopped: { name: string; stoppedAt: string; forced: boolean }[];
    tiers: { tier: number; startedAt: string; groups: MovedGroup[] }[];
    /** From its first VM stopping to its last running at the target. */
    downtimeSeconds: number;
  }[];
  startedAt: string;
  endedAt: string;
  elapsedSeconds: number;
  /** The longest downtime of a service. */
  downtimeSeconds: number;
}

export interface EvacuateHost {
  site: string;
  compute: ComputeService;
  replication: SiteReplication;
  services: BusinessServices;
  /** A migrate's switch of one group whose VMs are stopped already (dr.ts). */
  migrate(group: string, ctx: JobContext): Promise<MovedGroup>;
  /** Refuses a group that cannot migrate now (not replicating, link down, target not answering). */
  checkMigratable(group: string): Promise<void>;
}

/**
 * What an evacuation moves, checked before anything changes: the business services with a group
 * replicated from this site (on the host, if one is named) and the groups in no service, each
 * group migratable now. Throws, changing nothing, naming every group that is not.
 */
export async function planEvacuation(h: EvacuateHost, req: EvacuateRequest): Promise<EvacuationUnit[]> {
  if ((req.site === undefined) === (req.host === undefined))
    throw invalidArgument('evacuate: give --site (this site) or --host (one of its hosts), one of them');
  if (req.site !== undefined && req.site !== h.site)
    throw invalidArgument(
      `evacuate --site ${req.site}: run it at site ${req.site} itself (this is site ${h.site}); a site that is lost is taken over at the sites holding its replicas (haven dr takeover SERVICE there)`,
    );
  if (req.host !== undefined) h.compute.host(req.host); // NOT_FOUND names it
  const grace = req.graceSeconds ?? 60;
  if (!Number.isFinite(grace) || grace < 0) throw invalidArgument(`grace ${grace}: seconds, at least 0`);
  const ours = (g: string) => {
    if (!h.replication.hasGroup(g)) return false;
    const a = h.replication.show(g);
    return a.role === 'source' && !a.fenced;
  };
  const onHost = (groups: string[]) =>
    req.host === undefined ||
    groups.some((g) =>
      (h.replication.show(g).vms ?? []).some(
        (vm) => h.compute.listVms().find((v) => v.name === vm)?.host === req.host,
      ),
    );
  const units: EvacuationUnit[] = [];
  const inService = new Set<string>();
  for (const s of h.services.list()) {
    s.tiers.flat().forEach((g) => inService.add(g));
    const here = s.tiers.flat().filter(ours);
    if (!here.length || !onHost(here)) continue;
    if (here.length !== s.tiers.flat().length)
      throw conflict(
        `business service ${s.name} runs partly elsewhere (${s.tiers
          .flat()
          .filter((g) => !ours(g))
          .join(', ')} not replicated from this site): move it group by group (haven dr migrate)`,
      );
    const peers = [...new Set(here.map((g) => h.replication.show(g).peer))];
    if (peers.length > 1)
      throw conflict(
        `business service ${s.name} replicates to ${peers.join(' and ')}: evacuate moves a service to one site`,
      );
    units.push({ service: s.name, tiers: s.tiers, bootDelaySeconds: s.bootDelaySeconds, peer: peers[0]! });
  }
  for (const g of h.replication.list())
    if (!inService.has(g.name) && ours(g.name) && onHost([g.name]))
      units.push({ tiers: [[g.name]], bootDelaySeconds: 0, peer: g.peer });
  if (!units.length)
    throw conflict(
      `nothing to evacuate: no business service or replication group runs from this site${req.host ? ` with a VM on host ${req.host}` : ''}`,
    );
  const refused: string[] = [];
  for (const u of units)
    for (const g of u.tiers.flat())
      await h.checkMigratable(g).catch((err: unknown) => refused.push(errorMessage(err)));
  if (refused.length) throw conflict(`evacuate: nothing was moved: ${refused.join('; ')}`);
  return units;
}

/**
 * Moves each unit in turn: all its VMs stop, last tier first (ACPI, hard after the grace), then
 * its groups switch to the target tier by tier (tier 1 first, the boot delay between), each as a
 * migrate does (final checkpoint, verify, promote, start, replicate back). A failure stops the
 * evacuation; the VMs of groups not switched yet start here again.
 */
export async function runEvacuation(
  h: EvacuateHost,
  req: EvacuateRequest,
  units: EvacuationUnit[],
  ctx: JobContext,
): Promise<EvacuateReport> {
  const started = new Date();
  const grace = req.graceSeconds ?? 60;
  const out: EvacuateReport['services'] = [];
  for (const u of units) {
    const name = u.service ? `business service ${u.service}` : `group ${u.tiers[0]![0]}`;
    ctx.log(`evacuating ${name} to site ${u.peer}`);
    const firstStop = Date.now();
    const stopped: EvacuateReport['services'][number]['stopped'] = [];
    for (const tier of [...u.tiers].reverse())
      for (const g of [...tier].reverse())
        for (const vm of [...(h.replication.show(g).vms ?? [])].reverse()) {
          if (h.compute.vm(vm).state !== 'running') continue;
          ctx.signal.throwIfAborted();
          ctx.log(`stopping VM ${vm} of group ${g} (ACPI power-off, hard after ${grace} s)`);
          const before = Date.now();
          await h.compute.stop(vm, { graceMs: grace * 1000 });
          stopped.push({
            name: vm,
            stoppedAt: new Date().toISOString(),
            forced: Date.now() - before >= grace * 1000,
          });
        }
    const tiers: EvacuateReport['services'][number]['tiers'] = [];
    const switched = new Set<string>();
    let lastUp = Date.now();
    try {
      for (const [i, tier] of u.tiers.entries()) {
        if (i > 0 && u.bootDelaySeconds > 0) {
          ctx.log(`waiting ${u.bootDelaySeconds} s before tier ${i + 1}`);
          await sleep(u.bootDelaySeconds * 1000, undefined, { signal: ctx.signal });
        }
        const t = { tier: i + 1, startedAt: new Date().toISOString(), groups: [] as MovedGroup[] };
        for (const g of tier) {
          const moved = await h.migrate(g, ctx);
          switched.add(g);
          t.groups.push(moved);
          lastUp = Math.max(
            ...moved.started.map((v) => (v.startedAt ? Date.parse(v.startedAt) : Date.now())),
            lastUp,
          );
        }
        tiers.push(t);
      }
    } catch (err) {
      // What did not switch runs here again, in start order; what did stays at the target.
      for (const g of u.tiers.flat())
        if (!switched.has(g))
          for (const vm of h.replication.show(g).vms ?? [])
            if (stopped.some((s) => s.name === vm) && h.compute.vm(vm).state !== 'running')
              try {
                h.compute.beginStart(vm);
                await h.compute.launch(vm);
              } catch (e) {
                ctx.log(`VM ${vm} could not be started again here: ${errorMessage(e)}`, 'error');
              }
      throw new Error(
        `evacuating ${name} stopped${switched.size ? ` after ${[...switched].join(', ')} moved to site ${u.peer}` : ''}: ${errorMessage(err)}`,
        { cause: err },
      );
    }
    out.push({
      ...(u.service ? { service: u.service } : {}),
      to: u.peer,
      stopped,
      tiers,
      downtimeSeconds: Math.round(lastUp - firstStop) / 1000,
    });
    ctx.log(`${name} runs at site ${u.peer}`);
  }
  const ended = new Date();
  return {
    site: h.site,
    ...(req.host ? { host: req.host } : {}),
    services: out,
    startedAt: started.toISOString(),
    endedAt: ended.toISOString(),
    elapsedSeconds: (ended.getTime() - started.getTime()) / 1000,
    downtimeSeconds: Math.max(0, ...out.map((s) => s.downtimeSeconds)),
  };
}
