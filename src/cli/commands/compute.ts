import { resolve } from 'node:path';
import type { Command } from 'commander';
import { invalidArgument } from '../../common/index.js';
import type { Host, Job, Network, NetworkMapEntry, Vm } from '../../orchestration/index.js';
import { apiOptions, connect, type ApiOpts } from '../api.js';
import { runJob } from '../jobs.js';
import { bytes, parseSize, repeatable, table } from '../args.js';
import { fields, printResult } from '../output.js';

type WaitOpts = ApiOpts & { wait: boolean };
const enc = encodeURIComponent;

function vmRows(vms: Vm[]): string {
  return table([
    ['NAME', 'STATE', 'CPUS', 'MEMORY', 'DISKS', 'HOST', 'REASON'],
    ...vms.map((v) => [
      v.name,
      v.state,
      v.cpus,
      bytes(v.memoryMiB * 2 ** 20),
      v.disks.map((d) => d.volume).join(','),
      v.host,
      v.stateReason ?? '',
    ]),
  ]);
}

/** `haven vm …` */
export function registerVm(program: Command): void {
  const vm = program.command('vm').description('virtual machines of a site (through its daemon)');

  apiOptions(vm.command('create'))
    .description('define a VM on Haven volumes')
    .argument('<name>')
    .option('--cpus <n>', 'virtual CPUs', '1')
    .option('--memory <size>', 'memory (e.g. 512M, 2G)', '512M')
    .option('--disk <volume>', 'a volume as the next disk (repeat; the first is the boot disk)', repeatable)
    .option('--nic <network>', 'a NIC on this network (repeat; "nat" is built in)', repeatable)
    .option('--kernel <file>', 'boot this kernel (on the host) instead of the first disk')
    .option('--initrd <file>', 'initial ramdisk for --kernel')
    .option('--cmdline <text>', 'kernel command line for --kernel')
    .option(
      '--no-guest-agent',
      'no channel for the QEMU guest agent (backups are then crash-consistent: nothing to freeze the file systems with)',
    )
    .option('--json', 'print JSON')
    .action(
      async (
        name: string,
        o: ApiOpts & {
          cpus: string;
          memory: string;
          disk?: string[];
          nic?: string[];
          kernel?: string;
          initrd?: string;
          cmdline?: string;
          guestAgent: boolean;
        },
      ) => {
        const cpus = Number(o.cpus);
        if (!Number.isInteger(cpus) || cpus < 1)
          throw invalidArgument(`--cpus "${o.cpus}" is not a whole number ≥ 1`);
        const memory = parseSize(o.memory.match(/^\d+$/) ? `${o.memory}M` : o.memory, '--memory');
        if (!o.kernel && (o.initrd || o.cmdline))
          throw invalidArgument('--initrd and --cmdline need --kernel');
        const body = {
          name,
          cpus,
          memoryMiB: Math.floor(memory / 2 ** 20),
          disks: (o.disk ?? []).map((volume) => ({ volume })),
          nics: (o.nic ?? []).map((network) => ({ network })),
          boot: o.kernel
            ? {
                kind: 'kernel',
                kernel: resolve(o.kernel),
                ...(o.initrd ? { initrd: resolve(o.initrd) } : {}),
                ...(o.cmdline !== undefined ? { cmdline: o.cmdline } : {}),
              }
            : { kind: 'disk' },
          ...(o.guestAgent ? {} : { guestAgent: false }),
        };
        const v = await connect(o).post<Vm>('/vms', body);
        printResult(!!o.json, v, () => `created VM ${v.name} (${v.id})`);
      },
    );

  apiOptions(vm.command('list'))
    .description('list VMs with their state')
    .option('--json', 'print JSON')
    .action(async (o: ApiOpts) => {
      const vms = await connect(o).get<Vm[]>('/vms');
      printResult(!!o.json, vms, () => vmRows(vms));
    });

  apiOptions(vm.command('show'))
    .description("a VM's definition and state")
    .argument('<name>')
    .option('--json', 'print JSON')
    .action(async (name: string, o: ApiOpts) => {
      const v = await connect(o).get<Vm>(`/vms/${enc(name)}`);
      printResult(!!o.json, v, () =>
        [
          `name:     ${v.name} (${v.id})`,
          `state:    ${v.state}${v.stateReason ? ` (${v.stateReason})` : ''}${v.pid ? `, pid ${v.pid}` : ''}`,
          `host:     ${v.host}`,
          `cpus:     ${v.cpus}`,
          `memory:   ${v.memoryMiB} MiB`,
          `disks:    ${v.disks.map((d, i) => `vd${String.fromCharCode(97 + i)}=${d.volume}${d.readOnly ? ' (ro)' : ''}`).join(' ') || '-'}`,
          `nics:     ${v.nics.map((n) => n.network).join(' ') || '-'}`,
          `boot:     ${v.boot.kind === 'disk' ? 'first disk' : `kernel ${v.boot.kernel}`}`,
          `agent:    ${v.guestAgent === false ? 'none' : 'guest agent channel (org.qemu.guest_agent.0)'}`,
        ].join('\n'),
      );
    });

  apiOptions(vm.command('start'))
    .description('start a VM (a job; waits for it unless --no-wait)')
    .argument('<name>')
    .option('--no-wait', 'return once the job has started')
    .option('--json', 'print JSON')
    .action((name: string, o: WaitOpts) =>
      runJob(
        o,
        (c) => c.post<Job>(`/vms/${enc(name)}/start`),
        () => `VM ${name} is running`,
      ),
    );

  apiOptions(vm.command('stop'))
    .description('stop a VM: ACPI power-off, then quit after the grace time, then kill (a job)')
    .argument('<name>')
    .option('--force', 'kill QEMU at once (the guest loses what it did not flush)')
    .option('--grace <seconds>', 'how long the guest may take to power off', '30')
    .option('--no-wait', 'return once the job has started')
    .option('--json', 'print JSON')
    .action((name: string, o: WaitOpts & { force?: boolean; grace: string }) => {
      const grace = Number(o.grace);
      if (!Number.isInteger(grace) || grace < 0)
        throw invalidArgument(`--grace "${o.grace}" is not a whole number of seconds`);
      return runJob(
        o,
        (c) =>
          c.post<Job>(`/vms/${enc(name)}/stop`, {
            ...(o.force ? { force: true } : {}),
            graceSeconds: grace,
          }),
        (j) => `VM ${name} stopped: ${(j.result as Vm | undefined)?.stateReason ?? 'done'}`,
      );
    });

  apiOptions(vm.command('move-storage'))
    .description("live storage migration: move all of a VM's disks to another pool while it runs (a job)")
    .argument('<name>')
    .requiredOption('--pool <pool>', 'the pool to move to')
    .option('--keep-source', 'keep the source volumes (renamed) instead of deleting them')
    .option('--no-wait', 'return once the job has started')
    .option('--json', 'print JSON')
    .action((name: string, o: WaitOpts & { pool: string; keepSource?: boolean }) =>
      runJob(
        o,
        (c) =>
          c.post<Job>(`/vms/${enc(name)}/move-storage`, {
            pool: o.pool,
            ...(o.keepSource ? { keepSource: true } : {}),
          }),
        (j) => movedSummary(j),
      ),
    );

  apiOptions(vm.command('console-log'))
    .description("print the VM's serial console log")
    .argument('<name>')
    .option('--bytes <n>', 'at most the last N bytes', '65536')
    .action(async (name: string, o: ApiOpts & { bytes: string }) => {
      if (!/^\d{1,9}$/.test(o.bytes)) throw invalidArgument(`--bytes "${o.bytes}" is not a number`);
      process.stdout.write(await connect(o).text(`/vms/${enc(name)}/console-log?bytes=${o.bytes}`));
    });

  apiOptions(vm.command('recovery'))
    .description(
      "what the VM's guest gets where it is recovered (a takeover, migrate or rehearsal): a cloud-init NoCloud seed with its host name and addresses",
    )
    .argument('<name>')
    .option('--hostname <name>', 'the host name there')
    .option(
      '--nic <spec>',
      'the next NIC (repeat, in order): ADDRESS/PREFIX[,gw=IP][,dns=IP+IP], or "-" to leave it as it is',
      repeatable,
    )
    .option('--clear', 'no settings: the guest boots as it is')
    .option('--json', 'print JSON')
    .action(
      async (
        name: string,
        o: ApiOpts & { hostname?: string; nic?: string[]; clear?: boolean; json?: boolean },
      ) => {
        if (o.clear && (o.hostname || o.nic))
          throw invalidArgument('give --clear alone, or --hostname and --nic');
        const body = o.clear
          ? {}
          : {
              ...(o.hostname ? { hostname: o.hostname } : {}),
              ...(o.nic ? { nics: o.nic.map(parseRecoveryNic) } : {}),
            };
        const v = await connect(o).put<Vm>(`/vms/${enc(name)}/recovery`, body);
        printResult(!!o.json, v, () =>
          v.recovery
            ? fields([
                ['VM', v.name],
                ['host name', v.recovery.hostname ?? '(its name)'],
                ...(v.recovery.nics ?? []).map((n, i): [string, string] => [
                  `NIC ${i}`,
                  [
                    n.address ?? 'as it is',
                    n.gateway ? `gateway ${n.gateway}` : '',
                    n.dns ? `DNS ${n.dns.join(', ')}` : '',
                  ]
                    .filter(Boolean)
                    .join(', '),
                ]),
              ])
            : `VM ${v.name}: no recovery settings`,
        );
      },
    );

  apiOptions(vm.command('delete'))
    .description('delete a stopped VM (its volumes stay)')
    .argument('<name>')
    .action(async (name: string, o: ApiOpts) => {
      await connect(o).delete(`/vms/${enc(name)}`);
      process.stdout.write(`deleted VM ${name}\n`);
    });
}

