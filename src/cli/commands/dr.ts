import type { Command } from 'commander';
import { invalidArgument } from '../../common/index.js';
import type {
  DrReport,
  EvacuateReport,
  ReportSummary,
  Job,
  ReplicationGroupAnswer,
  ServiceResync,
} from '../../orchestration/index.js';
import { apiOptions, connect, type ApiOpts } from '../api.js';
import { parseDuration, repeatable, table } from '../args.js';
import { runJob } from '../jobs.js';
import { printResult } from '../output.js';
import { migrateLines, rehearsalLines, reportLines, takeoverLines } from './dr-lines.js';

function networkMap(pairs: string[] | undefined): Record<string, string> | undefined {
  if (!pairs?.length) return undefined;
  const map: Record<string, string> = {};
  for (const p of pairs) {
    const m = /^([^=]+)=([^=]+)$/.exec(p);
    if (!m) throw invalidArgument(`--network-map ${p}: use SOURCE=TARGET (a network of each site)`);
    map[m[1]!] = m[2]!;
  }
  return map;
}

type MoveOpts = ApiOpts & {
  json?: boolean;
  wait: boolean;
  grace: string;
  verify: boolean;
  networkMap?: string[];
};

/** What a migrate, a failback and an evacuate share: the grace, verify, network map, wait and JSON. */
function moveOptions(c: Command, mapTo: string): Command {
  return c
    .option('--grace <duration>', 'time each guest has to power off before it is stopped hard', '60s')
    .option('--no-verify', 'promote without comparing the replica with the source first')
    .option('--network-map <src=dst>', `a network of this site to a network of ${mapTo} (repeat)`, repeatable)
    .option('--no-wait', 'print the job and return')
    .option('--json', 'print JSON');
}

function moveBody(o: MoveOpts): Record<string, unknown> {
  const map = networkMap(o.networkMap);
  return {
    graceSeconds: parseDuration(o.grace, '--grace'),
    ...(o.verify ? {} : { verify: false }),
    ...(map ? { networkMap: map } : {}),
  };
}

