import type { Command } from 'commander';
import { resolve } from 'node:path';
import { invalidArgument } from '../../common/index.js';
import type {
  Compliance,
  Job,
  Policy,
  PolicyAssignment,
  PolicySpec,
  PolicyTiming,
} from '../../orchestration/index.js';
import { apiOptions, connect, type ApiOpts } from '../api.js';
import { parseDuration, table } from '../args.js';
import { runJob } from '../jobs.js';
import { fields, printResult } from '../output.js';

type JsonOpts = ApiOpts & { json?: boolean };
const enc = encodeURIComponent;
const repeat = (v: string, all: string[] = []) => [...all, v];
const KEEPS = ['last', 'hourly', 'daily', 'weekly', 'monthly', 'yearly'] as const;

function count(v: string, flag: string): number {
  if (!/^\d{1,6}$/.test(v)) throw invalidArgument(`${flag} "${v}" is not a whole number`);
  return Number(v);
}

function timing(
  cron: string | undefined,
  every: string | undefined,
  flag: string,
  tz?: string,
): PolicyTiming {
  if (cron !== undefined && every !== undefined)
    throw invalidArgument(`give one of --${flag}-cron and --${flag}-every, not both`);
  return {
    ...(cron !== undefined ? { cron } : {}),
    ...(every !== undefined ? { everySeconds: parseDuration(every, `--${flag}-every`) } : {}),
    ...(tz ? { timezone: tz } : {}),
  };
}

type CreateOpts = JsonOpts & {
  require?: string[];
  timezone?: string;
  snapshotCron?: string;
  snapshotEvery?: string;
  snapshotKeep?: string;
  backupCron?: string;
  backupEvery?: string;
  repo?: string;
  passphraseFile?: string;
  verifyCron?: string;
  verifyEvery?: string;
  replicateTo?: string;
  rpo?: string;
} & { [K in `keep${Capitalize<(typeof KEEPS)[number]>}`]?: string };

/** The flags of `policy create` as a policy (validation is the site's). */
function specOf(o: CreateOpts): PolicySpec {
  const spec: PolicySpec = { requires: o.require ?? [] };
  if (o.snapshotCron !== undefined || o.snapshotEvery !== undefined)
    spec.snapshot = {
      ...timing(o.snapshotCron, o.snapshotEvery, 'snapshot', o.timezone),
      ...(o.snapshotKeep !== undefined ? { keep: { last: count(o.snapshotKeep, '--snapshot-keep') } } : {}),
    };
  else if (o.snapshotKeep !== undefined)
    throw invalidArgument('--snapshot-keep needs --snapshot-cron or --snapshot-every');
  const keep: Record<string, number> = {};
  for (const k of KEEPS) {
    const flag = `keep${k[0]!.toUpperCase()}${k.slice(1)}` as keyof CreateOpts;
    const v = o[flag] as string | undefined;
    if (v !== undefined) keep[k] = count(v, `--keep-${k}`);
  }
  if (o.backupCron !== undefined || o.backupEvery !== undefined) {
    if (!o.repo) throw invalidArgument('a backup schedule needs --repo');
    spec.backup = {
      ...timing(o.backupCron, o.backupEvery, 'backup', o.timezone),
      repo: resolve(o.repo),
      ...(o.passphraseFile ? { passphraseFile: resolve(o.passphraseFile) } : {}),
      ...(Object.keys(keep).length ? { keep } : {}),
    };
  } else if (Object.keys(keep).length || o.repo)
    throw invalidArgument(
      '--repo and --keep-* belong to a backup schedule: add --backup-cron or --backup-every',
    );
  if (o.verifyCron !== undefined || o.verifyEvery !== undefined)
    spec.verify = timing(o.verifyCron, o.verifyEvery, 'verify', o.timezone);
  if (o.replicateTo)
    spec.replication = { to: o.replicateTo, rpoSeconds: parseDuration(o.rpo ?? '15s', '--rpo') };
  else if (o.rpo) throw invalidArgument('--rpo needs --replicate-to');
  return spec;
}

