/**
 * Starting and stopping a business service at this site in its order: tier by tier (every VM of
 * a tier running before the next tier starts, the service's boot delay between tiers), and stopped
 * in reverse (the last tier first; ACPI, hard after the grace). VMs already as wanted are left so.
 */
import { conflict, invalidArgument } from '../../common/index.js';
import type { ComputeService } from './compute.js';
import type { JobContext } from './jobs.js';
import type { SiteReplication } from './replication.js';
import type { BusinessService } from './services.js';
import { tierByTier, type ServiceReport } from './dr-services.js';

export interface ServicePowerHost {
  compute: ComputeService;
  replication: SiteReplication;
  /** Why a VM must not start here (fenced, or its disks are replicas), if so. */
  fencedBy: ((vm: string) => string | undefined) | undefined;
}

export interface ServicePowerGroup {
  group: string;
  vms: { name: string; action: 'started' | 'stopped' | 'already'; at: string }[];
}

/**
 * The VMs of each group of the service here: those whose disks are the group's volumes at this
 * site (its sources, or its replicas once taken over), in the group's order where it has one.
 */
function vmsOf(h: ServicePowerHost, s: BusinessService): Map<string, string[]> {
  const out = new Map<string, string[]>();
  const all = h.compute.listVms();
  for (const g of s.tiers.flat()) {
    const a = h.replication.show(g);
    const local = new Set(a.volumes.map((v) => (a.role === 'source' ? v.source : v.replica)));
    const here = all.filter((vm) => vm.disks.some((d) => local.has(d.volume))).map((vm) => vm.name);
    const order = a.vms ?? [];
    const rank = (vm: string) => (order.includes(vm) ? order.indexOf(vm) : order.length);
    here.sort((x, y) => rank(x) - rank(y));
    if (!here.length)
      throw conflict(
        `replication group ${g} of business service ${s.name} has no VMs at this site (run it where the group runs)`,
      );
    out.set(g, here);
  }
  return out;
}

/** Checks the start (every VM known and allowed to run here) before anything starts. */
export function planServiceStart(h: ServicePowerHost, s: BusinessService): Map<string, string[]> {
  const vms = vmsOf(h, s);
  for (const list of vms.values())
    for (const vm of list) {
      const why = h.compute.vm(vm).state === 'running' ? undefined : h.fencedBy?.(vm);
      if (why) throw conflict(`business service ${s.name} cannot start here: ${why}`);
    }
  return vms;
}

export async function runServiceStart(
  h: ServicePowerHost,
  s: BusinessService,
  vms: Map<string, string[]>,
  ctx: JobContext,
): Promise<ServiceReport<ServicePowerGroup>> {
  return tierByTier(s, ctx, async (i) => {
    const out: ServicePowerGroup[] = [];
    for (const group of s.tiers[i]!) {
      const g: ServicePowerGroup = { group, vms: [] };
      for (const vm of vms.get(group)!) {
        if (h.compute.vm(vm).state === 'running') {
          g.vms.push({ name: vm, action: 'already', at: new Date().toISOString() });
          continue;
        }
        ctx.log(`starting VM ${vm} (group ${group})`);
        h.compute.beginStart(vm);
        await h.compute.launch(vm);
        g.vms.push({ name: vm, action: 'started', at: new Date().toISOString() });
      }
      out.push(g);
    }
    return out;
  });
}

export function planServiceStop(h: ServicePowerHost, s: BusinessService, graceSeconds: number) {
  if (!Number.isFinite(graceSeconds) || graceSeconds < 0)
    throw invalidArgument(`grace ${graceSeconds}: seconds, at least 0`);
  return vmsOf(h, s);
}

/** Stops the service: its tiers in reverse, each tier's groups and VMs in reverse too. */
export async function runServiceStop(
  h: ServicePowerHost,
  s: BusinessService,
  vms: Map<string, string[]>,
  graceSeconds: number,
  ctx: JobContext,
): Promise<ServiceReport<ServicePowerGroup>> {
  const reversed: BusinessService = {
    ...s,
    tiers: [...s.tiers].reverse().map((t) => [...t].reverse()),
    bootDelaySeconds: 0,
  };
  return tierByTier(reversed, ctx, async (i) => {
    const out: ServicePowerGroup[] = [];
    for (const group of reversed.tiers[i]!) {
      const g: ServicePowerGroup = { group, vms: [] };
      for (const vm of [...vms.get(group)!].reverse()) {
        if (h.compute.vm(vm).state !== 'running') {
          g.vms.push({ name: vm, action: 'already', at: new Date().toISOString() });
          continue;
        }
        ctx.log(`stopping VM ${vm} (group ${group}; ACPI power-off, hard after ${graceSeconds} s)`);
        await h.compute.stop(vm, { graceMs: graceSeconds * 1000 });
        g.vms.push({ name: vm, action: 'stopped', at: new Date().toISOString() });
      }
      out.push(g);
    }
    return out;
  });
}
