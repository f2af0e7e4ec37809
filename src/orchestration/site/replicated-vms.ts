import { invalidArgument } from '../../common/index.js';
import { checkRecoverySettings } from '../../compute/index.js';
import { checkName } from '../../storage/index.js';
import type { Vm, VmDefinition } from './compute.js';
import type { ReplicatedVm } from './replication-groups.js';

/** A VM as the source tells its target: the definition, without this site's ids and state. */
export function describeVm(vm: Vm): ReplicatedVm {
  const definition: VmDefinition = {
    cpus: vm.cpus,
    memoryMiB: vm.memoryMiB,
    disks: vm.disks.map((d) => ({ volume: d.volume, ...(d.readOnly ? { readOnly: true } : {}) })),
    nics: vm.nics.map((n) => ({ network: n.network })),
    boot: vm.boot,
    ...(vm.guestAgent !== undefined ? { guestAgent: vm.guestAgent } : {}),
    ...(vm.recovery ? { recovery: vm.recovery } : {}),
  };
  return { name: vm.name, definition };
}

/**
 * VMs described by a peer: authenticated, not trusted to be well formed. The definition's
 * details are checked again when a takeover creates the VM (as any VM's are).
 */
export function replicatedVms(raw: unknown, op: string): ReplicatedVm[] {
  const bad = (what: string) => invalidArgument(`${op}: ${what}`);
  if (!Array.isArray(raw)) throw bad('vms is not a list');
  return raw.map((x: unknown) => {
    const v = x as Partial<ReplicatedVm> | null;
    if (!v || typeof v.name !== 'string') throw bad('a VM without a name');
    checkName('VM', v.name);
    const d = v.definition as Partial<VmDefinition> | undefined;
    if (!d || typeof d !== 'object') throw bad(`VM ${v.name}: no definition`);
    if (!Number.isInteger(d.cpus) || !Number.isInteger(d.memoryMiB))
      throw bad(`VM ${v.name}: cpus or memory`);
    if (!Array.isArray(d.disks) || d.disks.some((k) => !k || typeof k.volume !== 'string'))
      throw bad(`VM ${v.name}: disks`);
    if (!Array.isArray(d.nics) || d.nics.some((n) => !n || typeof n.network !== 'string'))
      throw bad(`VM ${v.name}: nics`);
    if (!d.boot || (d.boot.kind !== 'disk' && d.boot.kind !== 'kernel')) throw bad(`VM ${v.name}: boot`);
    const definition = { ...(d as VmDefinition) };
    delete definition.seed; // made where the VM is recovered, never named by a peer
    for (const n of definition.nics) delete n.mac;
    if (definition.recovery !== undefined)
      definition.recovery = checkRecoverySettings(v.name, definition.recovery, definition.nics.length);
    return { name: v.name, definition };
  });
}