const when = (t: PolicyTiming) =>
  `${t.cron !== undefined ? `cron "${t.cron}"` : `every ${t.everySeconds} s`}${t.timezone ? ` (${t.timezone})` : ''}`;
const keeps = (k?: object) =>
  k
    ? Object.entries(k as Record<string, number>)
        .filter(([, n]) => n)
        .map(([p, n]) => `${p} ${n}`)
        .join(', ')
    : 'all';

function showPolicy(p: Policy & { assignments?: PolicyAssignment[] }): string {
  const rows: [string, string][] = [
    ['policy', p.name],
    ['requires', p.requires.join(', ') || '-'],
    ['snapshots', p.snapshot ? `${when(p.snapshot)}, keep ${keeps(p.snapshot.keep)}` : '-'],
    ['backups', p.backup ? `${when(p.backup)} into ${p.backup.repo}, keep ${keeps(p.backup.keep)}` : '-'],
    ['verify', p.verify ? when(p.verify) : '-'],
    ['replication', p.replication ? `to site ${p.replication.to}, RPO ${p.replication.rpoSeconds} s` : '-'],
  ];
  if (p.assignments)
    rows.push(['assigned', p.assignments.map((a) => `${a.kind} ${a.object}`).join(', ') || '-']);
  return fields(rows);
}

function objectOf(o: { vm?: string; volume?: string }): { vm: string } | { volume: string } {
  if (!!o.vm === !!o.volume) throw invalidArgument('give one of --vm VM and --volume VOLUME');
  return o.vm ? { vm: o.vm } : { volume: o.volume! };
}

function complianceRows(cs: Compliance[]): string {
  return table([
    ['KIND', 'OBJECT', 'POLICY', 'COMPLIANT', 'REASONS'],
    ...cs.map((c) => [
      c.kind,
      c.object,
      c.policy,
      c.compliant ? 'yes' : 'no',
      c.reasons.map((r) => r.message).join('; '),
    ]),
  ]);
}

