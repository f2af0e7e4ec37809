import { resolve } from 'node:path';
import type { Command } from 'commander';
import { invalidArgument } from '../../common/index.js';
import type { AddChannelRequest, Alert, Channel, RuleInfo, Silence } from '../../orchestration/index.js';
import { apiOptions, connect, type ApiOpts } from '../api.js';
import { parseDuration, table } from '../args.js';
import { fields, printResult } from '../output.js';

type JsonOpts = ApiOpts & { json?: boolean };

function channelLine(c: Channel): string {
  if (c.kind === 'webhook') return `${c.url} (secret ${c.secretFile})`;
  return `${c.to.join(', ')} from ${c.from} via ${c.host}:${c.port}${c.tls ? ' (TLS required)' : ''}${c.user ? ` as ${c.user}` : ''}`;
}

function showAlert(a: Alert): string {
  return fields([
    ['alert', a.id],
    ['rule', `${a.rule} (${a.severity})`],
    ['object', a.object],
    ['state', a.state + (a.silencedBy !== undefined ? ` (silenced by silence ${a.silencedBy})` : '')],
    ['message', a.message],
    ['seen', `${a.count} time(s), first ${a.firstSeen}, last ${a.lastSeen}`],
    ...(a.resolvedAt ? ([['resolved', a.resolvedAt]] as [string, string][]) : []),
    ['notified', a.notified ? 'yes' : 'no'],
  ]);
}

