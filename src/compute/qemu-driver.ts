import { spawn, spawnSync } from 'node:child_process';
import { EventEmitter } from 'node:events';
import {
  existsSync,
  mkdirSync,
  openSync,
  closeSync,
  readFileSync,
  rmSync,
  statSync,
  readSync,
} from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { HavenError, invalidArgument, logger } from '../common/index.js';
import type { DiskSpec, NicSpec, VmExit, VmSpec, VmState } from './model.js';
import { GUEST_AGENT_PORT } from './guest-agent.js';
import { QmpClient, type QmpEvent } from './qmp.js';

const log = logger('qemu');
const QEMU = 'qemu-system-x86_64';

let accelCache: 'kvm' | 'tcg' | undefined;

/** KVM when /dev/kvm works (a probe QEMU starts with it), TCG otherwise; HAVEN_ACCEL overrides. */
export function accelerator(): 'kvm' | 'tcg' {
  const forced = process.env.HAVEN_ACCEL;
  if (forced === 'kvm' || forced === 'tcg') return forced;
  if (accelCache) return accelCache;
  accelCache = 'tcg';
  // Some sandboxes expose /dev/kvm without hardware virtualisation (no vmx/svm): a guest then
  // hangs, so the CPU flag must be there too.
  const cpuFlags = readFileSync('/proc/cpuinfo', 'utf8');
  if (existsSync('/dev/kvm') && /^flags\s*:.*\b(vmx|svm)\b/m.test(cpuFlags)) {
    // Nested KVM may open and then fail: only a QEMU that starts with it proves it works.
    const r = spawnSync(
      QEMU,
      ['-accel', 'kvm', '-machine', 'none', '-display', 'none', '-nodefaults', '-S', '-qmp', 'stdio'],
      {
        input: '{"execute":"qmp_capabilities"}\n{"execute":"quit"}\n',
        timeout: 5000,
        encoding: 'utf8',
      },
    );
    if (r.status === 0) accelCache = 'kvm';
  }
  return accelCache;
}