/** `haven policy …` */
export function registerPolicy(program: Command): void {
  const policy = program
    .command('policy')
    .description(
      'storage policies: what a VM or volume needs (placement, schedules, replication) and compliance',
    );

  for (const verb of ['create', 'update'] as const) {
    let cmd = apiOptions(policy.command(verb))
      .description(
        verb === 'create'
          ? 'create a policy'
          : "replace a policy's contents with these (its VMs and volumes get the new schedules)",
      )
      .argument('<name>')
      .option(
        '--require <capability>',
        'a capability pools must advertise: NAME or NAME=VALUE (repeat)',
        repeat,
      )
      .option('--timezone <tz>', 'IANA time zone of the cron expressions (default UTC)')
      .option('--snapshot-cron <cron>', 'take snapshots on this cron schedule')
      .option('--snapshot-every <duration>', 'take snapshots this often (e.g. 1h)')
      .option('--snapshot-keep <n>', 'keep the newest N snapshots')
      .option('--backup-cron <cron>', 'back up on this cron schedule')
      .option('--backup-every <duration>', 'back up this often')
      .option('--repo <dir>', "the backups' repository")
      .option('--passphrase-file <file>', "file holding the repository's passphrase");
    for (const k of KEEPS)
      cmd = cmd.option(
        `--keep-${k} <n>`,
        `backups: keep ${k === 'last' ? 'the newest N' : `the newest of each of the last N ${k.replace(/ly$/, '').replace(/dai$/, 'day')}s`}`,
      );
    cmd
      .option('--verify-cron <cron>', 'verify the repository on this cron schedule')
      .option('--verify-every <duration>', 'verify the repository this often')
      .option('--replicate-to <site>', 'the paired site that must hold a replica')
      .option('--rpo <duration>', 'the RPO that replication must meet (default 15s)')
      .option('--json', 'print JSON')
      .action(async (name: string, o: CreateOpts) => {
        const p =
          verb === 'create'
            ? await connect(o).post<Policy>('/policies', { name, ...specOf(o) })
            : await connect(o).call<Policy>('PUT', `/policies/${enc(name)}`, specOf(o));
        printResult(!!o.json, p, () => showPolicy(p));
      });
  }

  apiOptions(policy.command('list'))
    .description('list policies')
    .option('--json', 'print JSON')
    .action(async (o: JsonOpts) => {
      const ps = await connect(o).get<Policy[]>('/policies');
      printResult(!!o.json, ps, () =>
        table([
          ['NAME', 'REQUIRES', 'SNAPSHOTS', 'BACKUPS', 'REPLICATION'],
          ...ps.map((p) => [
            p.name,
            p.requires.join(',') || '-',
            p.snapshot ? when(p.snapshot) : '-',
            p.backup ? when(p.backup) : '-',
            p.replication ? `${p.replication.to} ${p.replication.rpoSeconds}s` : '-',
          ]),
        ]),
      );
    });

  apiOptions(policy.command('show'))
    .description('show a policy and what it is assigned to')
    .argument('<name>')
    .option('--json', 'print JSON')
    .action(async (name: string, o: JsonOpts) => {
      const p = await connect(o).get<Policy & { assignments: PolicyAssignment[] }>(`/policies/${enc(name)}`);
      printResult(!!o.json, p, () => showPolicy(p));
    });

  apiOptions(policy.command('delete'))
    .description('delete a policy (refused while it is assigned)')
    .argument('<name>')
    .option('--json', 'print JSON')
    .action(async (name: string, o: JsonOpts) => {
      await connect(o).delete(`/policies/${enc(name)}`);
      printResult(!!o.json, { deleted: name }, () => `deleted policy ${name}`);
    });

  apiOptions(policy.command('assign'))
    .description("assign a policy to a VM or volume (replacing its policy) and apply the policy's schedules")
    .argument('<policy>')
    .option('--vm <vm>')
    .option('--volume <volume>')
    .option('--json', 'print JSON')
    .action(async (name: string, o: JsonOpts & { vm?: string; volume?: string }) => {
      const a = await connect(o).post<PolicyAssignment>(`/policies/${enc(name)}/assign`, objectOf(o));
      printResult(!!o.json, a, () => `policy ${a.policy} assigned to ${a.kind} ${a.object}`);
    });

  apiOptions(policy.command('unassign'))
    .description('remove the policy of a VM or volume (and its schedules)')
    .option('--vm <vm>')
    .option('--volume <volume>')
    .option('--json', 'print JSON')
    .action(async (o: JsonOpts & { vm?: string; volume?: string }) => {
      const target = objectOf(o);
      await connect(o).post('/policy-assignments/remove', target);
      printResult(
        !!o.json,
        { unassigned: target },
        () => `policy removed from ${'vm' in target ? `VM ${target.vm}` : `volume ${target.volume}`}`,
      );
    });

  apiOptions(policy.command('compliance'))
    .description('whether each VM and volume complies with its policy, and why not')
    .option('--vm <vm>', 'only this VM')
    .option('--volume <volume>', 'only this volume')
    .option('--json', 'print JSON')
    .action(async (o: JsonOpts & { vm?: string; volume?: string }) => {
      const q = o.vm ? `?vm=${enc(o.vm)}` : o.volume ? `?volume=${enc(o.volume)}` : '';
      const cs = await connect(o).get<Compliance[]>(`/policy-compliance${q}`);
      printResult(!!o.json, cs, () => complianceRows(cs));
    });

  apiOptions(policy.command('remediate'))
    .description("fix what can be fixed of a VM's compliance (live storage migration, schedules), as a job")
    .argument('<vm>')
    .option('--no-wait', 'return once the job has started')
    .option('--json', 'print JSON')
    .action((vm: string, o: JsonOpts & { wait: boolean }) =>
      runJob(
        o,
        (c) => c.post<Job>(`/vms/${enc(vm)}/remediate`),
        (j) => {
          const r = j.result as { fixed: string[]; unfixed: { message: string }[]; compliant: boolean };
          return [
            ...r.fixed.map((f) => `fixed: ${f}`),
            ...r.unfixed.map((u) => `not fixed: ${u.message}`),
            r.compliant ? `VM ${vm} complies with its policy` : `VM ${vm} does not comply yet`,
          ].join('\n');
        },
      ),
    );
}
