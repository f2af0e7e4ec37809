import type { Command } from 'commander';
import { invalidArgument } from '../../common/index.js';
import type { Job, JobLogLine, SiteEvent, SiteInfo } from '../../orchestration/index.js';
import { apiOptions, connect, type ApiOpts } from '../api.js';
import { followJob, jobFailure, progressLine } from '../jobs.js';
import { bytes, table } from '../args.js';
import { printResult } from '../output.js';
import { registerPeerCommands } from './peers.js';

function query(params: Record<string, string | undefined>): string {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined) q.set(k, v);
  const s = q.toString();
  return s ? `?${s}` : '';
}

function limitOf(s: string): string {
  if (!/^\d{1,4}$/.test(s)) throw invalidArgument(`--limit "${s}" is not a number`);
  return s;
}

/** `haven site show` (and the peer commands), `haven job …`, `haven event list` */
export function registerOperations(program: Command): void {
  const site = program.command('site').description('the site a daemon runs');
  apiOptions(site.command('show'))
    .description(
      "the site's name, data directory, NBD addresses, identity (certificate fingerprint), peer link and counts",
    )
    .option('--json', 'print JSON')
    .action(async (o: ApiOpts) => {
      const s = await connect(o).get<SiteInfo>('/site');
      printResult(!!o.json, s, () =>
        [
          `site:     ${s.name} (Haven ${s.version}, schema ${s.schemaVersion})`,
          `data:     ${s.dataDir}`,
          `nbd:      ${s.nbd.socket} (this site's user only)`,
          ...(s.nbd.tcp
            ? [
                `nbd tls:  ${s.nbd.tcp}: PSK identity ${s.nbd.pskIdentity} in ${s.nbd.pskFile}` +
                  (s.nbd.clientCa ? `, or a client certificate signed by ${s.nbd.clientCa}` : ''),
              ]
            : []),
          ...(s.nbd.plain ? [`nbd plain: ${s.nbd.plain} WITHOUT AUTHENTICATION (--nbd-listen-plain)`] : []),
          `started:  ${s.startedAt}`,
          `recovery: reads from backups ${s.recovery.maxIops ?? 'unlimited'} IOPS, ${
            s.recovery.maxBytesPerSecond === undefined
              ? 'unlimited'
              : `${bytes(s.recovery.maxBytesPerSecond)}/s`
          }; warn after ${s.recovery.warnAfterSeconds / 3600} h from backup`,
          `pools ${s.pools}, volumes ${s.volumes}, VMs ${s.vms} (${s.runningVms} running), jobs running ${s.runningJobs}`,
          `identity: certificate ${s.peer.fingerprint}`,
          `peer link: ${s.peer.link ?? 'none (--peer-listen none)'}`,
        ].join('\n'),
      );
    });
  registerPeerCommands(site);

  const job = program.command('job').description('long operations: progress, log, result, cancel');
  apiOptions(job.command('list'))
    .description('list jobs, newest first')
    .option('--state <state>', 'running, succeeded, failed or cancelled')
    .option('--kind <kind>', 'e.g. volume.import, vm.start')
    .option('--limit <n>', 'at most this many', '50')
    .option('--json', 'print JSON')
    .action(async (o: ApiOpts & { state?: string; kind?: string; limit: string }) => {
      const jobs = await connect(o).get<Job[]>(
        `/jobs${query({ state: o.state, kind: o.kind, limit: limitOf(o.limit) })}`,
      );
      printResult(!!o.json, jobs, () =>
        table([
          ['ID', 'KIND', 'TARGET', 'STATE', 'PROGRESS', 'CREATED', 'ERROR'],
          ...jobs.map((j) => [
            j.id,
            j.kind,
            j.target,
            j.state,
            j.progress.totalBytes ? `${bytes(j.progress.doneBytes)}/${bytes(j.progress.totalBytes)}` : '-',
            j.createdAt,
            j.error ?? '',
          ]),
        ]),
      );
    });
  apiOptions(job.command('show'))
    .description('a job with its progress, result and log')
    .argument('<id>')
    .option('--json', 'print JSON')
    .action(async (id: string, o: ApiOpts) => {
      const c = connect(o);
      const j = await c.get<Job>(`/jobs/${encodeURIComponent(id)}`);
      const lines = await c.get<JobLogLine[]>(`/jobs/${encodeURIComponent(id)}/log`);
      printResult(!!o.json, { ...j, log: lines }, () =>
        [
          progressLine(j),
          `id ${j.id}, by ${j.actor}, created ${j.createdAt}${j.endedAt ? `, ended ${j.endedAt}` : ''}`,
          ...(j.error ? [`error: ${j.error}`] : []),
          ...(j.result !== undefined ? [`result: ${JSON.stringify(j.result)}`] : []),
          ...lines.map((l) => `${l.time} ${l.level.padEnd(7)} ${l.message}`),
        ].join('\n'),
      );
    });
  apiOptions(job.command('watch'))
    .description('follow a job with a progress bar until it ends')
    .argument('<id>')
    .option('--json', 'print JSON')
    .action(async (id: string, o: ApiOpts) => {
      const c = connect(o);
      const j = await followJob(c, await c.get<Job>(`/jobs/${encodeURIComponent(id)}`), { json: !!o.json });
      if (o.json) printResult(true, j, () => '');
      if (j.state !== 'succeeded') throw jobFailure(j);
      if (!o.json) printResult(false, j, () => `job ${j.id} (${j.kind} ${j.target}) ${j.state}`);
    });
  apiOptions(job.command('cancel'))
    .description('ask a running job to stop')
    .argument('<id>')
    .action(async (id: string, o: ApiOpts) => {
      await connect(o).post(`/jobs/${encodeURIComponent(id)}/cancel`);
      process.stdout.write(`cancel requested for job ${id}\n`);
    });

  apiOptions(job.command('resume'))
    .description('resume a job that waits for an operator (a plan step: haven plan …)')
    .argument('<id>')
    .option('--json', 'print JSON')
    .action(async (id: string, o: ApiOpts & { json?: boolean }) => {
      const j = await connect(o).post<Job>(`/jobs/${encodeURIComponent(id)}/resume`);
      printResult(!!o.json, j, () => `job ${id} resumed`);
    });

  const event = program.command('event').description('the event and audit log');
  apiOptions(event.command('list'))
    .description('list events, newest first')
    .option('--action <action>', 'e.g. vm.start, volume.delete')
    .option('--target <name>', 'a VM, volume, … name')
    .option('--outcome <outcome>', 'ok, failed, info or warning')
    .option('--actor <actor>', 'who did it: USER@ADDRESS (admin@… is the site token)')
    .option('--limit <n>', 'at most this many', '50')
    .option('--json', 'print JSON')
    .action(
      async (
        o: ApiOpts & { action?: string; target?: string; outcome?: string; actor?: string; limit: string },
      ) => {
        const events = await connect(o).get<SiteEvent[]>(
          `/events${query({ action: o.action, target: o.target, outcome: o.outcome, actor: o.actor, limit: limitOf(o.limit) })}`,
        );
        printResult(!!o.json, events, () =>
          table([
            ['TIME', 'ACTOR', 'ACTION', 'TARGET', 'OUTCOME', 'MESSAGE'],
            ...events.map((e) => [e.time, e.actor, e.action, e.target, e.outcome, e.message]),
          ]),
        );
      },
    );
}
