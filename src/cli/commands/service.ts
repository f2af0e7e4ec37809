import type { Command } from 'commander';
import type { BusinessService, Job, ServiceReport } from '../../orchestration/index.js';
import { apiOptions, connect, type ApiOpts } from '../api.js';
import { parseDuration, repeatable, table } from '../args.js';
import { runJob } from '../jobs.js';
import { fields, printResult } from '../output.js';

type PowerReport = ServiceReport<{ group: string; vms: { name: string; action: string; at: string }[] }>;

const powerLines = (j: Job) =>
  (j.result as PowerReport).tiers
    .map(
      (t) =>
        `tier ${t.tier}: ` +
        t.groups.flatMap((g) => g.vms.map((v) => `${v.name} ${v.action} (${g.group})`)).join(', '),
    )
    .join('\n');

type JsonOpts = ApiOpts & { json?: boolean };

const show = (s: BusinessService & { notTold?: string[] }) =>
  fields([
    ['service', s.name],
    ...s.tiers.map((t, i): [string, string] => [`tier ${i + 1}`, t.join(', ')]),
    ['boot delay', `${s.bootDelaySeconds} s between tiers`],
    ...(s.notTold ? [['not told', s.notTold.join('; ')] as [string, string]] : []),
  ]);

/** `haven service …` */
export function registerService(program: Command): void {
  const svc = program
    .command('service')
    .description(
      'business services: replication groups in tiers, recovered tier by tier (haven dr … SERVICE)',
    );

  apiOptions(svc.command('create'))
    .description('define a service here and at the sites its groups replicate with')
    .argument('<name>')
    .requiredOption(
      '--tier <groups>',
      'the groups of the next tier, comma-separated (repeat: tier 1 first)',
      repeatable,
    )
    .option('--boot-delay <duration>', 'wait this long after a tier is up before the next', '0s')
    .option('--json', 'print JSON')
    .action(async (name: string, o: JsonOpts & { tier: string[]; bootDelay: string }) => {
      const s = await connect(o).post<BusinessService & { notTold?: string[] }>('/services', {
        name,
        tiers: o.tier.map((t) =>
          t
            .split(',')
            .map((g) => g.trim())
            .filter(Boolean),
        ),
        bootDelaySeconds: parseDuration(o.bootDelay, '--boot-delay', { zero: true }),
      });
      printResult(!!o.json, s, () => show(s));
    });

  apiOptions(svc.command('list'))
    .description('the business services of this site')
    .option('--json', 'print JSON')
    .action(async (o: JsonOpts) => {
      const ss = await connect(o).get<BusinessService[]>('/services');
      printResult(!!o.json, ss, () =>
        table([
          ['SERVICE', 'TIERS'],
          ...ss.map((s) => [s.name, s.tiers.map((t) => t.join(',')).join(' → ')]),
        ]),
      );
    });

  apiOptions(svc.command('show'))
    .argument('<name>')
    .option('--json', 'print JSON')
    .action(async (name: string, o: JsonOpts) => {
      const s = await connect(o).get<BusinessService>(`/services/${encodeURIComponent(name)}`);
      printResult(!!o.json, s, () => show(s));
    });

  apiOptions(svc.command('delete'))
    .description('forget a service (here and at its peers); its groups stay')
    .argument('<name>')
    .option('--json', 'print JSON')
    .action(async (name: string, o: JsonOpts) => {
      const r = await connect(o).call<{ name: string }>('DELETE', `/services/${encodeURIComponent(name)}`);
      printResult(!!o.json, r, () => `service ${name} deleted`);
    });

  apiOptions(svc.command('start'))
    .description("start a service's VMs here tier by tier, in its start order (the boot delay between tiers)")
    .argument('<name>')
    .option('--no-wait', 'print the job and return')
    .option('--json', 'print JSON')
    .action(async (name: string, o: JsonOpts & { wait: boolean }) => {
      await runJob(o, (c) => c.post<Job>(`/services/${encodeURIComponent(name)}/start`, {}), powerLines);
    });

  apiOptions(svc.command('stop'))
    .description("stop a service's VMs here, the last tier first")
    .argument('<name>')
    .option('--grace <duration>', 'time each guest has to power off before it is stopped hard', '60s')
    .option('--no-wait', 'print the job and return')
    .option('--json', 'print JSON')
    .action(async (name: string, o: JsonOpts & { wait: boolean; grace: string }) => {
      await runJob(
        o,
        (c) =>
          c.post<Job>(`/services/${encodeURIComponent(name)}/stop`, {
            graceSeconds: parseDuration(o.grace, '--grace', { zero: true }),
          }),
        powerLines,
      );
    });
}
