import type { Command } from 'commander';
import { invalidArgument } from '../../common/index.js';
import type { ObjectiveAnswer, ObjectiveCompliance } from '../../orchestration/index.js';
import { apiOptions, connect, type ApiOpts } from '../api.js';
import { parseDuration, table } from '../args.js';
import { fields, printResult } from '../output.js';

type JsonOpts = ApiOpts & { json?: boolean };
type TargetOpts = { group?: string; service?: string };

const FLAGS = [
  ['rpo', 'rpoSeconds', 'RPO'],
  ['history', 'historySeconds', 'history'],
  ['rehearseEvery', 'rehearsalMaxAgeSeconds', 'rehearsal every'],
  ['rto', 'rtoSeconds', 'RTO'],
  ['backupMaxAge', 'backupMaxAgeSeconds', 'backup max age'],
] as const;

const secs = (n: number | undefined) => (n === undefined ? '-' : `${n} s`);

function target(o: TargetOpts): { group: string } | { service: string } {
  if ((o.group === undefined) === (o.service === undefined))
    throw invalidArgument('give --group G or --service S (one of them)');
  return o.group !== undefined ? { group: o.group } : { service: o.service! };
}

const complianceLines = (cs: ObjectiveCompliance[]) =>
  cs.length
    ? cs
        .map(
          (c) =>
            `${c.kind} ${c.target}: ${c.compliant ? 'compliant' : 'NOT COMPLIANT'}` +
            c.reasons.map((r) => `\n  - ${r.message}`).join(''),
        )
        .join('\n')
    : '(applied to nothing)';

/** `haven objective …` */
export function registerObjective(program: Command): void {
  const obj = program
    .command('objective')
    .description(
      'service objectives: RPO, history window, rehearsal cadence, RTO and backup age for groups and business services, and their compliance',
    );

  apiOptions(obj.command('create'))
    .description('a named objective (give at least one target)')
    .argument('<name>')
    .option('--rpo <duration>', 'the replica at most this old, e.g. 15s')
    .option('--history <duration>', 'checkpoints kept at least this long (point-in-time history), e.g. 1h')
    .option('--rehearse-every <duration>', 'the last successful rehearsal at most this old, e.g. 7d')
    .option('--rto <duration>', 'the last rehearsal or takeover recovered within this, e.g. 5m')
    .option('--backup-max-age <duration>', "each VM's newest backup at most this old, e.g. 1d")
    .option('--description <text>')
    .option('--replace', 'replace an objective of that name')
    .option('--json', 'print JSON')
    .action(async (name: string, o: JsonOpts & Record<string, string | boolean | undefined>) => {
      const body: Record<string, unknown> = { name };
      for (const [flag, field] of FLAGS)
        if (typeof o[flag] === 'string')
          body[field] = parseDuration(o[flag], `--${flag.replace(/[A-Z]/g, (c) => '-' + c.toLowerCase())}`);
      if (typeof o.description === 'string') body.description = o.description;
      if (o.replace) body.replace = true;
      const r = await connect(o).post<ObjectiveAnswer>('/objectives', body);
      printResult(!!o.json, r, () => `service objective ${r.name} created`);
    });

  apiOptions(obj.command('apply'))
    .description(
      'apply an objective to a group or business service (here and at the sites its groups replicate with)',
    )
    .argument('<name>')
    .option('--group <group>')
    .option('--service <service>')
    .option('--json', 'print JSON')
    .action(async (name: string, o: JsonOpts & TargetOpts) => {
      const r = await connect(o).post<{ kind: string; target: string; notTold?: string[] }>(
        `/objectives/${encodeURIComponent(name)}/apply`,
        target(o),
      );
      printResult(
        !!o.json,
        r,
        () =>
          `service objective ${name} applies to ${r.kind} ${r.target}` +
          (r.notTold ? `\nnot told: ${r.notTold.join('; ')}` : ''),
      );
    });

  apiOptions(obj.command('unapply'))
    .description('no objective for a group or business service')
    .option('--group <group>')
    .option('--service <service>')
    .option('--json', 'print JSON')
    .action(async (o: JsonOpts & TargetOpts) => {
      const r = await connect(o).post<{ kind: string; target: string }>('/objectives/unapply', target(o));
      printResult(!!o.json, r, () => `${r.kind} ${r.target} has no objective now`);
    });

  apiOptions(obj.command('list'))
    .description('the objectives of this site and where they apply')
    .option('--json', 'print JSON')
    .action(async (o: JsonOpts) => {
      const os = await connect(o).get<ObjectiveAnswer[]>('/objectives');
      printResult(!!o.json, os, () =>
        table([
          ['OBJECTIVE', 'RPO', 'HISTORY', 'REHEARSE EVERY', 'RTO', 'BACKUP AGE', 'APPLIED TO'],
          ...os.map((x) => [
            x.name,
            secs(x.rpoSeconds),
            secs(x.historySeconds),
            secs(x.rehearsalMaxAgeSeconds),
            secs(x.rtoSeconds),
            secs(x.backupMaxAgeSeconds),
            x.appliedTo.map((a) => `${a.kind} ${a.target}`).join(', ') || '-',
          ]),
        ]),
      );
    });

  apiOptions(obj.command('show'))
    .description('an objective and the compliance of each group and service it applies to (judged now)')
    .argument('<name>')
    .option('--json', 'print JSON')
    .action(async (name: string, o: JsonOpts) => {
      const x = await connect(o).get<ObjectiveAnswer & { compliance: ObjectiveCompliance[] }>(
        `/objectives/${encodeURIComponent(name)}`,
      );
      printResult(!!o.json, x, () =>
        [
          fields([
            ['objective', x.name + (x.description ? ` — ${x.description}` : '')],
            ...FLAGS.filter(([, f]) => x[f] !== undefined).map(([, f, what]): [string, string] => [
              what,
              secs(x[f]),
            ]),
          ]),
          complianceLines(x.compliance),
        ].join('\n'),
      );
    });

  apiOptions(obj.command('compliance'))
    .description('the compliance of every group and service an objective applies to (judged now)')
    .option('--json', 'print JSON')
    .action(async (o: JsonOpts) => {
      const cs = await connect(o).get<ObjectiveCompliance[]>('/objectives/compliance');
      printResult(!!o.json, cs, () => complianceLines(cs));
    });

  apiOptions(obj.command('delete'))
    .description('forget an objective that applies to nothing')
    .argument('<name>')
    .option('--json', 'print JSON')
    .action(async (name: string, o: JsonOpts) => {
      await connect(o).delete(`/objectives/${encodeURIComponent(name)}`);
      printResult(!!o.json, { name }, () => `service objective ${name} deleted`);
    });
}
