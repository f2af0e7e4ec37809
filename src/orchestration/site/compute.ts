import { randomInt, randomUUID } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import { cpus, hostname, totalmem } from 'node:os';
import { join } from 'node:path';
import { HavenError, conflict, errorMessage, invalidArgument, logger, notFound } from '../../common/index.js';
import {
  GuestAgent,
  QemuVm,
  accelerator,
  checkRecoverySettings,
  hasRecoverySettings,
  nicMac,
  writeSeed,
  type RecoverySettings,
  type NicSpec,
  type VmExit,
  type VmSpec,
} from '../../compute/index.js';
import { checkName } from '../../storage/index.js';
import { now, type Db } from './database.js';
import type { EventLog } from './events.js';
import { hypervisorName } from './hypervisor.js';

const log = logger('compute');

export interface Host {
  name: string;
  address: string;
  cpus: number;
  memoryMiB: number;
  accelerator: 'kvm' | 'tcg';
  hypervisor: string;
  /** VMs on this host that QEMU is running now. */
  runningVms: number;
  createdAt: string;
}

export interface Network {
  name: string;
  /** nat: user-mode NAT to the outside; isolated: a segment shared only by the VMs on it. */
  kind: 'nat' | 'isolated';
  createdAt: string;
}

export type VmState = 'defined' | 'starting' | 'running' | 'stopping' | 'stopped' | 'crashed';

export interface VmDefinition {
  cpus: number;
  memoryMiB: number;
  /** Volumes in order: the first is the boot disk (/dev/vda). */
  disks: { volume: string; readOnly?: boolean }[];
  /** NICs in order; a MAC only where it must be stable (a recovered VM's, which its seed names). */
  nics: { network: string; mac?: string }[];
  boot: { kind: 'disk' } | { kind: 'kernel'; kernel: string; initrd?: string; cmdline?: string };
  /** A channel for the QEMU guest agent (default true): backups freeze the guest's file systems through it. */
  guestAgent?: boolean;
  /** What the guest gets where it is recovered (cloud-init NoCloud: host name, addresses per NIC). */
  recovery?: RecoverySettings;
  /** The NoCloud seed image of a recovered VM, in its run directory (set by createRecoveredVm). */
  seed?: string;
}

export interface Vm extends VmDefinition {
  id: string;
  name: string;
  host: string;
  state: VmState;
  stateReason?: string;
  pid?: number;
  createdAt: string;
  updatedAt: string;
}

interface VmRow {
  id: string;
  name: string;
  host: string;
  spec: string;
  state: VmState;
  state_reason: string | null;
  pid: number | null;
  created_at: string;
  updated_at: string;
}

interface NetworkRow {
  name: string;
  kind: Network['kind'];
  mcast_group: string | null;
  mcast_port: number | null;
  created_at: string;
}

/** What compute needs from storage: where a volume is served, and whether it exists. */
export interface VolumeAccess {
  /** The NBD URI QEMU opens for a volume. */
  uriOf(volume: string): string;
  /** Throws NOT_FOUND when the volume does not exist. */
  check(volume: string): void;
}

/**
 * The compute service of a site: hosts (the local machine first), networks and VMs, with QEMU
 * driven through the compute layer. VM processes outlive the daemon (their pid, QMP socket and
 * console log live in `runDir/<vm id>`); at start the service attaches to the VMs it left
 * running and reports honestly those that are gone.
 */
export class ComputeService {
  private readonly live = new Map<string, QemuVm>();
  readonly localHost: string;

  constructor(
    private readonly db: Db,
    private readonly events: EventLog,
    private readonly runDir: string,
    private readonly volumes: VolumeAccess,
  ) {
    this.localHost = hostname();
    this.registerLocalHost();
    if (!db.prepare('SELECT 1 FROM networks WHERE name = ?').get('nat'))
      db.prepare("INSERT INTO networks (name, kind, created_at) VALUES ('nat', 'nat', ?)").run(now());
  }

