import type { Command } from 'commander';
import type {
  CheckpointAnswer,
  EnableReplicationRequest,
  ReplicationGroupAnswer,
} from '../../orchestration/index.js';
import type { Job, VerifyReport } from '../../orchestration/index.js';
import { apiOptions, connect, type ApiOpts } from '../api.js';
import { runJob } from '../jobs.js';
import { bytes, parseDuration, parseSize, table } from '../args.js';
import { fields, printResult } from '../output.js';

type JsonOpts = ApiOpts & { json?: boolean };

function verifyLine(r: VerifyReport): string {
  const head = `group ${r.group}: ${bytes(r.comparedBytes)} compared at checkpoint ${r.checkpoint} in ${(r.elapsedMs / 1000).toFixed(1)} s`;
  if (!r.differences.length) return `${head}: the replica equals the source`;
  const ranges = r.differences.map(
    (d) => `  ${d.name ?? `volume ${d.volume}`} at ${d.offset}: ${bytes(d.length)}`,
  );
  const repaired = r.repair
    ? `repaired: ${bytes(r.repair.bytes)} resent, checkpoint ${r.repair.checkpoint ?? '-'}; ${r.recheck && !r.recheck.differences.length ? 'verified again: equal' : 'verified again: still differs'}`
    : '';
  return [`${head}: ${r.differences.length} range(s) differed`, ...ranges, repaired]
    .filter(Boolean)
    .join('\n');
}
const enc = encodeURIComponent;
const group = (name: string) => `/replication/groups/${enc(name)}`;

function state(g: ReplicationGroupAnswer): string {
  if (g.takenOver) return `taken over at ${g.takenOver.at} (checkpoint ${g.takenOver.checkpoint.seq})`;
  if (g.fenced) return `fenced: taken over by site ${g.fenced.by} at ${g.fenced.takenOverAt}`;
  if (g.source) return g.paused ? 'paused' : g.source.state;
  return g.target?.newestCheckpoint ? 'replica' : 'replica (no checkpoint yet)';
}

function rpo(g: ReplicationGroupAnswer): string {
  const s = g.source;
  if (!s) return g.target?.newestCheckpoint ? `newest ${g.target.newestCheckpoint.time}` : '-';
  if (s.rpoSeconds === undefined) return '-';
  return `${s.rpoSeconds.toFixed(1)} s${s.rpoMet ? '' : ` (objective ${g.rpoObjectiveSeconds} s: MISSED)`}`;
}

function showGroup(g: ReplicationGroupAnswer): string {
  const rows: [string, string | number][] = [
    ['group', g.name],
    [
      'role',
      g.role === 'source' ? `source, replicating to site ${g.peer}` : `target, replica of site ${g.peer}`,
    ],
    ['state', state(g)],
  ];
  if (g.vms) rows.push(['vms', g.vms.join(', ')]);
  rows.push([
    'volumes',
    g.volumes.map((v) => (v.source === v.replica ? v.source : `${v.source} → ${v.replica}`)).join(', '),
  ]);
  rows.push(['replica pool', g.pool]);
  const s = g.source;
  if (s) {
    rows.push(['link', `${s.link}${s.error ? ` (${s.error})` : ''}`]);
    rows.push(['rpo', rpo(g)]);
    rows.push([
      'checkpoint',
      s.appliedCheckpoint
        ? `${s.appliedCheckpoint.seq} at ${s.appliedCheckpoint.time}${s.appliedCheckpoint.name ? ` (${s.appliedCheckpoint.name})` : ''}`
        : '-',
    ]);
    rows.push(['lag', `${s.lag.records} records, ${bytes(s.lag.bytes)}`]);
    rows.push([
      'journal',
      `${bytes(s.journal.bytes)} of ${bytes(s.journal.maxBytes)} (${(s.journal.fill * 100).toFixed(1)}%)`,
    ]);
    rows.push(['throughput', `${bytes(s.throughputBytesPerSecond)}/s; ${bytes(s.sentBytes)} sent`]);
    if (s.scan)
      rows.push([
        'scan',
        `volume ${s.scan.volume} at ${bytes(s.scan.offset)} (${bytes(s.scan.readBytes)} read)`,
      ]);
    rows.push([
      'mode',
      `${g.sync ? `synchronous${s.sync?.degraded ? ' (degraded: asynchronous for now)' : ''}` : 'asynchronous'}, checkpoint every ${g.checkpointSeconds} s, limit ${g.bytesPerSecond ? `${bytes(g.bytesPerSecond)}/s` : 'none'}`,
    ]);
  }
  const t = g.target;
  if (t) {
    rows.push(['link', `${t.link}${t.error ? ` (${t.error})` : ''}`]);
    rows.push([
      'checkpoint',
      t.newestCheckpoint
        ? `${t.newestCheckpoint.seq} at ${t.newestCheckpoint.time} (snapshot ${t.newestCheckpoint.snapshot})`
        : '-',
    ]);
    rows.push(['history', `${t.checkpoints} checkpoint(s), kept ${g.keepSeconds} s`]);
    rows.push(['received', bytes(t.receivedBytes)]);
  }
  return fields(rows);
}

