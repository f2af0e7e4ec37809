import { conflict, errorMessage } from '../../common/index.js';
import type { VmDefinition } from './compute.js';
import { SiteDomain, type Actor, type SiteParts } from './domain.js';
import type { Job } from './jobs.js';
import type { InstantRecoveryRequest, RecoveryService } from './recovery.js';

/** Networks and VMs of a site, and VMs run straight from a backup. */
export class SiteVms extends SiteDomain {
  constructor(
    parts: SiteParts,
    private readonly recovery: RecoveryService,
  ) {
    super(parts);
  }

  createNetwork(actor: Actor, name: string, kind: 'nat' | 'isolated') {
    return this.audited(actor, 'network.create', name, () => this.compute.createNetwork(name, kind));
  }

  deleteNetwork(actor: Actor, name: string): void {
    this.audited(actor, 'network.delete', name, () => this.compute.deleteNetwork(name));
  }

  createVm(actor: Actor, name: string, def: VmDefinition) {
    return this.audited(actor, 'vm.create', name, () => this.compute.createVm(name, def));
  }

  /** What the VM's guest gets where it is recovered (NoCloud); a replicated VM's target is told. */
  setRecovery(actor: Actor, name: string, settings: unknown) {
    return this.audited(
      actor,
      'vm.recovery',
      name,
      () => this.compute.setRecovery(name, settings),
      (vm) =>
        vm.recovery
          ? `recovery settings of VM ${name}: ${[
              ...(vm.recovery.hostname ? [`host name ${vm.recovery.hostname}`] : []),
              ...(vm.recovery.nics ?? []).map((n, i) => `NIC ${i} ${n.address ?? 'as it is'}`),
            ].join(', ')}`
          : `recovery settings of VM ${name} cleared`,
    );
  }

  deleteVm(actor: Actor, name: string): void {
    this.audited(actor, 'vm.delete', name, () => {
      this.refuseIfReplicated('vm', name);
      this.compute.deleteVm(name);
      this.policy?.forgetObject('vm', name);
    });
  }

  startVm(actor: Actor, name: string): Job {
    const fenced = this.fencedBy?.(name);
    if (fenced) throw conflict(fenced);
    this.compute.beginStart(name); // conflicts are answered now, not in the job
    return this.jobs.start({ kind: 'vm.start', target: name, actor }, async (ctx) => {
      const vm = await this.compute.launch(name);
      ctx.log(`QEMU running as pid ${vm.pid}`);
      return vm;
    });
  }

  stopVm(actor: Actor, name: string, opts: { force?: boolean; graceSeconds?: number }): Job {
    const vm = this.compute.vm(name);
    if (vm.state !== 'running') throw conflict(`VM ${name} is ${vm.state}, not running: nothing to stop`);
    return this.jobs.start({ kind: 'vm.stop', target: name, actor }, async (ctx) => {
      ctx.log(opts.force ? 'killing QEMU' : 'asking the guest to power off (ACPI)');
      return this.compute.stop(name, {
        ...(opts.force ? { force: true } : {}),
        ...(opts.graceSeconds !== undefined ? { graceMs: opts.graceSeconds * 1000 } : {}),
      });
    });
  }

  /** Runs a VM straight from a VM backup (see RecoveryService); audited. */
  async recoverInstant(actor: Actor, req: InstantRecoveryRequest) {
    const target = req.name ?? req.snapshot;
    try {
      const r = await this.recovery.instant(req);
      this.events.append({
        actor,
        action: 'recovery.instant',
        target: r.vm.name,
        outcome: 'ok',
        message: `VM ${r.vm.name} runs from backup ${req.snapshot} (started in ${r.seconds.toFixed(1)} s)`,
      });
      return r;
    } catch (err) {
      this.events.append({
        actor,
        action: 'recovery.instant',
        target,
        outcome: 'failed',
        message: `instant recovery of ${req.snapshot}: ${errorMessage(err)}`,
      });
      throw err;
    }
  }
}
