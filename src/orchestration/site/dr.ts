import { conflict, errorMessage, invalidArgument } from '../../common/index.js';
import type { VmDefinition } from './compute.js';
import { SiteDomain, type Actor, type SiteParts } from './domain.js';
import type { Job } from './jobs.js';
import type { PeerLinks } from './peer-links.js';
import type { RecoveredCheckpoint } from './replication-groups.js';
import type { ReplicationGroupAnswer, SiteReplication } from './replication.js';

export interface TakeoverRequest {
  group: string;
  /** The checkpoint to recover: "newest" (default), its sequence number, or its name. */
  checkpoint?: string;
  /** Take over although the source site answers (it would run the VMs too unless stopped there). */
  force?: boolean;
  /** Source network → network of this site, for the VMs' NICs (default: the same name). */
  networkMap?: Record<string, string>;
  /** Define the VMs but start none (default: start them, in the group's order). */
  start?: boolean;
}

/** What a takeover did: the report an operator reads after the disaster. */
export interface TakeoverReport {
  group: string;
  /** The site that was lost (the group's source). */
  from: string;
  /** Whether that site answered when the takeover began (then only with `force`). */
  peerReachable: boolean;
  checkpoint: RecoveredCheckpoint;
  /** How old the recovered data was when the takeover began (the RPO achieved). */
  dataAgeSeconds: number;
  vms: { name: string; state: string; startedAt?: string }[];
  startedAt: string;
  endedAt: string;
  /** From the command to the last VM running (the RTO achieved, to QEMU running). */
  elapsedSeconds: number;
}

/**
 * Disaster recovery operations of a site over its replication groups (issue 17). A takeover runs
 * at the site holding a replica when the source site is lost: the chosen checkpoint becomes the
 * site's own volumes (the group's gateway stops for good), the group's VMs — as the source
 * described them — are defined here over those volumes with the networks mapped, and started in
 * the group's order. The source, once back, learns it was taken over and keeps its VMs stopped
 * (replication-failover.ts: fencing).
 */
export class SiteDr extends SiteDomain {
  constructor(
    parts: SiteParts,
    private readonly replication: SiteReplication,
    private readonly links: PeerLinks,
  ) {
    super(parts);
  }

  /** Checks everything first (nothing changes on a refusal), then runs the takeover as a job. */
  async takeover(actor: Actor, req: TakeoverRequest): Promise<Job> {
    const { peer, config } = this.replication.replicaOf(req.group);
    const cp = this.replication.checkpointOf(req.group, req.checkpoint);
    if (!config.vms?.length)
      throw conflict(
        `replication group ${req.group}: site ${peer} never described its VMs to this site (an older Haven, or not since); start its daemon once, or define the VMs by hand over clones of a checkpoint`,
      );
    const vms = config.vms.map((v) => ({ name: v.name, definition: this.mapped(v.definition, config, req) }));
    for (const v of vms)
      if (this.compute.listVms().some((x) => x.name === v.name))
        throw conflict(`a VM named ${v.name} exists at this site already: delete or rename it first`);
    const peerReachable = await this.reachable(peer);
    if (peerReachable && !req.force)
      throw conflict(
        `site ${peer} answers: a takeover now would let group ${req.group} run at both sites; stop its VMs there and migrate, or take over with --force (the source then fences itself as soon as it asks)`,
      );
    const startedAt = new Date();
    return this.jobs.start({ kind: 'dr.takeover', target: req.group, actor }, async (ctx) => {
      ctx.log(
        `taking over group ${req.group} from site ${peer} (${peerReachable ? 'reachable, forced' : 'unreachable'}) at checkpoint ${cp.seq}${cp.name ? ` (${cp.name})` : ''} of ${cp.time}`,
      );
      await this.replication.promote(req.group, cp);
      ctx.log(`replica volumes ${config.volumes.join(', ')} promoted to checkpoint ${cp.seq}`);
      const report: TakeoverReport['vms'] = [];
      for (const v of vms) {
        this.compute.createVm(v.name, v.definition);
        ctx.log(`VM ${v.name} defined`);
        if (req.start === false) {
          report.push({ name: v.name, state: 'defined' });
          continue;
        }
        ctx.signal.throwIfAborted();
        this.compute.beginStart(v.name);
        try {
          const vm = await this.compute.launch(v.name);
          ctx.log(`VM ${v.name} running (QEMU pid ${vm.pid})`);
          report.push({ name: v.name, state: vm.state, startedAt: new Date().toISOString() });
        } catch (err) {
          throw new Error(`VM ${v.name} did not start: ${errorMessage(err)}`, { cause: err });
        }
      }
      const endedAt = new Date();
      const result: TakeoverReport = {
        group: req.group,
        from: peer,
        peerReachable,
        checkpoint: cp,
        dataAgeSeconds: round((startedAt.getTime() - Date.parse(cp.time)) / 1000),
        vms: report,
        startedAt: startedAt.toISOString(),
        endedAt: endedAt.toISOString(),
        elapsedSeconds: round((endedAt.getTime() - startedAt.getTime()) / 1000),
      };
      return result;
    });
  }

  /**
   * Resync after a takeover: the group replicates back from this site to its old source (which
   * must answer), sending only the extents whose checksums differ; it runs as replication does,
   * `haven replication show` follows it. Failback is then a migrate back.
   */
  resync(actor: Actor, group: string, opts: { rpoSeconds?: number } = {}): Promise<ReplicationGroupAnswer> {
    return this.replication.reverse(actor, group, opts);
  }

  /** The source's definition at this site: disks on the replica volumes, NICs on mapped networks. */
  private mapped(
    def: VmDefinition,
    config: { sourceVolumes: string[]; volumes: string[] },
    req: TakeoverRequest,
  ): VmDefinition {
    const disks = def.disks.map((d) => {
      const i = config.sourceVolumes.indexOf(d.volume);
      const volume = i >= 0 ? config.volumes[i]! : d.volume;
      if (i < 0 && !this.storage.listVolumes().some((v) => v.name === volume))
        throw conflict(
          `disk ${d.volume} is not replicated (read-only at the source) and no volume of that name is at this site: import it first`,
        );
      return { ...d, volume };
    });
    const nics = def.nics.map((n) => {
      const network = req.networkMap?.[n.network] ?? n.network;
      if (!this.compute.listNetworks().some((x) => x.name === network))
        throw invalidArgument(
          `network ${network}${network !== n.network ? ` (mapped from ${n.network})` : ''} does not exist at this site: create it or map ${n.network} to one with --network-map ${n.network}=NAME`,
        );
      return { network };
    });
    return { ...def, disks, nics };
  }

  private async reachable(peer: string): Promise<boolean> {
    try {
      await this.links.call(peer, 'ping', {}, { timeoutMs: 3000 });
      return true;
    } catch {
      return false;
    }
  }
}

const round = (n: number) => Math.round(n * 1000) / 1000;