  // ---- hosts -----------------------------------------------------------------------------

  private registerLocalHost(): void {
    const hypervisor = hypervisorName(join(this.runDir, 'hypervisor.json'));
    this.db
      .prepare(
        `INSERT INTO hosts (name, address, cpus, memory_mib, accelerator, hypervisor, created_at)
         VALUES (?, '127.0.0.1', ?, ?, ?, ?, ?)
         ON CONFLICT(name) DO UPDATE SET cpus = excluded.cpus, memory_mib = excluded.memory_mib,
           accelerator = excluded.accelerator, hypervisor = excluded.hypervisor`,
      )
      .run(this.localHost, cpus().length, Math.floor(totalmem() / 2 ** 20), accelerator(), hypervisor, now());
  }

  listHosts(): Host[] {
    const rows = this.db.prepare('SELECT * FROM hosts ORDER BY name').all() as {
      name: string;
      address: string;
      cpus: number;
      memory_mib: number;
      accelerator: Host['accelerator'];
      hypervisor: string;
      created_at: string;
    }[];
    return rows.map((r) => ({
      name: r.name,
      address: r.address,
      cpus: r.cpus,
      memoryMiB: r.memory_mib,
      accelerator: r.accelerator,
      hypervisor: r.hypervisor,
      runningVms: this.listVms().filter((v) => v.host === r.name && v.state === 'running').length,
      createdAt: r.created_at,
    }));
  }

  host(name: string): Host {
    const h = this.listHosts().find((x) => x.name === name);
    if (!h) throw notFound(`no host ${name}`);
    return h;
  }

  // ---- networks --------------------------------------------------------------------------

  createNetwork(name: string, kind: Network['kind']): Network {
    checkName('network', name);
    if (this.db.prepare('SELECT 1 FROM networks WHERE name = ?').get(name))
      throw conflict(`network ${name} already exists`);
    // An isolated network is a multicast group on loopback, picked at random so that two
    // sites on one machine do not share a segment by accident.
    const group =
      kind === 'isolated' ? `239.${randomInt(0, 256)}.${randomInt(0, 256)}.${randomInt(1, 255)}` : null;
    const port = kind === 'isolated' ? randomInt(20000, 60000) : null;
    this.db
      .prepare(
        'INSERT INTO networks (name, kind, mcast_group, mcast_port, created_at) VALUES (?, ?, ?, ?, ?)',
      )
      .run(name, kind, group, port, now());
    return this.network(name);
  }

  listNetworks(): Network[] {
    return (this.db.prepare('SELECT * FROM networks ORDER BY name').all() as NetworkRow[]).map(toNetwork);
  }

  network(name: string): Network {
    return toNetwork(this.networkRow(name));
  }

  deleteNetwork(name: string): void {
    this.networkRow(name);
    const users = this.listVms().filter((v) => v.nics.some((n) => n.network === name));
    if (users.length)
      throw conflict(`network ${name} is used by VM(s) ${users.map((v) => v.name).join(', ')}`);
    this.db.prepare('DELETE FROM networks WHERE name = ?').run(name);
  }

  private networkRow(name: string): NetworkRow {
    const r = this.db.prepare('SELECT * FROM networks WHERE name = ?').get(name) as NetworkRow | undefined;
    if (!r) throw notFound(`no network ${name}`);
    return r;
  }

  // ---- VMs -------------------------------------------------------------------------------

  createVm(name: string, def: VmDefinition, host = this.localHost): Vm {
    checkName('VM', name);
    if (this.db.prepare('SELECT 1 FROM vms WHERE name = ?').get(name))
      throw conflict(`VM ${name} already exists`);
    this.host(host);
    this.checkDefinition(def);
    const id = randomUUID();
    const t = now();
    this.db
      .prepare(
        "INSERT INTO vms (id, name, host, spec, state, created_at, updated_at) VALUES (?, ?, ?, ?, 'defined', ?, ?)",
      )
      .run(id, name, host, JSON.stringify(def), t, t);
    return this.vm(name);
  }