/** `haven host …` and `haven network …` */
export function registerHostAndNetwork(program: Command): void {
  const host = program.command('host').description('hosts that run VMs');
  apiOptions(host.command('list'))
    .description('list hosts')
    .option('--json', 'print JSON')
    .action(async (o: ApiOpts) => {
      const hosts = await connect(o).get<Host[]>('/hosts');
      printResult(!!o.json, hosts, () =>
        table([
          ['NAME', 'ADDRESS', 'CPUS', 'MEMORY', 'ACCEL', 'HYPERVISOR', 'RUNNING'],
          ...hosts.map((h) => [
            h.name,
            h.address,
            h.cpus,
            bytes(h.memoryMiB * 2 ** 20),
            h.accelerator,
            h.hypervisor,
            h.runningVms,
          ]),
        ]),
      );
    });

  const net = program.command('network').description('networks VM NICs attach to');
  apiOptions(net.command('create'))
    .description('create a network: nat (user-mode NAT) or isolated (shared only by the VMs on it)')
    .argument('<name>')
    .option('--kind <kind>', 'nat or isolated', 'isolated')
    .option('--json', 'print JSON')
    .action(async (name: string, o: ApiOpts & { kind: string }) => {
      const n = await connect(o).post<Network>('/networks', { name, kind: o.kind });
      printResult(!!o.json, n, () => `created ${n.kind} network ${n.name}`);
    });
  apiOptions(net.command('list'))
    .description('list networks')
    .option('--json', 'print JSON')
    .action(async (o: ApiOpts) => {
      const nets = await connect(o).get<Network[]>('/networks');
      printResult(!!o.json, nets, () => table([['NAME', 'KIND'], ...nets.map((n) => [n.name, n.kind])]));
    });
  const map = net
    .command('map')
    .description(
      "where a paired site's networks go here: on a takeover or migrate, and (isolated) in rehearsals",
    );
  apiOptions(map.command('add'))
    .description(
      'map network SOURCE of paired site PEER to network RECOVERY here (replaces an earlier map of it); --network-map of an operation wins over it',
    )
    .argument('<peer>', 'a paired site')
    .argument('<source>', 'a network of that site')
    .argument('<recovery>', 'the network here its NICs join on a takeover or migrate')
    .option('--rehearsal <network>', 'an isolated network here its NICs join in a rehearsal')
    .option('--json', 'print JSON')
    .action(
      async (
        peer: string,
        source: string,
        recovery: string,
        o: ApiOpts & { rehearsal?: string; json?: boolean },
      ) => {
        const m = await connect(o).put<NetworkMapEntry>(`/network-maps/${enc(peer)}/${enc(source)}`, {
          recovery,
          ...(o.rehearsal ? { rehearsal: o.rehearsal } : {}),
        });
        printResult(
          !!o.json,
          m,
          () =>
            `network ${m.source} of site ${m.peer} maps to ${m.recovery} here${m.rehearsal ? `, to ${m.rehearsal} in rehearsals` : ''}`,
        );
      },
    );
  apiOptions(map.command('list'))
    .description('list the network maps')
    .option('--json', 'print JSON')
    .action(async (o: ApiOpts & { json?: boolean }) => {
      const maps = await connect(o).get<NetworkMapEntry[]>('/network-maps');
      printResult(!!o.json, maps, () =>
        table([
          ['PEER', 'SOURCE', 'RECOVERY', 'REHEARSAL'],
          ...maps.map((m) => [m.peer, m.source, m.recovery, m.rehearsal ?? '(made per rehearsal)']),
        ]),
      );
    });
  apiOptions(map.command('remove'))
    .description('remove the map of a network of a paired site')
    .argument('<peer>')
    .argument('<source>')
    .action(async (peer: string, source: string, o: ApiOpts) => {
      await connect(o).delete(`/network-maps/${enc(peer)}/${enc(source)}`);
      process.stdout.write(`network ${source} of site ${peer} is no longer mapped\n`);
    });
  apiOptions(net.command('delete'))
    .description('delete a network no VM uses')
    .argument('<name>')
    .action(async (name: string, o: ApiOpts) => {
      await connect(o).delete(`/networks/${enc(name)}`);
      process.stdout.write(`deleted network ${name}\n`);
    });
}