/** `haven alert …` */
export function registerAlert(program: Command): void {
  const alert = program
    .command('alert')
    .description(
      'alerts of the site (failed jobs, missed backups, RPO, full pools …), silences and notifications',
    );

  apiOptions(alert.command('list'))
    .description('the alerts, newest first')
    .option('--state <state>', 'open or resolved')
    .option('--rule <rule>', 'only this rule')
    .option('--limit <n>', 'at most this many', '100')
    .option('--json', 'print JSON')
    .action(async (o: JsonOpts & { state?: string; rule?: string; limit: string }) => {
      if (!/^\d{1,4}$/.test(o.limit)) throw invalidArgument(`--limit "${o.limit}" is not a number`);
      const q = new URLSearchParams({ limit: o.limit });
      if (o.state) q.set('state', o.state);
      if (o.rule) q.set('rule', o.rule);
      const list = await connect(o).get<Alert[]>(`/alerts?${q}`);
      printResult(!!o.json, list, () =>
        list.length === 0
          ? 'no alerts'
          : table([
              ['ID', 'STATE', 'RULE', 'OBJECT', 'COUNT', 'LAST SEEN', 'MESSAGE'],
              ...list.map((a) => [
                a.id,
                a.state + (a.silencedBy !== undefined ? ' (silenced)' : ''),
                a.rule,
                a.object,
                a.count,
                a.lastSeen,
                a.message,
              ]),
            ]),
      );
    });

  apiOptions(alert.command('show'))
    .description('one alert')
    .argument('<id>')
    .option('--json', 'print JSON')
    .action(async (id: string, o: JsonOpts) => {
      const a = await connect(o).get<Alert>(`/alerts/${encodeURIComponent(id)}`);
      printResult(!!o.json, a, () => showAlert(a));
    });

  apiOptions(alert.command('rules'))
    .description('the alert rules')
    .option('--json', 'print JSON')
    .action(async (o: JsonOpts) => {
      const rules = await connect(o).get<RuleInfo[]>('/alerts/rules');
      printResult(!!o.json, rules, () =>
        table([
          ['RULE', 'SEVERITY', 'DESCRIPTION'],
          ...rules.map((r) => [r.name, r.severity, r.description]),
        ]),
      );
    });

  apiOptions(alert.command('silence'))
    .description(
      "hold back the notifications of a rule's alerts (or one alert's) for a while; they still record",
    )
    .argument('<rule|alert-id>', 'a rule name (see haven alert rules) or an alert id')
    .requiredOption('--for <duration>', 'how long (e.g. 2h, 30m, 7d)')
    .option('--comment <text>', 'why')
    .option('--json', 'print JSON')
    .action(async (target: string, o: JsonOpts & { for: string; comment?: string }) => {
      const s = await connect(o).post<Silence>('/alerts/silences', {
        target,
        forSeconds: parseDuration(o.for, '--for'),
        ...(o.comment !== undefined ? { comment: o.comment } : {}),
      });
      printResult(!!o.json, s, () => `silence ${s.id}: ${s.rule ?? `alert ${s.alert}`} until ${s.expiresAt}`);
    });

  apiOptions(alert.command('silences'))
    .description('the silences in force')
    .option('--json', 'print JSON')
    .action(async (o: JsonOpts) => {
      const list = await connect(o).get<Silence[]>('/alerts/silences');
      printResult(!!o.json, list, () =>
        list.length === 0
          ? 'no silences'
          : table([
              ['ID', 'SILENCES', 'UNTIL', 'BY', 'COMMENT'],
              ...list.map((s) => [s.id, s.rule ?? `alert ${s.alert}`, s.expiresAt, s.actor, s.comment ?? '']),
            ]),
      );
    });

  apiOptions(alert.command('unsilence'))
    .description('remove a silence before it expires')
    .argument('<silence-id>')
    .option('--json', 'print JSON')
    .action(async (id: string, o: JsonOpts) => {
      const s = await connect(o).call<Silence>('DELETE', `/alerts/silences/${encodeURIComponent(id)}`);
      printResult(!!o.json, s, () => `silence ${id} removed`);
    });

  const notify = alert.command('notify').description('where alerts are sent: webhooks and e-mail');
  const add = notify.command('add').description('send alerts to a webhook or by e-mail');
  apiOptions(add.command('webhook'))
    .description(
      'POST each alert as JSON, signed with HMAC-SHA256 (header x-haven-signature over "TIMESTAMP.BODY")',
    )
    .argument('<url>', 'http(s) URL')
    .requiredOption(
      '--secret-file <file>',
      'the shared secret, in a file the site daemon can read (mode 0600)',
    )
    .option('--json', 'print JSON')
    .action(async (url: string, o: JsonOpts & { secretFile: string }) => {
      const body: AddChannelRequest = { kind: 'webhook', url, secretFile: resolve(o.secretFile) };
      const c = await connect(o).post<Channel>('/alerts/channels', body);
      printResult(!!o.json, c, () => `channel ${c.id}: webhook ${channelLine(c)}`);
    });
  apiOptions(add.command('email'))
    .description('mail each alert through an SMTP server')
    .requiredOption('--smtp <host:port>', 'the SMTP server (e.g. mail.example.com:587)')
    .requiredOption('--from <address>', 'the sender')
    .requiredOption('--to <address...>', 'the recipients')
    .option('--user <user>', 'SMTP user (with --password-file)')
    .option('--password-file <file>', "the SMTP user's password, in a file the site daemon can read")
    .option(
      '--tls',
      'require TLS: implicit TLS on port 465, STARTTLS on others (default: STARTTLS when offered)',
    )
    .option('--json', 'print JSON')
    .action(
      async (
        o: JsonOpts & {
          smtp: string;
          from: string;
          to: string[];
          user?: string;
          passwordFile?: string;
          tls?: boolean;
        },
      ) => {
        const body: AddChannelRequest = {
          kind: 'email',
          smtp: o.smtp,
          from: o.from,
          to: o.to,
          ...(o.user !== undefined ? { user: o.user } : {}),
          ...(o.passwordFile !== undefined ? { passwordFile: resolve(o.passwordFile) } : {}),
          ...(o.tls ? { tls: true } : {}),
        };
        const c = await connect(o).post<Channel>('/alerts/channels', body);
        printResult(!!o.json, c, () => `channel ${c.id}: e-mail ${channelLine(c)}`);
      },
    );
  apiOptions(notify.command('list'))
    .description('the notification channels')
    .option('--json', 'print JSON')
    .action(async (o: JsonOpts) => {
      const list = await connect(o).get<Channel[]>('/alerts/channels');
      printResult(!!o.json, list, () =>
        list.length === 0
          ? 'no notification channels'
          : table([['ID', 'KIND', 'TO'], ...list.map((c) => [c.id, c.kind, channelLine(c)])]),
      );
    });
  apiOptions(notify.command('remove'))
    .description('stop sending alerts to a channel (its pending deliveries go too)')
    .argument('<id>')
    .option('--json', 'print JSON')
    .action(async (id: string, o: JsonOpts) => {
      const c = await connect(o).call<Channel>('DELETE', `/alerts/channels/${encodeURIComponent(id)}`);
      printResult(!!o.json, c, () => `channel ${c.id} removed`);
    });
  apiOptions(notify.command('test'))
    .description('send a test notification to a channel now')
    .argument('<id>')
    .option('--json', 'print JSON')
    .action(async (id: string, o: JsonOpts) => {
      const r = await connect(o).post<{ channel: number; sent: boolean }>(
        `/alerts/channels/${encodeURIComponent(id)}/test`,
      );
      printResult(!!o.json, r, () => `test notification sent to channel ${id}`);
    });
}
