import { createHmac } from 'node:crypto';
import { createTransport } from 'nodemailer';
import { HavenError } from '../../common/index.js';
import { readSecretFile, type EmailConfig, type WebhookConfig } from './channels.js';
import type { Alert } from './store.js';

/** What goes out: an alert fired or resolved, or a test. */
export interface Notification {
  type: 'alert.fire' | 'alert.resolve' | 'alert.test';
  site: string;
  /** One sentence for a human (the subject of a mail). */
  summary: string;
  alert?: Alert;
}

/** Each attempt may take this long before it counts as failed. */
const SEND_TIMEOUT_MS = 10_000;

export const SIGNATURE_HEADER = 'x-haven-signature';
export const TIMESTAMP_HEADER = 'x-haven-timestamp';

/**
 * The signature of a webhook body: HMAC-SHA256 of `TIMESTAMP.BODY` with the secret, hex, as
 * "sha256=…". The timestamp (Unix seconds) is in the signed text and in the body, so a receiver
 * that refuses old timestamps cannot be fed a recorded delivery again.
 */
export function webhookSignature(secret: string, timestamp: number, body: string): string {
  return 'sha256=' + createHmac('sha256', secret).update(`${timestamp}.${body}`).digest('hex');
}

/** One POST; signed afresh at each attempt (a retry carries a new timestamp). */
export async function sendWebhook(
  c: WebhookConfig,
  n: Notification,
  delivery: number,
  version: string,
): Promise<void> {
  const secret = readSecretFile(c.secretFile, 'webhook secret file');
  const timestamp = Math.floor(Date.now() / 1000);
  const body = JSON.stringify({ ...n, delivery, timestamp });
  let res: Response;
  try {
    res = await fetch(c.url, {
      method: 'POST',
      redirect: 'manual',
      signal: AbortSignal.timeout(SEND_TIMEOUT_MS),
      headers: {
        'content-type': 'application/json',
        'user-agent': `haven/${version}`,
        'x-haven-delivery': String(delivery),
        [TIMESTAMP_HEADER]: String(timestamp),
        [SIGNATURE_HEADER]: webhookSignature(secret, timestamp, body),
      },
      body,
    });
  } catch (err) {
    const cause = (err as { cause?: { code?: string; message?: string } }).cause;
    throw new HavenError(
      'IO',
      `webhook ${originOf(c.url)}: ${cause?.code ?? cause?.message ?? (err as Error).message}`,
    );
  }
  await res.body?.cancel().catch(() => undefined);
  if (res.status < 200 || res.status > 299)
    throw new HavenError('PROTOCOL', `webhook ${originOf(c.url)} answered ${res.status} ${res.statusText}`);
}

function originOf(url: string): string {
  const u = new URL(url);
  return u.origin + u.pathname;
}

/** One mail through the channel's SMTP server. */
export async function sendEmail(c: EmailConfig, n: Notification): Promise<void> {
  const pass = c.passwordFile ? readSecretFile(c.passwordFile, 'SMTP password file') : undefined;
  const implicit = c.tls === true && c.port === 465;
  const transport = createTransport({
    host: c.host,
    port: c.port,
    secure: implicit,
    requireTLS: c.tls === true && !implicit,
    ...(c.user !== undefined ? { auth: { user: c.user, pass: pass! } } : {}),
    connectionTimeout: SEND_TIMEOUT_MS,
    greetingTimeout: SEND_TIMEOUT_MS,
    socketTimeout: SEND_TIMEOUT_MS,
    logger: false,
  });
  try {
    await transport.sendMail({ from: c.from, to: c.to, subject: n.summary, text: mailText(n) });
  } catch (err) {
    const e = err as { code?: string; responseCode?: number; message?: string };
    // nodemailer's messages name the server and the reply, never the password.
    throw new HavenError(
      'IO',
      `SMTP ${c.host}:${c.port}: ${e.responseCode ?? e.code ?? ''} ${e.message ?? ''}`.trim(),
    );
  } finally {
    transport.close();
  }
}

function mailText(n: Notification): string {
  const a = n.alert;
  const lines = [n.summary, ''];
  if (a)
    lines.push(
      `alert:      ${a.id}`,
      `rule:       ${a.rule} (${a.severity})`,
      `object:     ${a.object}`,
      `state:      ${a.state}`,
      `message:    ${a.message}`,
      `seen:       ${a.count} time(s), first ${a.firstSeen}, last ${a.lastSeen}`,
      ...(a.resolvedAt ? [`resolved:   ${a.resolvedAt}`] : []),
    );
  lines.push('', `site ${n.site}: haven alert list`);
  return lines.join('\n') + '\n';
}
