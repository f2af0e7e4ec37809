import type { Command } from 'commander';
import type { ResiliencyGroup } from '../../orchestration/index.js';
import { apiOptions, connect, type ApiOpts } from '../api.js';
import { repeatable, table } from '../args.js';
import { fields, printResult } from '../output.js';

type JsonOpts = ApiOpts & { json?: boolean };

const protection = (g: ResiliencyGroup) => {
  const r = g.replication;
  if (!r) return 'not replicated';
  if (r.role === 'target') return `replica of site ${r.peer}${r.takenOver ? ' (taken over)' : ''}`;
  const rpo = r.rpoSeconds !== undefined ? `, RPO ${r.rpoSeconds} s` : '';
  const goal = r.rpoObjectiveSeconds !== undefined ? ` (target ${r.rpoObjectiveSeconds} s)` : '';
  return `replicates to site ${r.peer}: ${r.state ?? 'starting'}${rpo}${goal}`;
};

const show = (g: ResiliencyGroup) =>
  fields([
    ['group', g.name],
    ...(g.description ? [['description', g.description] as [string, string]] : []),
    ['VMs', g.vms.length ? g.vms.join(', ') : '(none)'],
    ['protection', protection(g)],
    ...(g.service ? [['service', g.service] as [string, string]] : []),
    ['created', g.createdAt],
  ]);

/** `haven group …` */
export function registerGroup(program: Command): void {
  const grp = program
    .command('group')
    .description(
      'resiliency groups: VMs protected and recovered together (replicated as one consistency group)',
    );

  apiOptions(grp.command('create'))
    .description('define a group; a VM belongs to at most one')
    .argument('<name>')
    .option('--vm <name>', 'a VM of the group (repeat; in start order)', repeatable, [])
    .option('--description <text>', 'what the group is for')
    .option('--json', 'print JSON')
    .action(async (name: string, o: JsonOpts & { vm: string[]; description?: string }) => {
      const g = await connect(o).post<ResiliencyGroup>('/groups', {
        name,
        vms: o.vm,
        ...(o.description !== undefined ? { description: o.description } : {}),
      });
      printResult(!!o.json, g, () => show(g));
    });

  apiOptions(grp.command('add'))
    .description('VMs join a group (not while it replicates)')
    .argument('<name>')
    .argument('<vm...>')
    .option('--json', 'print JSON')
    .action(async (name: string, vms: string[], o: JsonOpts) => {
      const g = await connect(o).post<ResiliencyGroup>(`/groups/${encodeURIComponent(name)}/vms`, { vms });
      printResult(!!o.json, g, () => show(g));
    });

  apiOptions(grp.command('remove'))
    .description('a VM leaves a group (not while it replicates)')
    .argument('<name>')
    .argument('<vm>')
    .option('--json', 'print JSON')
    .action(async (name: string, vm: string, o: JsonOpts) => {
      const g = await connect(o).call<ResiliencyGroup>(
        'DELETE',
        `/groups/${encodeURIComponent(name)}/vms/${encodeURIComponent(vm)}`,
      );
      printResult(!!o.json, g, () => show(g));
    });

  apiOptions(grp.command('list'))
    .description('the groups of this site: defined here, or replicas of a paired site’s')
    .option('--json', 'print JSON')
    .action(async (o: JsonOpts) => {
      const gs = await connect(o).get<ResiliencyGroup[]>('/groups');
      printResult(!!o.json, gs, () =>
        table([
          ['GROUP', 'VMS', 'PROTECTION', 'SERVICE'],
          ...gs.map((g) => [g.name, g.vms.join(',') || '-', protection(g), g.service ?? '-']),
        ]),
      );
    });

  apiOptions(grp.command('show'))
    .argument('<name>')
    .option('--json', 'print JSON')
    .action(async (name: string, o: JsonOpts) => {
      const g = await connect(o).get<ResiliencyGroup>(`/groups/${encodeURIComponent(name)}`);
      printResult(!!o.json, g, () => show(g));
    });

  apiOptions(grp.command('delete'))
    .description('forget a group (not while it replicates or is a tier of a service); its VMs stay')
    .argument('<name>')
    .option('--json', 'print JSON')
    .action(async (name: string, o: JsonOpts) => {
      const r = await connect(o).call<{ name: string }>('DELETE', `/groups/${encodeURIComponent(name)}`);
      printResult(!!o.json, r, () => `group ${name} deleted`);
    });
}
