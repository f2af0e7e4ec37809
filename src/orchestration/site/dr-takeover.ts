import { conflict, errorMessage, invalidArgument } from '../../common/index.js';
import { REPLICA_LABEL, type StorageService } from '../../storage/index.js';
import type { ComputeService, VmDefinition } from './compute.js';
import type { JobContext } from './jobs.js';
import type { NetworkMaps } from './network-maps.js';
import type { RecoveredCheckpoint, TargetConfig } from './replication-groups.js';
import type { CheckpointAnswer } from './replication-runners.js';
import type { SiteReplication } from './replication.js';

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
  /** Whether that site answered when the takeover began (then only with `force`, or planned). */
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

/** A takeover checked and ready to run: nothing has changed yet. */
export interface TakeoverPlan {
  group: string;
  peer: string;
  config: TargetConfig;
  checkpoint: CheckpointAnswer;
  /** The VMs to start, in order; `reuse`: already defined here over the group's volumes (a failback). */
  vms: { name: string; definition: VmDefinition; reuse: boolean }[];
}

export interface TakeoverHost {
  replication: SiteReplication;
  compute: ComputeService;
  storage: StorageService;
  /** The stored network maps per peer (an operation's own map wins over them). */
  networkMaps?: NetworkMaps;
}

/** Checks a takeover of `req.group` at this site; throws, changing nothing, when it cannot be done. */
export function planTakeover(host: TakeoverHost, req: TakeoverRequest): TakeoverPlan {
  const { peer, config } = host.replication.replicaOf(req.group);
  const checkpoint = host.replication.checkpointOf(req.group, req.checkpoint);
  if (!config.vms?.length)
    throw conflict(
      `replication group ${req.group}: site ${peer} never described its VMs to this site (an older Haven, or not since); start its daemon once, or define the VMs by hand over clones of a checkpoint`,
    );
  const label = `${peer}/${req.group}`;
  const networkMap = { ...host.networkMaps?.recovery(peer), ...req.networkMap };
  const vms = config.vms.map((v) => {
    const definition = mapped(host, v.definition, config, networkMap);
    const here = host.compute.listVms().find((x) => x.name === v.name);
    if (!here) return { name: v.name, definition, reuse: false };
    // The group's own VM, left here by a migrate away (a failback): its disks are the replicas.
    const ours =
      here.state !== 'running' &&
      here.disks.length === definition.disks.length &&
      here.disks.every(
        (d, i) =>
          d.volume === definition.disks[i]!.volume &&
          (d.readOnly || host.storage.volumeLabels(d.volume)[REPLICA_LABEL] === label),
      );
    if (!ours) throw conflict(`a VM named ${v.name} exists at this site already: delete or rename it first`);
    return { name: v.name, definition, reuse: true };
  });
  return { group: req.group, peer, config, checkpoint, vms };
}

/** Runs a planned takeover inside its job: promote, define, start in order; the report. */
export async function runTakeover(
  host: TakeoverHost,
  plan: TakeoverPlan,
  opts: { start: boolean; peerReachable: boolean },
  ctx: JobContext,
): Promise<TakeoverReport> {
  const startedAt = new Date();
  const cp = plan.checkpoint;
  ctx.log(
    `taking over group ${plan.group} from site ${plan.peer} (${opts.peerReachable ? 'reachable' : 'unreachable'}) at checkpoint ${cp.seq}${cp.name ? ` (${cp.name})` : ''} of ${cp.time}`,
  );
  await host.replication.promote(plan.group, cp);
  ctx.log(`replica volumes ${plan.config.volumes.join(', ')} promoted to checkpoint ${cp.seq}`);
  const vms: TakeoverReport['vms'] = [];
  for (const v of plan.vms) {
    if (!v.reuse) {
      const vm = await host.compute.createRecoveredVm(
        v.name,
        v.definition,
        `${plan.group}-${cp.seq}-${Date.now().toString(36)}`,
      );
      ctx.log(`VM ${v.name} defined${vm.seed ? ' with its NoCloud seed (host name, addresses)' : ''}`);
    }
    if (!opts.start) {
      vms.push({ name: v.name, state: host.compute.vm(v.name).state });
      continue;
    }
    ctx.signal.throwIfAborted();
    host.compute.beginStart(v.name);
    try {
      const vm = await host.compute.launch(v.name);
      ctx.log(`VM ${v.name} running (QEMU pid ${vm.pid})`);
      vms.push({ name: v.name, state: vm.state, startedAt: new Date().toISOString() });
    } catch (err) {
      throw new Error(`VM ${v.name} did not start: ${errorMessage(err)}`, { cause: err });
    }
  }
  const endedAt = new Date();
  return {
    group: plan.group,
    from: plan.peer,
    peerReachable: opts.peerReachable,
    checkpoint: cp,
    dataAgeSeconds: round((startedAt.getTime() - Date.parse(cp.time)) / 1000),
    vms,
    startedAt: startedAt.toISOString(),
    endedAt: endedAt.toISOString(),
    elapsedSeconds: round((endedAt.getTime() - startedAt.getTime()) / 1000),
  };
}

/** The source's definition at this site: disks on the replica volumes, NICs on mapped networks. */
function mapped(
  host: TakeoverHost,
  def: VmDefinition,
  config: { sourceVolumes: string[]; volumes: string[] },
  networkMap: Record<string, string>,
): VmDefinition {
  const disks = def.disks.map((d) => {
    const i = config.sourceVolumes.indexOf(d.volume);
    const volume = i >= 0 ? config.volumes[i]! : d.volume;
    if (i < 0 && !host.storage.listVolumes().some((v) => v.name === volume))
      throw conflict(
        `disk ${d.volume} is not replicated (read-only at the source) and no volume of that name is at this site: import it first`,
      );
    return { ...d, volume };
  });
  const nics = def.nics.map((n) => {
    const network = networkMap[n.network] ?? n.network;
    if (!host.compute.listNetworks().some((x) => x.name === network))
      throw invalidArgument(
        `network ${network}${network !== n.network ? ` (mapped from ${n.network})` : ''} does not exist at this site: create it, or map ${n.network} to a network of this site (haven network map add, or --network-map ${n.network}=NAME)`,
      );
    return { network };
  });
  return { ...def, disks, nics };
}

export const round = (n: number) => Math.round(n * 1000) / 1000;
