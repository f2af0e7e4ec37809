import type { Database } from 'better-sqlite3';
import { readFileSync } from 'node:fs';
import { isAbsolute } from 'node:path';
import { errorMessage, invalidArgument, notFound } from '../../common/index.js';

/** A webhook: a JSON POST signed with HMAC-SHA256 over a secret the daemon reads from a file. */
export interface WebhookConfig {
  kind: 'webhook';
  url: string;
  secretFile: string;
}

/** Mail through an SMTP server; its password (if any) is in a file the daemon reads. */
export interface EmailConfig {
  kind: 'email';
  host: string;
  port: number;
  from: string;
  to: string[];
  user?: string;
  passwordFile?: string;
  /** Require TLS: implicit TLS on port 465, STARTTLS on any other (default: STARTTLS when offered). */
  tls?: boolean;
}

export type ChannelConfig = WebhookConfig | EmailConfig;

/** A notification channel as the API shows it (paths of secret files, never secrets). */
export type Channel = ChannelConfig & { id: number; createdAt: string };

/** What a client asks for (`smtp` as HOST:PORT). */
export type AddChannelRequest =
  | { kind: 'webhook'; url: string; secretFile: string }
  | {
      kind: 'email';
      smtp: string;
      from: string;
      to: string[];
      user?: string;
      passwordFile?: string;
      tls?: boolean;
    };

/** Reads a secret from a file: trimmed, not empty. Errors name the file, never its content. */
export function readSecretFile(path: string, what: string): string {
  if (!isAbsolute(path))
    throw invalidArgument(`${what} ${path} must be an absolute path (the daemon reads it)`);
  let s: string;
  try {
    s = readFileSync(path, 'utf8').trim();
  } catch (err) {
    throw invalidArgument(
      `${what} ${path} cannot be read by the site daemon (${errorMessage(err)}): create it, mode 0600, holding the secret`,
    );
  }
  if (!s) throw invalidArgument(`${what} ${path} is empty: put the secret in it`);
  return s;
}

const address = /^[^\s@<>]+@[^\s@<>]+$/;

/** Checks a request fully (URL, files readable, addresses) before anything is stored. */
export function checkChannel(req: AddChannelRequest): ChannelConfig {
  const given = req as Record<string, unknown>;
  const need = (fields: string[], other: string[]) => {
    for (const f of fields)
      if (given[f] === undefined) throw invalidArgument(`a ${req.kind} channel needs ${f}`);
    for (const f of other)
      if (given[f] !== undefined) throw invalidArgument(`${f} is not an option of a ${req.kind} channel`);
  };
  if (req.kind === 'webhook')
    need(['url', 'secretFile'], ['smtp', 'from', 'to', 'user', 'passwordFile', 'tls']);
  else if (req.kind === 'email') need(['smtp', 'from', 'to'], ['url', 'secretFile']);
  else throw invalidArgument(`unknown channel kind ${String(given.kind)}: use webhook or email`);
  if (req.kind === 'webhook') {
    let url: URL;
    try {
      url = new URL(req.url);
    } catch {
      throw invalidArgument(`webhook URL ${req.url} is not a URL: give e.g. https://hooks.example.com/haven`);
    }
    if (url.protocol !== 'https:' && url.protocol !== 'http:')
      throw invalidArgument(
        `webhook URL ${req.url} is not http(s): give e.g. https://hooks.example.com/haven`,
      );
    if (url.username || url.password)
      throw invalidArgument(
        `webhook URL ${url.host}: put no credentials in the URL (it is listed); the signature authenticates`,
      );
    readSecretFile(req.secretFile, 'webhook secret file');
    return { kind: 'webhook', url: url.toString(), secretFile: req.secretFile };
  }
  const m = /^(\[[^\]]+\]|[^:]+):(\d{1,5})$/.exec(req.smtp);
  const port = m ? Number(m[2]) : 0;
  if (!m || port < 1 || port > 65535)
    throw invalidArgument(`SMTP server ${req.smtp} is not HOST:PORT: give e.g. --smtp mail.example.com:587`);
  for (const a of [req.from, ...req.to])
    if (!address.test(a)) throw invalidArgument(`${a} is not an e-mail address: give e.g. ops@example.com`);
  if (req.to.length === 0) throw invalidArgument('an e-mail channel needs at least one recipient (--to)');
  if ((req.user === undefined) !== (req.passwordFile === undefined))
    throw invalidArgument('SMTP authentication needs both --user and --password-file (or neither)');
  if (req.passwordFile) readSecretFile(req.passwordFile, 'SMTP password file');
  return {
    kind: 'email',
    host: m[1]!.replace(/^\[|\]$/g, ''),
    port,
    from: req.from,
    to: req.to,
    ...(req.user !== undefined ? { user: req.user, passwordFile: req.passwordFile! } : {}),
    ...(req.tls ? { tls: true } : {}),
  };
}

interface ChannelRow {
  id: number;
  kind: string;
  config: string;
  created_at: string;
}

const toChannel = (r: ChannelRow): Channel => ({
  id: r.id,
  ...(JSON.parse(r.config) as ChannelConfig),
  createdAt: r.created_at,
});

export class Channels {
  constructor(private readonly db: Database) {}

  add(req: AddChannelRequest, time: string): Channel {
    const c = checkChannel(req);
    const r = this.db
      .prepare('INSERT INTO alert_channels (kind, config, created_at) VALUES (?, ?, ?)')
      .run(c.kind, JSON.stringify(c), time);
    return this.get(Number(r.lastInsertRowid));
  }

  get(id: number): Channel {
    const r = this.db.prepare('SELECT * FROM alert_channels WHERE id = ?').get(id) as ChannelRow | undefined;
    if (!r) throw notFound(`no notification channel ${id}: see haven alert notify list`);
    return toChannel(r);
  }

  list(): Channel[] {
    return (this.db.prepare('SELECT * FROM alert_channels ORDER BY id').all() as ChannelRow[]).map(toChannel);
  }

  /** Removes it and its pending deliveries. */
  remove(id: number): Channel {
    const c = this.get(id);
    this.db.prepare('DELETE FROM alert_channels WHERE id = ?').run(id);
    return c;
  }
}

/** A channel in a line of the event log. */
export function describeChannel(c: ChannelConfig): string {
  if (c.kind === 'webhook') {
    const u = new URL(c.url);
    return `webhook ${u.origin}${u.pathname}`;
  }
  return `e-mail to ${c.to.join(', ')} via ${c.host}:${c.port}`;
}