/** `haven dr …` */
export function registerDr(program: Command): void {
  const dr = program.command('dr').description('disaster recovery across paired sites');

  apiOptions(dr.command('takeover'))
    .description(
      "run a replicated group here, its source site being lost: a checkpoint's volumes become this site's and the group's VMs start here; the old source keeps them stopped once back",
    )
    .argument('<group>', 'a replication group whose replica this site holds')
    .option('--checkpoint <which>', 'newest (default), a sequence number, or a checkpoint name')
    .option('--force', 'take over although the source site answers')
    .option('--network-map <src=dst>', 'a source network to a network of this site (repeat)', repeatable)
    .option('--no-start', 'define the VMs over the recovered volumes, start none')
    .option('--no-wait', 'print the job and return')
    .option('--json', 'print JSON')
    .action(
      async (
        group: string,
        o: ApiOpts & {
          json?: boolean;
          wait: boolean;
          checkpoint?: string;
          force?: boolean;
          networkMap?: string[];
          start: boolean;
        },
      ) => {
        const map = networkMap(o.networkMap);
        await runJob(
          o,
          (c) =>
            c.post<Job>(`/dr/groups/${encodeURIComponent(group)}/takeover`, {
              ...(o.checkpoint ? { checkpoint: o.checkpoint } : {}),
              ...(o.force ? { force: true } : {}),
              ...(map ? { networkMap: map } : {}),
              ...(o.start ? {} : { start: false }),
            }),
          (j) => reportLines(j.result, takeoverLines),
        );
      },
    );

  apiOptions(dr.command('resync'))
    .description(
      'after a takeover: replicate the group back from this site to its old source, sending only what differs (follow it with haven replication show)',
    )
    .argument('<group>', 'a group this site took over, or a business service (each of its groups)')
    .option('--rpo <duration>', 'recovery point objective of the reversed group (e.g. 5s)')
    .option('--json', 'print JSON')
    .action(async (group: string, o: ApiOpts & { json?: boolean; rpo?: string }) => {
      const r = await connect(o).post<ReplicationGroupAnswer | ServiceResync>(
        `/dr/groups/${encodeURIComponent(group)}/resync`,
        o.rpo ? { rpoSeconds: parseDuration(o.rpo, '--rpo') } : {},
      );
      printResult(!!o.json, r, () =>
        ('service' in r ? r.groups : [r])
          .map(
            (g) =>
              `group ${g.name} replicates from this site to site ${g.peer} again; only what differs is sent`,
          )
          .join('\n'),
      );
    });

  const evacuate = apiOptions(dr.command('evacuate'))
    .description(
      'move every business service off this site (--site) or off one of its hosts (--host), in order: each service stops last tier first, then its groups migrate tier by tier (as dr migrate, no data lost)',
    )
    .option('--site <name>', 'this site')
    .option('--host <name>', 'a host of this site');
  moveOptions(evacuate, 'the target').action(async (o: MoveOpts & { site?: string; host?: string }) => {
    if ((o.site === undefined) === (o.host === undefined))
      throw invalidArgument('give --site (this site) or --host (one of its hosts), one of them');
    await runJob(
      o,
      (c) =>
        c.post<Job>('/dr/evacuate', {
          ...(o.site !== undefined ? { site: o.site } : { host: o.host }),
          ...moveBody(o),
        }),
      (j) => {
        const r = j.result as EvacuateReport;
        return r.services
          .map(
            (x) =>
              `${x.service ? `service ${x.service}` : `group ${x.tiers[0]?.groups[0]?.group ?? '?'}`} → site ${x.to}: ` +
              x.tiers.map((t) => `tier ${t.tier} (${t.groups.map((g) => g.group).join(', ')})`).join(', ') +
              `; downtime ${x.downtimeSeconds.toFixed(1)} s`,
          )
          .join('\n');
      },
    );
  });

  const migrate = apiOptions(dr.command('migrate'))
    .description(
      'move a group (or business service) replicated from this site to its target with no data lost: stop the guests (reverse order), drain to a final checkpoint, verify, promote and start there, replicate back; run at the target again to fail back',
    )
    .argument(
      '<group>',
      'a group this site replicates, or a business service (stopped last tier first, started tier by tier)',
    );
  moveOptions(migrate, 'the target').action(async (group: string, o: MoveOpts) => {
    await runJob(
      o,
      (c) => c.post<Job>(`/dr/groups/${encodeURIComponent(group)}/migrate`, moveBody(o)),
      (j) => reportLines(j.result, migrateLines),
    );
  });

  const failback = apiOptions(dr.command('failback'))
    .description(
      'at the site running a group (or business service) after a takeover or migrate: resync back what differs, wait until the replica is current, then migrate back to the original site',
    )
    .argument('<group>', 'a group or business service that runs here now');
  moveOptions(failback, 'the original site').action(async (group: string, o: MoveOpts) => {
    await runJob(
      o,
      (c) => c.post<Job>(`/dr/groups/${encodeURIComponent(group)}/failback`, moveBody(o)),
      (j) => reportLines(j.result, migrateLines),
    );
  });

  apiOptions(dr.command('rehearse'))
    .description(
      "rehearse a failover at this site (holding the replica): clones of a checkpoint, the group's VMs as NAME-rehearsal on an isolated network, each checked; replication and production go on; they stay up until dr cleanup",
    )
    .argument('<group>', 'a group replicated to this site')
    .option('--checkpoint <which>', 'newest (default), a sequence number, or a checkpoint name')
    .option('--heartbeat <how>', 'agent, console:REGEX or tcp:HOST:PORT', 'agent')
    .option('--timeout <duration>', 'for each heartbeat', '120s')
    .option('--network <name>', 'an existing network for every NIC (default: an isolated one made)')
    .option('--no-wait', 'print the job and return')
    .option('--json', 'print JSON')
    .action(
      async (
        group: string,
        o: ApiOpts & {
          json?: boolean;
          wait: boolean;
          checkpoint?: string;
          heartbeat: string;
          timeout: string;
          network?: string;
        },
      ) =>
        runJob(
          o,
          (c) =>
            c.post<Job>(`/dr/groups/${encodeURIComponent(group)}/rehearse`, {
              heartbeat: o.heartbeat,
              timeoutSeconds: parseDuration(o.timeout, '--timeout'),
              ...(o.checkpoint ? { checkpoint: o.checkpoint } : {}),
              ...(o.network ? { network: o.network } : {}),
            }),
          (j) => reportLines(j.result, rehearsalLines),
        ),
    );

  apiOptions(dr.command('cleanup'))
    .description("remove every trace of a group's rehearsal (VMs, clones, its network)")
    .argument('<group>')
    .option('--json', 'print JSON')
    .action(async (group: string, o: ApiOpts & { json?: boolean }) => {
      const r = await connect(o).post<{ group: string; removed: string[] }>(
        `/dr/groups/${encodeURIComponent(group)}/cleanup`,
      );
      printResult(
        !!o.json,
        r,
        () => `rehearsal of ${r.group} cleaned up: ${r.removed.join(', ') || 'nothing was left'}`,
      );
    });

  apiOptions(dr.command('report'))
    .description(
      "a DR operation's kept report (its job's id): steps with times and outcomes, checkpoint, RPO and RTO achieved against the objective",
    )
    .argument('<id>')
    .option('--json', 'print JSON')
    .option('--text', 'print the readable form (the default)')
    .option('--html', 'print it as a self-contained HTML page (to keep or mail)')
    .action(async (id: string, o: ApiOpts & { json?: boolean; text?: boolean; html?: boolean }) => {
      if ([o.json, o.text, o.html].filter(Boolean).length > 1)
        throw invalidArgument('give one of --json, --text and --html');
      const path = `/dr/reports/${encodeURIComponent(id)}`;
      if (o.json) printResult(true, await connect(o).get<DrReport>(path), () => '');
      else process.stdout.write(await connect(o).text(`${path}?format=${o.html ? 'html' : 'text'}`));
    });

  apiOptions(dr.command('reports'))
    .description('the kept reports of DR operations at this site, newest first')
    .option('--kind <kind>', 'takeover, rehearse, migrate or evacuate')
    .option('--target <name>', 'a group or service')
    .option('--limit <n>', 'at most this many', '50')
    .option('--json', 'print JSON')
    .action(async (o: ApiOpts & { json?: boolean; kind?: string; target?: string; limit: string }) => {
      const q = new URLSearchParams({ limit: o.limit });
      if (o.kind) q.set('kind', o.kind);
      if (o.target) q.set('target', o.target);
      const rs = await connect(o).get<ReportSummary[]>(`/dr/reports?${q.toString()}`);
      const s = (n: number | undefined) => (n === undefined ? '-' : `${n.toFixed(2)} s`);
      printResult(!!o.json, rs, () =>
        table([
          ['REPORT', 'KIND', 'TARGET', 'OUTCOME', 'ENDED', 'RPO', 'RTO', 'OBJECTIVE'],
          ...rs.map((r) => [
            r.id,
            r.kind,
            r.target,
            r.outcome,
            r.endedAt,
            s(r.rpoSeconds),
            s(r.rtoSeconds),
            r.objectiveMet === undefined ? '-' : r.objectiveMet ? 'met' : 'NOT MET',
          ]),
        ]),
      );
    });
}