  /**
   * A VM defined from a replica (a takeover, a migrate, a rehearsal): as createVm, and when its
   * definition has recovery settings, with stable MACs and a NoCloud seed that gives the guest
   * its host name and addresses here. `instance` changes per recovery, so cloud-init applies it.
   */
  async createRecoveredVm(name: string, def: VmDefinition, instance: string): Promise<Vm> {
    const clean: VmDefinition = { ...def };
    delete clean.seed; // never one a peer names: only the one made here
    if (!hasRecoverySettings(clean.recovery)) return this.createVm(name, clean);
    const macs = clean.nics.map((_, i) => nicMac(name, i));
    const vm = this.createVm(name, { ...clean, nics: clean.nics.map((n, i) => ({ ...n, mac: macs[i]! })) });
    try {
      const dir = join(this.runDir, vm.id);
      mkdirSync(dir, { recursive: true });
      const seed = await writeSeed(dir, name, instance, clean.recovery, macs);
      this.writeSpec(vm.id, { ...this.specOf(vm.id), seed });
      return this.vm(name);
    } catch (err) {
      this.deleteVm(name); // no VM without the seed it was promised
      throw err;
    }
  }

  /** Replaces (or with {} clears) what a VM's guest gets where it is recovered. */
  setRecovery(name: string, raw: unknown): Vm {
    const vm = this.vm(name);
    const settings = checkRecoverySettings(name, raw, vm.nics.length);
    const spec = this.specOf(vm.id);
    delete spec.recovery;
    if (hasRecoverySettings(settings)) spec.recovery = settings;
    this.writeSpec(vm.id, spec);
    return this.vm(name);
  }

  private specOf(id: string): VmDefinition {
    const r = this.db.prepare('SELECT spec FROM vms WHERE id = ?').get(id) as { spec: string };
    return JSON.parse(r.spec) as VmDefinition;
  }

  private writeSpec(id: string, def: VmDefinition): void {
    this.db
      .prepare('UPDATE vms SET spec = ?, updated_at = ? WHERE id = ?')
      .run(JSON.stringify(def), now(), id);
  }

  listVms(): Vm[] {
    return (this.db.prepare('SELECT * FROM vms ORDER BY name').all() as VmRow[]).map(toVm);
  }

  vm(name: string): Vm {
    const r = this.db.prepare('SELECT * FROM vms WHERE name = ?').get(name) as VmRow | undefined;
    if (!r) throw notFound(`no VM ${name}`);
    return toVm(r);
  }

  /** VMs (not stopped) whose disks include `volume`. */
  usersOf(volume: string): Vm[] {
    return this.listVms().filter((v) => v.disks.some((d) => d.volume === volume));
  }

  deleteVm(name: string): void {
    const vm = this.vm(name);
    if (isActive(vm.state)) throw conflict(`VM ${name} is ${vm.state}; stop it before deleting it`);
    this.db.prepare('DELETE FROM vms WHERE id = ?').run(vm.id);
    rmSync(join(this.runDir, vm.id), { recursive: true, force: true });
  }

  /** Claims a VM for starting (state starting); throws CONFLICT when it cannot start now. */
  beginStart(name: string): Vm {
    const vm = this.vm(name);
    if (isActive(vm.state)) throw conflict(`VM ${name} is already ${vm.state}`);
    this.checkDefinition(vm);
    for (const d of vm.disks) {
      const other = this.usersOf(d.volume).find((u) => u.id !== vm.id && isActive(u.state));
      if (other) throw conflict(`volume ${d.volume} is in use by VM ${other.name}, which is ${other.state}`);
    }
    this.setState(vm.id, 'starting', 'start requested');
    return this.vm(name);
  }

