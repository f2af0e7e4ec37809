import { conflict, errorMessage } from '../../common/index.js';
import type { StorageExports, StorageService } from '../../storage/index.js';
import { parseHeartbeat, waitForHeartbeat } from './check-heartbeat.js';
import type { ComputeService } from './compute.js';
import { now } from './database.js';
import type { NetworkMaps } from './network-maps.js';
import type { JobContext } from './jobs.js';
import type { RecoveredCheckpoint, RehearsalRecord } from './replication-groups.js';
import type { SiteReplication } from './replication.js';

export interface RehearsalRequest {
  group: string;
  /** The checkpoint to rehearse: "newest" (default), its sequence number, or its name. */
  checkpoint?: string;
  /** How each VM shows it is up: agent (default), console:REGEX or tcp:HOST:PORT. */
  heartbeat?: string;
  /** Seconds each VM has to show it (default 120). */
  timeoutSeconds?: number;
  /** An existing network for every NIC (default: an isolated network made for the rehearsal). */
  network?: string;
}

export interface RehearsalReport {
  group: string;
  checkpoint: RecoveredCheckpoint;
  network?: string;
  /** Source networks whose NICs joined their stored rehearsal network instead. */
  networkMap?: Record<string, string>;
  vms: { name: string; of: string; passed: boolean; detail: string; bootSeconds?: number }[];
  passed: boolean;
  startedAt: string;
  endedAt: string;
}

export interface RehearsalHost {
  replication: SiteReplication;
  compute: ComputeService;
  storage: StorageService;
  exports: StorageExports;
  /** The stored network maps per peer: their rehearsal networks, where set. */
  networkMaps?: NetworkMaps;
}

const SUFFIX = '-rehearsal';

/**
 * What a rehearsal makes, checked first (nothing is made on a refusal): the record that the job
 * then makes real and that `cleanupRehearsal` undoes.
 */
export function planRehearsal(host: RehearsalHost, req: RehearsalRequest): RehearsalRecord {
  const { peer, config } = host.replication.replicaOf(req.group); // refuses a running rehearsal too
  const checkpoint = host.replication.checkpointOf(req.group, req.checkpoint);
  parseHeartbeat(req.heartbeat); // a bad one is refused now
  if (!config.vms?.length)
    throw conflict(`replication group ${req.group}: site ${peer} never described its VMs to this site`);
  if (req.network !== undefined) host.compute.network(req.network); // NOT_FOUND names it
  // Without --network, the stored rehearsal networks of the peer's networks; the rest join one made here.
  const stored = req.network === undefined ? (host.networkMaps?.rehearsal(peer) ?? {}) : {};
  const sources = [...new Set(config.vms.flatMap((v) => v.definition.nics.map((n) => n.network)))];
  const nicNetworks = Object.fromEntries(sources.filter((n) => stored[n]).map((n) => [n, stored[n]!]));
  for (const n of Object.values(nicNetworks)) host.compute.network(n); // deleted since it was mapped?
  const allMapped = sources.length > 0 && sources.every((n) => nicNetworks[n]);
  const network = req.network ?? (allMapped ? undefined : `${req.group}${SUFFIX}`);
  const taken = (what: string, name: string) =>
    conflict(`a ${what} named ${name} exists at this site already: the rehearsal needs the name`);
  if (
    req.network === undefined &&
    network !== undefined &&
    host.compute.listNetworks().some((n) => n.name === network)
  )
    throw taken('network', network);
  const volumes = config.volumes.map((v) => `${v}${SUFFIX}`);
  for (const v of volumes) if (host.storage.listVolumes().some((x) => x.name === v)) throw taken('volume', v);
  const vms = config.vms.map((v) => ({ name: `${v.name}${SUFFIX}`, of: v.name }));
  for (const v of vms) if (host.compute.listVms().some((x) => x.name === v.name)) throw taken('VM', v.name);
  return {
    startedAt: now(),
    checkpoint,
    vms,
    volumes,
    ...(network !== undefined ? { network } : {}),
    madeNetwork: req.network === undefined && network !== undefined,
    ...(Object.keys(nicNetworks).length ? { nicNetworks } : {}),
  };
}