/** One line per volume a move job moved. */
export function movedSummary(j: Pick<Job, 'result'>): string {
  const r = j.result as { volumes: { volume: string; to: string; copiedBytes: number; pauseMs: number }[] };
  return r.volumes
    .map(
      (v) =>
        `moved volume ${v.volume} to pool ${v.to}: ${bytes(v.copiedBytes)} copied, I/O paused ${v.pauseMs.toFixed(1)} ms at the switch`,
    )
    .join('\n');
}

/** "10.2.0.5/24,gw=10.2.0.1,dns=10.2.0.53+10.2.0.54" (or "-"): one NIC's recovery settings. */
function parseRecoveryNic(spec: string): { address?: string; gateway?: string; dns?: string[] } {
  if (spec.trim() === '-') return {};
  const [address, ...rest] = spec.split(',').map((x) => x.trim());
  const out: { address?: string; gateway?: string; dns?: string[] } = address ? { address } : {};
  for (const kv of rest) {
    const m = /^(gw|dns)=(.+)$/.exec(kv);
    if (!m) throw invalidArgument(`--nic ${spec}: "${kv}" is neither gw=IP nor dns=IP[+IP]`);
    if (m[1] === 'gw') out.gateway = m[2]!;
    else out.dns = m[2]!.split('+');
  }
  return out;
}
