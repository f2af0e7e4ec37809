import { resolve } from 'node:path';
import type { Command } from 'commander';
import type { Job, Recovery, RecoveryCheck, Vm } from '../../orchestration/index.js';
import { apiOptions, connect, daemonPassphraseFile, type ApiOpts } from '../api.js';
import { invalidArgument } from '../../common/index.js';
import { bytes, parseDuration, table } from '../args.js';
import { printResult } from '../output.js';
import { runJob, runLocal } from '../jobs.js';

const enc = encodeURIComponent;
type WaitOpts = ApiOpts & { wait: boolean; json?: boolean };

function rows(list: Recovery[]): string {
  return table([
    ['VM', 'STATE', 'BACKUP', 'FROM BACKUP FOR', 'COPIED', 'WARNING'],
    ...list.map((r) => [
      r.vm,
      r.state,
      r.snapshot,
      `${Math.floor(r.runningFromBackupSeconds / 60)} min`,
      bytes(r.disks.reduce((n, d) => n + d.filledBytes, 0)),
      r.warning ?? '',
    ]),
  ]);
}

function checkRows(list: RecoveryCheck[]): string {
  return table([
    ['STARTED', 'VM', 'BACKUP', 'RESULT', 'SECONDS', 'REASON', 'CONSOLE LOG'],
    ...list.map((c) => [
      c.startedAt,
      c.vm,
      c.snapshot ?? '',
      c.state,
      c.durationSeconds === undefined ? '' : c.durationSeconds.toFixed(1),
      c.reason ?? '',
      c.consoleLog ?? '',
    ]),
  ]);
}