  /** Launches QEMU for a VM claimed by beginStart. */
  async launch(name: string): Promise<Vm> {
    const vm = this.vm(name);
    try {
      const spec = this.qemuSpec(vm);
      const qemu = await QemuVm.start(spec, join(this.runDir, vm.id));
      this.watch(vm, qemu);
      this.setState(vm.id, 'running', 'started', qemu.pid);
      return this.vm(name);
    } catch (err) {
      this.setState(vm.id, 'stopped', `start failed: ${errorMessage(err)}`);
      throw err;
    }
  }

  /** Stops a running VM: ACPI power-off, then quit after `graceMs`, then kill; or kill at once. */
  async stop(name: string, opts: { force?: boolean; graceMs?: number } = {}): Promise<Vm> {
    const vm = this.vm(name);
    const qemu = this.live.get(vm.id);
    if (!qemu || vm.state !== 'running')
      throw conflict(`VM ${name} is ${vm.state}, not running: nothing to stop`);
    this.setState(vm.id, 'stopping', opts.force ? 'forced stop requested' : 'stop requested');
    const exit = opts.force ? await qemu.kill() : await qemu.stop(opts.graceMs ?? 30_000);
    this.onExit(vm, exit);
    return this.vm(name);
  }

  /** Where QEMU writes a VM's serial console (the file goes with the VM when it is deleted). */
  consoleLogPath(name: string): string {
    return join(this.runDir, this.vm(name).id, 'console.log');
  }

  consoleLog(name: string, maxBytes = 64 * 1024): string {
    const path = this.consoleLogPath(name);
    if (!existsSync(path)) return '';
    const data = readFileSync(path);
    return data.subarray(Math.max(0, data.length - maxBytes)).toString('utf8');
  }

  /** The live QEMU of a running VM (for protection operations that drive QMP). */
  qemuOf(name: string): QemuVm {
    const vm = this.vm(name);
    const q = this.live.get(vm.id);
    if (!q) throw conflict(`VM ${name} is ${vm.state}, not running`);
    return q;
  }

  /**
   * A synchronised session with a running VM's guest agent; rejects (within about `timeoutMs`)
   * when the VM is not running, has no agent channel, or its agent does not answer.
   */
  async guestAgent(name: string, timeoutMs: number): Promise<GuestAgent> {
    const vm = this.vm(name);
    const q = this.live.get(vm.id);
    if (!q) throw conflict(`VM ${name} is ${vm.state}: no guest agent to ask`);
    const socket = q.guestAgentSocket();
    if (!socket)
      throw new HavenError(
        'UNSUPPORTED',
        vm.guestAgent === false
          ? `VM ${name} has no guest agent channel (defined with guestAgent false)`
          : `VM ${name} has no guest agent channel (started before Haven gave VMs one: restart it)`,
      );
    return GuestAgent.connect(socket, timeoutMs);
  }

  /** After a daemon (re)start: attach to the VMs left running; report the ones that are gone. */
  async reattach(): Promise<{ attached: string[]; lost: string[] }> {
    const attached: string[] = [];
    const lost: string[] = [];
    for (const vm of this.listVms().filter((v) => isActive(v.state))) {
      try {
        const qemu = await QemuVm.attach(join(this.runDir, vm.id), vm.id);
        this.watch(vm, qemu);
        this.setState(vm.id, 'running', 'reattached after a site daemon restart', qemu.pid);
        attached.push(vm.name);
        this.events.append({
          actor: 'site',
          action: 'vm.reattach',
          target: vm.name,
          outcome: 'ok',
          message: `VM ${vm.name} is still running (pid ${qemu.pid}); reattached`,
        });
      } catch (err) {
        const reason = `found not running when the site daemon started: ${errorMessage(err)}`;
        this.setState(vm.id, vm.state === 'stopping' ? 'stopped' : 'crashed', reason);
        lost.push(vm.name);
        this.events.append({
          actor: 'site',
          action: 'vm.reattach',
          target: vm.name,
          outcome: 'warning',
          message: `VM ${vm.name} ${reason}`,
        });
      }
    }
    return { attached, lost };
  }

