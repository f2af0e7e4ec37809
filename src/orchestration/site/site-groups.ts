import { conflict, invalidArgument } from '../../common/index.js';
import { SiteDomain, type Actor, type SiteParts } from './domain.js';
import type { ResiliencyGroupRow, ResiliencyGroupStore } from './resiliency-groups.js';
import type { ReplicationGroupAnswer, SiteReplication } from './replication.js';
import type { BusinessServices } from './services.js';

/** A resiliency group as the API shows it: its VMs, and how (whether) it is protected. */
export interface ResiliencyGroup {
  name: string;
  description?: string;
  /** The VMs, in start order within the group. */
  vms: string[];
  /** Defined here (haven group create), or known only as a replica of a paired site's group. */
  defined: boolean;
  /** How the group replicates, when it does: DR operations need it. */
  replication?: {
    role: 'source' | 'target';
    peer: string;
    state?: string;
    rpoSeconds?: number;
    rpoObjectiveSeconds?: number;
    takenOver?: boolean;
  };
  /** The business service the group is a tier of, if any. */
  service?: string;
  createdAt: string;
}

export interface CreateGroupRequest {
  name: string;
  vms?: string[];
  description?: string;
}

/**
 * Resiliency groups: the operator's sets of VMs that are protected and recovered together. One
 * replicates as one consistency group (`haven replication enable --group G` takes its VMs), so
 * its membership is fixed while it replicates: a replica cannot grow a disk it never synced.
 */
export class SiteGroups extends SiteDomain {
  constructor(
    parts: SiteParts,
    private readonly store: ResiliencyGroupStore,
    private readonly replication: SiteReplication,
    private readonly services: () => BusinessServices,
  ) {
    super(parts);
  }

  list(): ResiliencyGroup[] {
    const defined = new Map(this.store.list().map((g) => [g.name, g]));
    const replicated = new Map(this.replication.list().map((g) => [g.name, g]));
    const names = [...new Set([...defined.keys(), ...replicated.keys()])].sort();
    return names.map((n) => this.view(n, defined.get(n), replicated.get(n)));
  }

  show(name: string): ResiliencyGroup {
    const g = this.store.find(name);
    const r = this.replication.hasGroup(name) ? this.replication.show(name) : undefined;
    if (!g && !r) this.store.get(name); // NOT_FOUND, naming the group
    return this.view(name, g, r);
  }

  create(actor: Actor, req: CreateGroupRequest): ResiliencyGroup {
    return this.audited(
      actor,
      'group.create',
      req.name,
      () => {
        if (this.replication.hasGroup(req.name))
          throw conflict(`${req.name} names a replication group here already (haven group show ${req.name})`);
        const vms = req.vms ?? [];
        this.checkVms(req.name, vms);
        this.store.create(req.name, vms, req.description);
        return this.show(req.name);
      },
      (g) => `group ${g.name}${g.vms.length ? `: VM(s) ${g.vms.join(', ')}` : ', no VMs yet'}`,
    );
  }

  add(actor: Actor, name: string, vms: string[]): ResiliencyGroup {
    return this.audited(
      actor,
      'group.add',
      name,
      () => {
        this.refuseIfReplicating(name, 'join');
        this.checkVms(name, vms);
        this.store.add(name, vms);
        return this.show(name);
      },
      () => `VM(s) ${vms.join(', ')} joined group ${name}`,
    );
  }

  remove(actor: Actor, name: string, vms: string[]): ResiliencyGroup {
    return this.audited(
      actor,
      'group.remove',
      name,
      () => {
        this.refuseIfReplicating(name, 'leave');
        if (!vms.length) throw invalidArgument(`name at least one VM to remove from group ${name}`);
        this.store.remove(name, vms);
        return this.show(name);
      },
      () => `VM(s) ${vms.join(', ')} left group ${name}`,
    );
  }

  delete(actor: Actor, name: string): { name: string } {
    return this.audited(actor, 'group.delete', name, () => {
      this.store.get(name);
      if (this.replication.hasGroup(name))
        throw conflict(
          `group ${name} replicates: disable its replication first (haven replication disable ${name})`,
        );
      const s = this.services().ofGroup(name);
      if (s)
        throw conflict(
          `group ${name} is a tier of business service ${s.name}: change or delete the service first`,
        );
      this.store.delete(name);
      return { name };
    });
  }

  /** Every VM known here, and none replicated by another group (whose consistency it would split). */
  private checkVms(group: string, vms: string[]): void {
    for (const vm of vms) {
      this.compute.vm(vm); // NOT_FOUND for an unknown VM
      const by = this.replication.groupOfVm(vm);
      if (by && by !== group)
        throw conflict(`VM ${vm} is replicated by group ${by} already: a VM belongs to at most one group`);
    }
  }

  private refuseIfReplicating(name: string, verb: 'join' | 'leave'): void {
    this.store.get(name);
    if (!this.replication.hasGroup(name)) return;
    const r = this.replication.show(name);
    throw conflict(
      r.role === 'source'
        ? `group ${name} replicates to site ${r.peer} as one consistency group: no VM can ${verb} it while it does (the replica would ${verb === 'join' ? 'lack the new disks' : 'keep disks nobody writes'}); disable its replication (haven replication disable ${name}), change the group, and enable it again`
        : `group ${name} here is the replica of site ${r.peer}'s group: change it at ${r.peer}`,
    );
  }

  private view(
    name: string,
    g: ResiliencyGroupRow | undefined,
    r: ReplicationGroupAnswer | undefined,
  ): ResiliencyGroup {
    const service = this.services().ofGroup(name)?.name;
    return {
      name,
      ...(g?.description !== undefined ? { description: g.description } : {}),
      vms: g?.vms ?? r?.vms ?? [],
      defined: g !== undefined,
      ...(r
        ? {
            replication: {
              role: r.role,
              peer: r.peer,
              ...(r.source?.state ? { state: r.source.state } : {}),
              ...(r.source?.rpoSeconds !== undefined ? { rpoSeconds: r.source.rpoSeconds } : {}),
              ...(r.rpoObjectiveSeconds !== undefined ? { rpoObjectiveSeconds: r.rpoObjectiveSeconds } : {}),
              ...(r.takenOver ? { takenOver: true } : {}),
            },
          }
        : {}),
      ...(service ? { service } : {}),
      createdAt: g?.createdAt ?? r!.createdAt,
    };
  }
}
