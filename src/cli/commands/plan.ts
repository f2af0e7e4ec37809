import { readFileSync } from 'node:fs';
import type { Command } from 'commander';
import { invalidArgument } from '../../common/index.js';
import type { Job, Plan, PlanRun, PlanRunReport } from '../../orchestration/index.js';
import { apiOptions, connect, type ApiOpts } from '../api.js';
import { table } from '../args.js';
import { runJob } from '../jobs.js';
import { printResult } from '../output.js';

type JsonOpts = ApiOpts & { json?: boolean };
const enc = encodeURIComponent;

function stepsFrom(o: { steps?: string; stepsFile?: string }): unknown[] {
  const text = o.stepsFile ? readFileSync(o.stepsFile, 'utf8') : o.steps;
  if (!text) throw invalidArgument('give the steps: --steps-file FILE or --steps JSON (a JSON array)');
  try {
    const v = JSON.parse(text) as unknown;
    if (!Array.isArray(v)) throw new Error('not an array');
    return v;
  } catch (err) {
    throw invalidArgument(`the steps are not a JSON array of steps: ${(err as Error).message}`);
  }
}

const runLines = (r: PlanRunReport) =>
  [
    `plan ${r.plan}, run ${r.run}:`,
    ...r.steps.map((s) => `  ${s.step}. ${s.kind}: ${s.outcome}${s.detail ? ` (${s.detail})` : ''}`),
  ].join('\n');

/** `haven plan …` */
export function registerPlan(program: Command): void {
  const plan = program
    .command('plan')
    .description(
      'DR plans: ordered steps (takeover, rehearse, cleanup, resync, migrate, start, stop, script, wait, delay, heartbeat) run as a job, retried from the step that failed',
    );

  apiOptions(plan.command('create'))
    .argument('<name>')
    .option('--steps-file <file>', 'a JSON array of steps (docs/dr.md)')
    .option('--steps <json>', 'the same, inline')
    .option('--json', 'print JSON')
    .action(async (name: string, o: JsonOpts & { steps?: string; stepsFile?: string }) => {
      const p = await connect(o).post<Plan>('/plans', { name, steps: stepsFrom(o) });
      printResult(!!o.json, p, () => `plan ${p.name}: ${p.steps.length} step(s)`);
    });

  apiOptions(plan.command('list'))
    .option('--json', 'print JSON')
    .action(async (o: JsonOpts) => {
      const ps = await connect(o).get<Plan[]>('/plans');
      printResult(!!o.json, ps, () =>
        table([['PLAN', 'STEPS'], ...ps.map((p) => [p.name, p.steps.map((s) => s.kind).join(' → ')])]),
      );
    });

  apiOptions(plan.command('show'))
    .argument('<name>')
    .option('--json', 'print JSON')
    .action(async (name: string, o: JsonOpts) => {
      const p = await connect(o).get<Plan>(`/plans/${enc(name)}`);
      printResult(!!o.json, p, () => p.steps.map((s, i) => `${i + 1}. ${JSON.stringify(s)}`).join('\n'));
    });

  apiOptions(plan.command('delete'))
    .argument('<name>')
    .option('--json', 'print JSON')
    .action(async (name: string, o: JsonOpts) => {
      await connect(o).call('DELETE', `/plans/${enc(name)}`);
      printResult(!!o.json, { deleted: name }, () => `plan ${name} deleted`);
    });

  for (const [verb, what, path] of [
    ['run', 'run a plan as a job', (n: string) => `/plans/${enc(n)}/run`],
    [
      'retry',
      'go on with a failed run from the step that failed',
      (n: string) => `/plan-runs/${enc(n)}/retry`,
    ],
  ] as const)
    apiOptions(plan.command(verb))
      .description(what)
      .argument(verb === 'run' ? '<plan>' : '<run>')
      .option('--no-wait', 'print the job and return')
      .option('--json', 'print JSON')
      .action(async (arg: string, o: JsonOpts & { wait: boolean }) =>
        runJob(
          o,
          (c) => c.post<Job>(path(arg)),
          (j) => runLines(j.result as PlanRunReport),
        ),
      );

  apiOptions(plan.command('abort'))
    .description('give up a failed or waiting run')
    .argument('<run>')
    .option('--json', 'print JSON')
    .action(async (id: string, o: JsonOpts) => {
      const r = await connect(o).post<PlanRun>(`/plan-runs/${enc(id)}/abort`);
      printResult(!!o.json, r, () => `plan run ${id} aborted`);
    });

  apiOptions(plan.command('runs'))
    .description('runs, newest first: state and the step a retry goes on from')
    .argument('[plan]')
    .option('--json', 'print JSON')
    .action(async (name: string | undefined, o: JsonOpts) => {
      const rs = await connect(o).get<PlanRun[]>(name ? `/plan-runs?plan=${enc(name)}` : '/plan-runs');
      printResult(!!o.json, rs, () =>
        table([
          ['RUN', 'PLAN', 'STATE', 'STEP', 'ERROR'],
          ...rs.map((r) => [
            r.id,
            r.plan,
            r.state,
            `${Math.min(r.nextStep + 1, r.steps.length)}/${r.steps.length}`,
            r.error ?? '',
          ]),
        ]),
      );
    });
}