/**
 * A rehearsal (a test failover) at the site holding the replica: clones of the checkpoint's
 * volumes (instant, copy-on-write; replication goes on applying beside them), the group's VMs
 * defined over them as NAME-rehearsal on an isolated network — no route to production, so a
 * rehearsal VM can never clash with the running one — started in order, each checked by its
 * heartbeat. The VMs stay up for people to look at until `cleanupRehearsal`.
 */
export async function runRehearsal(
  host: RehearsalHost,
  req: RehearsalRequest,
  record: RehearsalRecord,
  ctx: JobContext,
): Promise<RehearsalReport> {
  const { config } = host.replication.replicaOf(req.group);
  host.replication.setRehearsal(req.group, record); // first: a cleanup finds whatever gets made
  const heartbeat = parseHeartbeat(req.heartbeat);
  const timeoutSeconds = req.timeoutSeconds ?? 120;
  if (record.madeNetwork) host.compute.createNetwork(record.network!, 'isolated');
  config.volumes.forEach((v, i) => host.storage.clone(v, record.checkpoint.snapshot, record.volumes[i]!));
  host.exports.refresh();
  ctx.log(
    `checkpoint ${record.checkpoint.seq} of ${record.checkpoint.time} cloned to ${record.volumes.join(', ')}; network ${[record.network, ...Object.values(record.nicNetworks ?? {})].filter(Boolean).join(', ')}`,
  );
  const report: RehearsalReport['vms'] = [];
  for (const [i, v] of config.vms!.entries()) {
    const name = record.vms[i]!.name;
    const def = v.definition;
    await host.compute.createRecoveredVm(
      name,
      {
        ...def,
        disks: def.disks.map((d) => {
          const k = config.sourceVolumes.indexOf(d.volume);
          return { ...d, volume: k >= 0 ? record.volumes[k]! : d.volume };
        }),
        nics: def.nics.map((n) => ({ network: record.nicNetworks?.[n.network] ?? record.network! })),
      },
      `${req.group}-rehearsal-${record.checkpoint.seq}-${Date.now().toString(36)}`,
    );
    const t0 = Date.now();
    try {
      host.compute.beginStart(name);
      await host.compute.launch(name);
      const detail = await waitForHeartbeat(host.compute, name, heartbeat, {
        timeoutSeconds,
        signal: ctx.signal,
      });
      report.push({ name, of: v.name, passed: true, detail, bootSeconds: (Date.now() - t0) / 1000 });
      ctx.log(`VM ${name}: ${detail}`);
    } catch (err) {
      report.push({ name, of: v.name, passed: false, detail: errorMessage(err) });
      ctx.log(`VM ${name}: ${errorMessage(err)}`, 'error');
    }
  }
  return {
    group: req.group,
    checkpoint: record.checkpoint,
    ...(record.network ? { network: record.network } : {}),
    ...(record.nicNetworks ? { networkMap: record.nicNetworks } : {}),
    vms: report,
    passed: report.every((v) => v.passed),
    startedAt: record.startedAt,
    endedAt: now(),
  };
}

/** Removes every trace of a group's rehearsal (also a half-made one): VMs, clones, its network. */
export async function cleanupRehearsal(
  host: RehearsalHost,
  group: string,
): Promise<{ group: string; removed: string[] }> {
  const r = host.replication.rehearsalOf(group);
  if (!r) throw conflict(`replication group ${group} has no rehearsal to clean up`);
  const removed: string[] = [];
  for (const v of r.vms) {
    const vm = host.compute.listVms().find((x) => x.name === v.name);
    if (!vm) continue;
    if (vm.state === 'running') await host.compute.stop(v.name, { force: true });
    host.compute.deleteVm(v.name);
    removed.push(`VM ${v.name}`);
  }
  for (const v of r.volumes) {
    if (!host.storage.listVolumes().some((x) => x.name === v)) continue;
    host.exports.withdraw(v);
    host.storage.deleteVolume(v);
    removed.push(`volume ${v}`);
  }
  if (r.madeNetwork && r.network && host.compute.listNetworks().some((n) => n.name === r.network)) {
    host.compute.deleteNetwork(r.network);
    removed.push(`network ${r.network}`);
  }
  host.replication.setRehearsal(group, undefined);
  return { group, removed };
}