/** `haven replication …` */
export function registerReplication(program: Command): void {
  const r = program
    .command('replication')
    .description('continuous replication of consistency groups (the disks of VMs) to a paired site');

  apiOptions(r.command('enable'))
    .description("replicate the VMs' disks as one consistency group to a paired site")
    .argument('[vm...]', 'the VMs of the group (left out: those of resiliency group --group)')
    .requiredOption('--group <name>', 'the consistency group')
    .requiredOption('--to <site>', 'the paired site holding the replica')
    .requiredOption('--pool <pool>', 'the pool of that site for the replica volumes')
    .option('--rpo <duration>', 'recovery point objective (e.g. 5s)', '15s')
    .option(
      '--checkpoint-every <duration>',
      'a consistent point this often (default: from the RPO, at most 5 s)',
    )
    .option('--keep <duration>', 'how long the target keeps checkpoints (e.g. 1h, 7d)', '1h')
    .option('--sync', 'acknowledge a guest write only once the target journal holds it')
    .option('--no-compress', 'no zstd on the link')
    .option('--limit <size>', 'bandwidth limit per second (e.g. 50M)')
    .option('--journal <size>', "the source journal's bound (e.g. 1G)", '256M')
    .option(
      '--seeded',
      'the target site holds copies already (volumes of the same names on --pool, e.g. restored from a backup): send only what differs',
    )
    .option('--json', 'print JSON')
    .action(
      async (
        vms: string[],
        o: JsonOpts & {
          group: string;
          to: string;
          pool: string;
          rpo: string;
          checkpointEvery?: string;
          keep: string;
          sync?: boolean;
          compress: boolean;
          limit?: string;
          journal: string;
          seeded?: boolean;
        },
      ) => {
        const body: EnableReplicationRequest = {
          group: o.group,
          ...(vms.length ? { vms } : {}),
          to: o.to,
          pool: o.pool,
          rpoSeconds: parseDuration(o.rpo, '--rpo'),
          keepSeconds: parseDuration(o.keep, '--keep'),
          compress: o.compress,
          journalBytes: parseSize(o.journal, '--journal'),
          ...(o.checkpointEvery
            ? { checkpointSeconds: parseDuration(o.checkpointEvery, '--checkpoint-every') }
            : {}),
          ...(o.sync ? { sync: true } : {}),
          ...(o.seeded ? { seeded: true } : {}),
          ...(o.limit ? { bytesPerSecond: parseSize(o.limit, '--limit') } : {}),
        };
        const g = await connect(o).post<ReplicationGroupAnswer>('/replication/groups', body);
        printResult(!!o.json, g, () => showGroup(g));
      },
    );

  apiOptions(r.command('list'))
    .description('the groups this site replicates or holds replicas of')
    .option('--json', 'print JSON')
    .action(async (o: JsonOpts) => {
      const gs = await connect(o).get<ReplicationGroupAnswer[]>('/replication/groups');
      printResult(!!o.json, gs, () =>
        table([
          ['GROUP', 'ROLE', 'PEER', 'STATE', 'RPO', 'VOLUMES'],
          ...gs.map((g) => [g.name, g.role, g.peer, state(g), rpo(g), g.volumes.length]),
        ]),
      );
    });

  apiOptions(r.command('show'))
    .description("a group's state, RPO, lag, journal and link")
    .argument('<group>')
    .option('--json', 'print JSON')
    .action(async (name: string, o: JsonOpts) => {
      const g = await connect(o).get<ReplicationGroupAnswer>(group(name));
      printResult(!!o.json, g, () => showGroup(g));
    });

  for (const [verb, what] of [
    ['pause', 'stop shipping (changes are journaled, then marked in bitmaps once the journal is full)'],
    ['resume', 'ship again'],
  ] as const)
    apiOptions(r.command(verb))
      .description(what)
      .argument('<group>')
      .option('--json', 'print JSON')
      .action(async (name: string, o: JsonOpts) => {
        const g = await connect(o).post<ReplicationGroupAnswer>(`${group(name)}/${verb}`);
        printResult(!!o.json, g, () => showGroup(g));
      });

  apiOptions(r.command('limit'))
    .description("change the link's bandwidth limit while it runs")
    .argument('<group>')
    .argument('<size>', 'bytes per second (e.g. 20M; 0: unlimited)')
    .option('--json', 'print JSON')
    .action(async (name: string, size: string, o: JsonOpts) => {
      const g = await connect(o).call<ReplicationGroupAnswer>('PUT', `${group(name)}/limit`, {
        bytesPerSecond: size === '0' ? 0 : parseSize(size, 'limit'),
      });
      printResult(!!o.json, g, () => showGroup(g));
    });

  apiOptions(r.command('verify'))
    .description(
      'compare the replica with the source at a checkpoint (SHA-256 per extent on both sides); differences fail it, or are repaired with --repair',
    )
    .argument('<group>')
    .option('--repair', 'resend what differs through the journal, then verify again')
    .option('--no-wait', 'print the job and return')
    .option('--json', 'print JSON')
    .action(async (name: string, o: JsonOpts & { repair?: boolean; wait: boolean }) =>
      runJob(
        o,
        (c) => c.post<Job>(`${group(name)}/verify`, o.repair ? { repair: true } : {}),
        (j) => verifyLine(j.result as VerifyReport),
      ),
    );

  apiOptions(r.command('checkpoint'))
    .description('mark a consistent point of the whole group now')
    .argument('<group>')
    .option('--name <name>', 'e.g. before-upgrade')
    .option('--json', 'print JSON')
    .action(async (name: string, o: JsonOpts & { name?: string }) => {
      const cp = await connect(o).post<{ seq: number; name?: string }>(
        `${group(name)}/checkpoints`,
        o.name ? { name: o.name } : {},
      );
      printResult(!!o.json, cp, () => `checkpoint ${cp.name ?? cp.seq} (${cp.seq}) of group ${name}`);
    });

  apiOptions(r.command('checkpoints'))
    .description('the checkpoints the replica holds (any can be recovered), oldest first')
    .argument('<group>')
    .option('--json', 'print JSON')
    .action(async (name: string, o: JsonOpts) => {
      const cps = await connect(o).get<CheckpointAnswer[]>(`${group(name)}/checkpoints`);
      printResult(!!o.json, cps, () =>
        table([
          ['SEQ', 'TIME', 'NAME', 'SNAPSHOT'],
          ...cps.map((c) => [c.seq, c.time, c.name ?? '', c.snapshot]),
        ]),
      );
    });

  apiOptions(r.command('disable'))
    .description('stop replicating the group (the target keeps its replica volumes and checkpoints)')
    .argument('<group>')
    .option('--json', 'print JSON')
    .action(async (name: string, o: JsonOpts) => {
      const d = await connect(o).call<{ group: string; target?: string }>('DELETE', group(name));
      printResult(!!o.json, d, () => `replication group ${name} disabled${d.target ? `; ${d.target}` : ''}`);
    });
}
