import type { Command } from 'commander';
import { resolve } from 'node:path';
import { invalidArgument } from '../../common/index.js';
import type { Schedule, ScheduleSpec } from '../../orchestration/index.js';
import { apiOptions, connect, type ApiOpts } from '../api.js';
import { parseDuration, table } from '../args.js';
import { fields, printResult } from '../output.js';

type JsonOpts = ApiOpts & { json?: boolean };
const KEEPS = ['last', 'hourly', 'daily', 'weekly', 'monthly', 'yearly'] as const;
const REPO_KINDS = ['prune', 'verify', 'gc'];

type CreateOpts = JsonOpts & {
  kind: string;
  target: string;
  cron?: string;
  every?: string;
  tz?: string;
  jitter?: string;
  catchUp?: string;
  repo?: string;
  passphraseFile?: string;
  heartbeat?: string;
} & { [K in `keep${Capitalize<(typeof KEEPS)[number]>}`]?: string };

/** The flags of `schedule create` as a spec (validation is the site's). */
function specOf(o: CreateOpts): ScheduleSpec {
  if (o.cron !== undefined && o.every !== undefined)
    throw invalidArgument('give one of --cron and --every, not both');
  const keep: Record<string, number> = {};
  for (const k of KEEPS) {
    const v = o[`keep${k[0]!.toUpperCase()}${k.slice(1)}` as keyof CreateOpts] as string | undefined;
    if (v === undefined) continue;
    if (!/^\d{1,6}$/.test(v)) throw invalidArgument(`--keep-${k} "${v}" is not a whole number`);
    keep[k] = Number(v);
  }
  const params: Record<string, unknown> = {
    ...(o.repo ? { repo: resolve(o.repo) } : {}),
    ...(o.passphraseFile ? { passphraseFile: resolve(o.passphraseFile) } : {}),
    ...(o.heartbeat ? { heartbeat: o.heartbeat } : {}),
    ...(Object.keys(keep).length ? { keep } : {}),
  };
  return {
    kind: o.kind as ScheduleSpec['kind'],
    // A repository target is a path: made absolute here, as the daemon sees it.
    target: REPO_KINDS.includes(o.kind) ? resolve(o.target) : o.target,
    ...(o.cron !== undefined ? { cron: o.cron } : {}),
    ...(o.every !== undefined ? { everySeconds: parseDuration(o.every, '--every') } : {}),
    ...(o.tz ? { timezone: o.tz } : {}),
    ...(o.jitter !== undefined ? { jitterSeconds: parseDuration(o.jitter, '--jitter', { zero: true }) } : {}),
    ...(o.catchUp !== undefined ? { catchUp: o.catchUp as 'once' | 'skip' } : {}),
    ...(Object.keys(params).length ? { params } : {}),
  };
}

const when = (s: ScheduleSpec) =>
  `${s.cron !== undefined ? `cron "${s.cron}"` : `every ${s.everySeconds} s`}${s.timezone ? ` (${s.timezone})` : ''}`;

function showSchedule(s: Schedule): string {
  return fields([
    ['schedule', s.id],
    ['owner', s.owner],
    ['runs', `${s.kind} ${s.target}`],
    [
      'when',
      `${when(s)}${s.jitterSeconds ? `, jitter ${s.jitterSeconds} s` : ''}, catch-up ${s.catchUp ?? 'once'}`,
    ],
    ['next run', s.nextRun ?? 'never'],
    ['state', s.state + (s.job ? ` (job ${s.job})` : '')],
    [
      'last run',
      s.lastRun
        ? `${s.lastRun}: ${s.lastOutcome ?? 'running'}${s.lastMessage ? ` (${s.lastMessage})` : ''}`
        : '-',
    ],
  ]);
}

/** `haven schedule …` */
export function registerSchedule(program: Command): void {
  const schedule = program
    .command('schedule')
    .description('schedules of backups, snapshots, prunes, verifies, gcs and recoverability checks');

  let create = apiOptions(schedule.command('create'))
    .description('schedule runs of a backup, snapshot, prune, verify, gc or check (docs/schedules.md)')
    .requiredOption('--kind <kind>', 'backup, snapshot, prune, verify, gc or check')
    .requiredOption(
      '--target <name>',
      'a VM or volume (backup, snapshot, check) or a repository (prune, verify, gc)',
    )
    .option('--cron <cron>', "a cron expression (croner's syntax, e.g. '0 * * * *')")
    .option('--every <duration>', 'an interval instead (e.g. 1h, 15m)')
    .option('--tz <zone>', 'IANA time zone of the cron expression (default UTC)')
    .option('--jitter <duration>', 'up to this much random delay per run')
    .option('--catch-up <mode>', 'runs missed while the daemon was down: once (default) or skip')
    .option('--repo <dir>', 'the repository (backup, check)')
    .option('--passphrase-file <file>', "file holding the repository's passphrase")
    .option('--heartbeat <check>', 'check: agent (default), console:REGEX or tcp:HOST:PORT');
  for (const k of KEEPS)
    create = create.option(
      `--keep-${k} <n>`,
      `retention after each run (backup, snapshot) or of a prune: keep ${k === 'last' ? 'the newest N' : `the newest of each of the last N ${k.replace(/ly$/, '').replace(/dai$/, 'day')}s`}`,
    );
  create.option('--json', 'print JSON').action(async (o: CreateOpts) => {
    const s = await connect(o).post<Schedule>('/schedules', specOf(o));
    printResult(!!o.json, s, () => showSchedule(s));
  });

  apiOptions(schedule.command('list'))
    .description("list schedules (a person's and those of policies) with their next and last runs")
    .option('--kind <kind>', 'only this kind')
    .option('--target <name>', 'only this target')
    .option('--json', 'print JSON')
    .action(async (o: JsonOpts & { kind?: string; target?: string }) => {
      const q = new URLSearchParams({
        ...(o.kind ? { kind: o.kind } : {}),
        ...(o.target ? { target: o.target } : {}),
      }).toString();
      const ss = await connect(o).get<Schedule[]>(`/schedules${q ? `?${q}` : ''}`);
      printResult(!!o.json, ss, () =>
        table([
          ['ID', 'KIND', 'TARGET', 'WHEN', 'NEXT RUN', 'STATE', 'LAST', 'OWNER'],
          ...ss.map((s) => [
            s.id,
            s.kind,
            s.target,
            when(s),
            s.nextRun ?? 'never',
            s.state,
            s.lastOutcome ? `${s.lastOutcome} ${s.lastRun ?? ''}` : '-',
            s.owner,
          ]),
        ]),
      );
    });

  apiOptions(schedule.command('show'))
    .description('show a schedule')
    .argument('<id>')
    .option('--json', 'print JSON')
    .action(async (id: string, o: JsonOpts) => {
      const s = await connect(o).get<Schedule>(`/schedules/${encodeURIComponent(id)}`);
      printResult(!!o.json, s, () => showSchedule(s));
    });

  apiOptions(schedule.command('delete'))
    .description("delete a person's schedule (a policy's go with the policy)")
    .argument('<id>')
    .option('--json', 'print JSON')
    .action(async (id: string, o: JsonOpts) => {
      await connect(o).delete(`/schedules/${encodeURIComponent(id)}`);
      printResult(!!o.json, { deleted: id }, () => `deleted schedule ${id}`);
    });
}