/** `haven recover …`: instant recovery of VMs from backups, through the site daemon. */
export function registerRecover(program: Command): void {
  const recover = program
    .command('recover')
    .description(
      'instant recovery: run VMs straight from their backups, then finalize or discard; recoverability checks of backups',
    );

  apiOptions(recover.command('instant'))
    .description(
      'start a VM from a VM backup within seconds; its disks are new volumes over the backup (never written)',
    )
    .argument('<snapshot>')
    .option('--repo <dir>', 'the backup repository (default: $HAVEN_REPO)')
    .option('--passphrase-file <file>', "file holding an encrypted repository's passphrase")
    .option('--name <vm>', 'name of the recovered VM (default: NAME-recovered)')
    .option(
      '--pool <pool>',
      "pool of the VM's new volumes (an RBD pool: they run on a file pool until finalize moves them there)",
      'default',
    )
    .option('--cmdline <text>', 'kernel command line instead of the backed-up one (kernel boot)')
    .option(
      '--network <net>',
      "where its NICs go: a network (e.g. an isolated one), none, or OLD=NEW,… per backed-up network (default: the backed-up VM's own networks, beside the original)",
    )
    .option('--no-start', 'define the VM and serve its disks, but do not start it')
    .option('--json', 'print JSON')
    .action(
      async (
        snapshot: string,
        o: ApiOpts & {
          repo?: string;
          passphraseFile?: string;
          name?: string;
          pool: string;
          cmdline?: string;
          network?: string;
          start: boolean;
          json?: boolean;
        },
      ) => {
        const repo = o.repo ?? process.env.HAVEN_REPO;
        if (!repo) throw invalidArgument('give --repo DIR (or set HAVEN_REPO)');
        const body = {
          repo: resolve(repo),
          snapshot,
          pool: o.pool,
          ...daemonPassphraseFile(o.passphraseFile),
          ...(o.name ? { name: o.name } : {}),
          ...(o.cmdline !== undefined ? { cmdline: o.cmdline } : {}),
          ...(o.network !== undefined ? { network: o.network } : {}),
          ...(o.start ? {} : { noStart: true }),
        };
        // The daemon answers once the VM runs (seconds): no site job, but the job shape all the same.
        await runLocal(
          o,
          { kind: 'recovery.instant', target: snapshot },
          () => connect(o).post<{ vm: Vm; seconds: number }>('/recoveries', body),
          (r) =>
            o.start
              ? `VM ${r.vm.name} is running from backup ${snapshot} (started in ${r.seconds.toFixed(1)} s); finalize it with "haven recover finalize ${r.vm.name}"`
              : `VM ${r.vm.name} is defined over backup ${snapshot}, its disks served, not started: "haven vm start ${r.vm.name}", then finalize or discard it`,
        );
      },
    );

  apiOptions(recover.command('list'))
    .description('VMs running from backups: since when, how much is copied, warnings')
    .option('--json', 'print JSON')
    .action(async (o: ApiOpts & { json?: boolean }) => {
      const list = await connect(o).get<Recovery[]>('/recoveries');
      printResult(!!o.json, list, () => rows(list));
    });

  apiOptions(recover.command('finalize'))
    .description(
      "copy the rest of the backup into the VM's volumes while it runs, then drop the backup (a job)",
    )
    .argument('<vm>')
    .option('--no-wait', 'return once the job has started')
    .option('--json', 'print JSON')
    .action((vm: string, o: WaitOpts) =>
      runJob(
        o,
        () => connect(o).post(`/recoveries/${enc(vm)}/finalize`, {}),
        () => `VM ${vm} runs from production storage now; its backup is no longer needed`,
      ),
    );

  apiOptions(recover.command('discard'))
    .description('stop the VM and drop every change: the VM and its volumes are deleted (a job)')
    .argument('<vm>')
    .option('--no-wait', 'return once the job has started')
    .option('--json', 'print JSON')
    .action((vm: string, o: WaitOpts) =>
      runJob(
        o,
        () => connect(o).post(`/recoveries/${enc(vm)}/discard`, {}),
        () => `discarded VM ${vm} and its volumes`,
      ),
    );

  apiOptions(recover.command('check'))
    .description(
      "recoverability check: boot the VM's newest (or named) backup on an isolated network made for it, check a heartbeat (and a script), tear everything down, record pass or fail (a job)",
    )
    .argument('<vm>')
    .option('--repo <dir>', 'the backup repository (default: $HAVEN_REPO)')
    .option('--passphrase-file <file>', "file holding an encrypted repository's passphrase")
    .option('--snapshot <id>', 'the backup to check (default: the newest of the VM)')
    .option(
      '--heartbeat <how>',
      'agent (its guest agent answers), console:REGEX (its serial console matches) or tcp:HOST:PORT (a network the host is on)',
      'agent',
    )
    .option(
      '--script <file>',
      'run on the site host after the heartbeat; exit 0 passes (env HAVEN_CHECK_VM, HAVEN_CHECK_CONSOLE_LOG, …)',
    )
    .option('--timeout <duration>', 'for the heartbeat, and again for the script', '120s')
    .option(
      '--network <net>',
      'an existing network for its NICs, or none (default: an isolated network made for the check)',
    )
    .option('--no-wait', 'return once the job has started')
    .option('--json', 'print JSON')
    .action(
      (
        vm: string,
        o: WaitOpts & {
          repo?: string;
          passphraseFile?: string;
          snapshot?: string;
          heartbeat: string;
          script?: string;
          timeout: string;
          network?: string;
        },
      ) => {
        const repo = o.repo ?? process.env.HAVEN_REPO;
        if (!repo) throw invalidArgument('give --repo DIR (or set HAVEN_REPO)');
        const body = {
          vm,
          repo: resolve(repo),
          ...daemonPassphraseFile(o.passphraseFile),
          ...(o.snapshot ? { snapshot: o.snapshot } : {}),
          heartbeat: o.heartbeat,
          ...(o.script ? { script: resolve(o.script) } : {}),
          timeoutSeconds: parseDuration(o.timeout, '--timeout'),
          ...(o.network ? { network: o.network } : {}),
        };
        return runJob(
          o,
          (client) => client.post<Job>('/recovery-checks', body),
          (j) => {
            const c = j.result as RecoveryCheck;
            return `backup ${c.snapshot} of VM ${vm} passed its recoverability check in ${c.durationSeconds?.toFixed(1)} s (console log: ${c.consoleLog ?? 'none'})`;
          },
        );
      },
    );

  apiOptions(recover.command('checks'))
    .description('recoverability checks, newest first: result, reason, console log')
    .option('--vm <vm>', 'only those of this VM')
    .option('--json', 'print JSON')
    .action(async (o: ApiOpts & { vm?: string; json?: boolean }) => {
      const list = await connect(o).get<RecoveryCheck[]>(`/recovery-checks${o.vm ? `?vm=${enc(o.vm)}` : ''}`);
      printResult(!!o.json, list, () => checkRows(list));
    });
}