/** A `-blockdev` for a disk: NBD (with reconnect, so a storage restart does not fail the guest) or a raw file. */
export function blockdevFor(disk: DiskSpec, node: string): Record<string, unknown> {
  const ro = disk.readOnly ? { 'read-only': true } : {};
  if (/^nbds?(\+unix)?:\/\//.test(disk.source)) {
    const u = new URL(disk.source);
    if (u.protocol.startsWith('nbds'))
      throw invalidArgument(`TLS disks (${disk.source}) need tls-creds, not supported yet`);
    const exportName = decodeURIComponent(u.pathname.replace(/^\//, ''));
    const server =
      u.protocol === 'nbd+unix:'
        ? { type: 'unix', path: u.searchParams.get('socket') ?? '' }
        : { type: 'inet', host: u.hostname || '127.0.0.1', port: u.port || '10809' };
    if (server.type === 'unix' && !('path' in server && server.path))
      throw invalidArgument(`${disk.source} names no socket`);
    return { driver: 'nbd', 'node-name': node, server, export: exportName, 'reconnect-delay': 300, ...ro };
  }
  return { driver: 'raw', 'node-name': node, file: { driver: 'file', filename: disk.source }, ...ro };
}

function nicArgs(nic: NicSpec, i: number): string[] {
  const id = `net${i}`;
  const netdev =
    nic.network.kind === 'user'
      ? `user,id=${id}`
      : // VMs of one isolated network share a multicast group on loopback only.
        `socket,id=${id},mcast=${nic.network.group}:${nic.network.port},localaddr=127.0.0.1`;
  if (nic.mac !== undefined && !/^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/.test(nic.mac))
    throw invalidArgument(`NIC ${i}: ${nic.mac} is not a MAC address`);
  return [
    '-netdev',
    netdev,
    '-device',
    `virtio-net-pci,netdev=${id},romfile=${nic.mac ? `,mac=${nic.mac}` : ''}`,
  ];
}

/** The guest agent channel's socket in a VM's run directory. */
export const GUEST_AGENT_SOCKET = 'qga.sock';

/** The QEMU command line for a VM, every file of it in `runDir`. */
export function qemuCommandLine(spec: VmSpec, runDir: string): string[] {
  if (!Number.isInteger(spec.cpus) || spec.cpus < 1)
    throw invalidArgument(`a VM needs at least 1 CPU, not ${spec.cpus}`);
  if (!Number.isInteger(spec.memoryMiB) || spec.memoryMiB < 16)
    throw invalidArgument(`a VM needs at least 16 MiB of memory, not ${spec.memoryMiB}`);
  const args = [
    ...['-name', `${spec.id},debug-threads=on`],
    ...['-machine', 'pc', '-accel', accelerator()],
    ...['-m', String(spec.memoryMiB), '-smp', String(spec.cpus)],
    ...['-nodefaults', '-no-user-config', '-display', 'none', '-no-reboot'],
    // Console: a socket to talk to, logged to a file that outlives the daemon.
    ...[
      '-chardev',
      `socket,id=ser0,path=${join(runDir, 'console.sock')},server=on,wait=off,logfile=${join(runDir, 'console.log')}`,
    ],
    ...['-serial', 'chardev:ser0'],
    ...['-qmp', `unix:${join(runDir, 'qmp.sock')},server=on,wait=off`],
    // The guest agent's channel: a virtio-serial port the agent in the guest opens, and its host
    // end a socket that Haven connects to when it needs the agent (e.g. to freeze for a backup).
    ...(spec.guestAgent === false
      ? []
      : [
          ...['-chardev', `socket,id=qga0,path=${join(runDir, GUEST_AGENT_SOCKET)},server=on,wait=off`],
          ...['-device', 'virtio-serial-pci,id=vser0'],
          ...['-device', `virtserialport,bus=vser0.0,chardev=qga0,name=${GUEST_AGENT_PORT}`],
        ]),
    ...['-pidfile', join(runDir, 'qemu.pid'), '-daemonize'],
  ];
  spec.disks.forEach((d, i) => {
    args.push('-blockdev', JSON.stringify(blockdevFor(d, `disk${i}`)));
    args.push(
      '-device',
      `virtio-blk-pci,drive=disk${i},id=vblk${i}${i === 0 && spec.boot.kind === 'disk' ? ',bootindex=1' : ''}`,
    );
  });
  if (spec.seed) {
    // cloud-init's NoCloud seed, read-only on the machine's own IDE bus.
    const file = { driver: 'file', filename: spec.seed, 'read-only': true };
    args.push('-blockdev', JSON.stringify({ driver: 'raw', 'node-name': 'seed', 'read-only': true, file }));
    args.push('-device', 'ide-cd,drive=seed,id=seed0');
  }
  if (spec.nics.length === 0) args.push('-nic', 'none');
  spec.nics.forEach((n, i) => args.push(...nicArgs(n, i)));
  if (spec.boot.kind === 'kernel') {
    args.push('-kernel', spec.boot.kernel);
    if (spec.boot.initrd) args.push('-initrd', spec.boot.initrd);
    if (spec.boot.cmdline) args.push('-append', spec.boot.cmdline);
  }
  return args;
}

/**
 * A QEMU process running a VM. QEMU is daemonized and keeps its pid file, QMP socket and console
 * log in the run directory, so it outlives the daemon that started it and a new daemon can attach
 * to it again. Events: 'exit' (VmExit), 'event' (QmpEvent).
 */
export class QemuVm extends EventEmitter {
  private stopRequested = false;
  private guestShutdown = false;
  private exited: VmExit | undefined;
  private detached = false;

  private constructor(
    readonly id: string,
    readonly runDir: string,
    readonly pid: number,
    private readonly qmp: QmpClient,
  ) {
    super();
    qmp.on('event', (e: QmpEvent) => {
      if (e.event === 'SHUTDOWN' && e.data.guest === true) this.guestShutdown = true;
      this.emit('event', e);
    });
    qmp.on('close', () => void this.watchExit());
  }

  /** Starts QEMU for `spec`; resolves once QMP answers. */
  static async start(spec: VmSpec, runDir: string): Promise<QemuVm> {
    mkdirSync(runDir, { recursive: true });
    for (const f of ['qemu.pid', 'qmp.sock', 'console.sock', GUEST_AGENT_SOCKET])
      rmSync(join(runDir, f), { force: true });
    const args = qemuCommandLine(spec, runDir);
    const child = spawn(QEMU, args, { stdio: ['ignore', 'ignore', 'pipe'], detached: true });
    let stderr = '';
    child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    // With -daemonize the launcher exits once the VM is set up; its status says whether it was.
    const code = await new Promise<number | null>((r) => child.on('exit', (c) => r(c)));
    if (code !== 0)
      throw new HavenError('IO', `QEMU did not start VM ${spec.name}: ${stderr.trim() || `exit ${code}`}`);
    log.info({ vm: spec.name, accel: accelerator() }, 'VM started');
    return QemuVm.attach(runDir, spec.id);
  }

  /** Attaches to a VM started earlier (by this or another daemon); fails if it is gone. */
  static async attach(runDir: string, id: string): Promise<QemuVm> {
    const pidFile = join(runDir, 'qemu.pid');
    let pid: number;
    try {
      pid = Number.parseInt(readFileSync(pidFile, 'utf8'), 10);
    } catch {
      throw new HavenError('NOT_FOUND', `VM ${id} is not running (no pid file in ${runDir})`);
    }
    if (!isOurQemu(pid, id))
      throw new HavenError('NOT_FOUND', `VM ${id} is not running (process ${pid} is gone)`);
    const qmp = await QmpClient.connect(join(runDir, 'qmp.sock'));
    return new QemuVm(id, runDir, pid, qmp);
  }

  /** running, paused, … as QEMU reports it. */
  async state(): Promise<VmState> {
    if (this.exited) return this.exited.crashed ? 'crashed' : 'stopped';
    const s = await this.qmp.execute<{ status: string; running: boolean }>('query-status');
    return s.running ? 'running' : s.status === 'paused' ? 'paused' : (s.status as VmState);
  }

  /** The socket of the VM's guest agent channel; undefined when QEMU was started without one. */
  guestAgentSocket(): string | undefined {
    const path = join(this.runDir, GUEST_AGENT_SOCKET);
    return existsSync(path) ? path : undefined;
  }

  execute<T = unknown>(command: string, args?: Record<string, unknown>): Promise<T> {
    return this.qmp.execute<T>(command, args);
  }

  /** Asks the guest to power off (ACPI), then quits QEMU after `graceMs`, then kills it. */
  async stop(graceMs = 30_000): Promise<VmExit> {
    if (this.exited) return this.exited;
    this.stopRequested = true;
    const gone = this.exitPromise();
    await this.qmp.execute('system_powerdown').catch(() => undefined);
    const r = await Promise.race([gone, sleep(graceMs).then(() => undefined)]);
    if (r) return r;
    await this.qmp.execute('quit').catch(() => undefined);
    const q = await Promise.race([gone, sleep(5000).then(() => undefined)]);
    if (q) return q;
    process.kill(this.pid, 'SIGKILL');
    return gone;
  }

  /** Kills QEMU at once (the guest loses what it did not flush). */
  async kill(): Promise<VmExit> {
    if (this.exited) return this.exited;
    this.stopRequested = true;
    const gone = this.exitPromise();
    try {
      process.kill(this.pid, 'SIGKILL');
    } catch {
      // already gone
    }
    if (this.detached) {
      // Nobody watches QMP any more: watch the process itself.
      while (isAlive(this.pid)) await sleep(25);
      return { clean: true, crashed: false, reason: 'stopped by Haven' };
    }
    return gone;
  }

  /** Stops watching without touching QEMU (the daemon is going away; the VM goes on). */
  detach(): void {
    this.detached = true;
    this.qmp.removeAllListeners('close');
    this.qmp.close();
  }

  /** The console log so far (the last `maxBytes`). */
  consoleLog(maxBytes = 64 * 1024): string {
    const path = join(this.runDir, 'console.log');
    if (!existsSync(path)) return '';
    const size = statSync(path).size;
    const len = Math.min(size, maxBytes);
    const fd = openSync(path, 'r');
    try {
      const b = Buffer.alloc(len);
      readSync(fd, b, 0, len, size - len);
      return b.toString('utf8');
    } finally {
      closeSync(fd);
    }
  }

  private exitPromise(): Promise<VmExit> {
    return this.exited ? Promise.resolve(this.exited) : new Promise((r) => this.once('exit', r));
  }

  /** QMP closed: wait for the process to be gone, then report how it ended. */
  private async watchExit(): Promise<void> {
    for (let i = 0; i < 200 && isAlive(this.pid); i++) await sleep(25);
    if (isAlive(this.pid)) {
      // QMP went away but QEMU did not: treat it as a crash of the control channel.
      log.warn({ vm: this.id, pid: this.pid }, 'QMP closed but QEMU is still running');
    }
    const clean = this.guestShutdown || this.stopRequested;
    this.exited = {
      clean,
      crashed: !clean,
      reason: this.guestShutdown
        ? 'shut down'
        : this.stopRequested
          ? 'stopped by Haven'
          : 'QEMU exited unexpectedly',
    };
    this.emit('exit', this.exited);
  }
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    // A zombie still "exists": look at its state.
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return !/\) Z /.test(stat);
  } catch {
    return false;
  }
}

/** Whether `pid` is a live QEMU started for VM `id` (pids are reused; the command line tells). */
function isOurQemu(pid: number, id: string): boolean {
  if (!Number.isInteger(pid) || pid <= 0 || !isAlive(pid)) return false;
  try {
    const argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
    const i = argv.indexOf('-name');
    return i >= 0 && (argv[i + 1] ?? '').split(',')[0] === id;
  } catch {
    return false;
  }
}