  /** The daemon is going away: VMs go on running, unwatched, until the next daemon attaches. */
  detachAll(): void {
    for (const q of this.live.values()) q.detach();
    this.live.clear();
  }

  private watch(vm: Vm, qemu: QemuVm): void {
    this.live.set(vm.id, qemu);
    qemu.once('exit', (exit: VmExit) => this.onExit(vm, exit));
  }

  private onExit(vm: Vm, exit: VmExit): void {
    if (!this.live.has(vm.id)) return; // already recorded
    this.live.delete(vm.id);
    this.setState(vm.id, exit.crashed ? 'crashed' : 'stopped', exit.reason);
    this.events.append({
      actor: 'site',
      action: 'vm.exit',
      target: vm.name,
      outcome: exit.crashed ? 'warning' : 'info',
      message: `VM ${vm.name} ${exit.crashed ? 'crashed' : 'stopped'}: ${exit.reason}`,
    });
    log.info({ vm: vm.name, ...exit }, 'VM exited');
  }

  private setState(id: string, state: VmState, reason: string, pid?: number): void {
    this.db
      .prepare('UPDATE vms SET state = ?, state_reason = ?, pid = ?, updated_at = ? WHERE id = ?')
      .run(state, reason, pid ?? null, now(), id);
  }

  private checkDefinition(def: VmDefinition): void {
    if (!Number.isInteger(def.cpus) || def.cpus < 1 || def.cpus > 64)
      throw invalidArgument(`cpus must be a whole number from 1 to 64, not ${def.cpus}`);
    if (!Number.isInteger(def.memoryMiB) || def.memoryMiB < 16)
      throw invalidArgument(`memoryMiB must be at least 16, not ${def.memoryMiB}`);
    if (def.disks.length === 0 && def.boot.kind === 'disk')
      throw invalidArgument('a VM that boots from disk needs at least one disk');
    for (const d of def.disks) this.volumes.check(d.volume);
    for (const n of def.nics) this.networkRow(n.network);
    if (def.recovery) checkRecoverySettings('(new)', def.recovery, def.nics.length);
    if (def.boot.kind === 'kernel')
      for (const [what, path] of [
        ['kernel', def.boot.kernel],
        ['initrd', def.boot.initrd],
      ] as const)
        if (path !== undefined && !existsSync(path))
          throw invalidArgument(`boot.${what} ${path} does not exist on host ${this.localHost}`);
  }

  private qemuSpec(vm: Vm): VmSpec {
    return {
      id: vm.id,
      name: vm.name,
      cpus: vm.cpus,
      memoryMiB: vm.memoryMiB,
      disks: vm.disks.map((d) => ({
        source: this.volumes.uriOf(d.volume),
        ...(d.readOnly ? { readOnly: true } : {}),
      })),
      nics: vm.nics.map((n): NicSpec => {
        const r = this.networkRow(n.network);
        const mac = n.mac ? { mac: n.mac } : {};
        return r.kind === 'nat'
          ? { network: { kind: 'user' }, ...mac }
          : {
              network: { kind: 'isolated', name: r.name, group: r.mcast_group!, port: r.mcast_port! },
              ...mac,
            };
      }),
      boot: vm.boot,
      ...(vm.guestAgent === false ? { guestAgent: false } : {}),
      ...(vm.seed ? { seed: vm.seed } : {}),
    };
  }
}

function isActive(state: VmState): boolean {
  return state === 'starting' || state === 'running' || state === 'stopping';
}

function toNetwork(r: NetworkRow): Network {
  return { name: r.name, kind: r.kind, createdAt: r.created_at };
}

function toVm(r: VmRow): Vm {
  const def = JSON.parse(r.spec) as VmDefinition;
  return {
    id: r.id,
    name: r.name,
    host: r.host,
    ...def,
    state: r.state,
    ...(r.state_reason ? { stateReason: r.state_reason } : {}),
    ...(r.pid ? { pid: r.pid } : {}),
    createdAt: r.created_at,
    updatedAt: r.updated_at,
  };
}
