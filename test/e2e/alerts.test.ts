// Alerts end to end, with a real daemon: a backup that fails (its repository is not there)
// fires an alert that reaches a webhook receiver (signature checked) and an SMTP server started
// here; the next successful backup of the volume resolves it, and that goes out too. A silence
// keeps a notification back while the alert is recorded; a receiver that answers 500 twice gets
// the delivery on the third try; bad input is refused and stores nothing.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { createServer, type IncomingMessage } from 'node:http';
import type { AddressInfo } from 'node:net';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { SMTPServer } from 'smtp-server';
import { site } from '../support/site.js';

interface Hit {
  body: string;
  json: {
    type: string;
    site: string;
    timestamp: number;
    summary: string;
    alert?: { id: number; rule: string; object: string; state: string };
  };
  headers: IncomingMessage['headers'];
}

/** An HTTP receiver answering `statuses` in turn, then 200; `until(pred)` waits for such a request. */
async function webhookReceiver(t: { after: (fn: () => unknown) => void }, statuses: number[] = []) {
  const hits: Hit[] = [];
  let wake: () => void = () => undefined;
  const server = createServer((req, res) => {
    let body = '';
    req.on('data', (d: Buffer) => (body += d.toString()));
    req.on('end', () => {
      hits.push({ body, json: JSON.parse(body) as Hit['json'], headers: req.headers });
      res.statusCode = statuses.shift() ?? 200;
      res.end();
      wake();
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.after(() => new Promise<void>((r) => server.close(() => r())));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/haven`,
    hits,
    async until(pred: (h: Hit) => boolean, what: string, ms = 20_000): Promise<Hit> {
      const deadline = Date.now() + ms;
      for (;;) {
        const h = hits.find(pred);
        if (h) return h;
        const left = deadline - Date.now();
        if (left <= 0)
          throw new Error(`the webhook never got ${what}; it got: ${hits.map((x) => x.body).join('\n')}`);
        await new Promise<void>((r) => {
          const timer = setTimeout(r, left);
          wake = () => (clearTimeout(timer), r());
        });
      }
    },
  };
}

async function smtpReceiver(t: { after: (fn: () => unknown) => void }) {
  const mails: { to: string[]; data: string }[] = [];
  let wake: () => void = () => undefined;
  const server = new SMTPServer({
    disabledCommands: ['STARTTLS', 'AUTH'],
    onData: (stream, session, cb) => {
      let data = '';
      stream.on('data', (d: Buffer) => (data += d.toString()));
      stream.on('end', () => {
        mails.push({ to: session.envelope.rcptTo.map((r) => r.address), data });
        cb();
        wake();
      });
    },
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.after(() => new Promise<void>((r) => server.close(() => r())));
  return {
    address: `127.0.0.1:${(server.server.address() as AddressInfo).port}`,
    mails,
    async until(re: RegExp, ms = 20_000): Promise<string> {
      const deadline = Date.now() + ms;
      for (;;) {
        const m = mails.find((x) => re.test(x.data));
        if (m) return m.data;
        const left = deadline - Date.now();
        if (left <= 0)
          throw new Error(`no mail matched ${re}; got:\n${mails.map((x) => x.data).join('\n---\n')}`);
        await new Promise<void>((r) => {
          const timer = setTimeout(r, left);
          wake = () => (clearTimeout(timer), r());
        });
      }
    },
  };
}

function assertSigned(h: Hit, secret: string): void {
  const ts = h.headers['x-haven-timestamp'] as string;
  assert.equal(String(h.json.timestamp), ts, 'the timestamp is inside the signed body');
  assert.ok(Math.abs(Date.now() / 1000 - Number(ts)) < 120, 'and recent');
  const want = 'sha256=' + createHmac('sha256', secret).update(`${ts}.${h.body}`).digest('hex');
  assert.equal(h.headers['x-haven-signature'], want, 'HMAC-SHA256 over TIMESTAMP.BODY with the secret');
}

interface AlertJson {
  id: number;
  rule: string;
  object: string;
  state: string;
  count: number;
  silencedBy?: number;
  notified: boolean;
}

test('a failed backup fires an alert to a webhook and by mail; the next good backup resolves it; silences, retries, bad input', async (t) => {
  const s = await site(t);
  const work = join(s.dir, '..');
  const hook = await webhookReceiver(t);
  const smtp = await smtpReceiver(t);
  const secretFile = join(work, 'webhook-secret');
  writeFileSync(secretFile, 'correct horse battery staple\n', { mode: 0o600 });

  const wh = JSON.parse(
    await s.haven('alert', 'notify', 'add', 'webhook', hook.url, '--secret-file', secretFile, '--json'),
  ) as { id: number };
  const mail = JSON.parse(
    await s.haven(
      'alert',
      'notify',
      'add',
      'email',
      '--smtp',
      smtp.address,
      '--from',
      'haven@example.com',
      '--to',
      'ops@example.com',
      '--json',
    ),
  ) as { id: number };
  assert.match(await s.haven('alert', 'notify', 'list'), new RegExp(`${wh.id}\\s+webhook\\s+${hook.url}`));

  // The test notification: both channels, at once.
  await s.haven('alert', 'notify', 'test', String(wh.id));
  assertSigned(
    await hook.until((h) => h.json.type === 'alert.test', 'the test'),
    'correct horse battery staple',
  );
  await s.haven('alert', 'notify', 'test', String(mail.id));
  await smtp.until(/test notification/);

  // A backup into a repository that is not there fails: the alert fires and goes out.
  await s.haven('volume', 'create', 'v1', '--size', '8M');
  const repo = join(work, 'repo');
  assert.match(await s.havenFails('backup', 'volume:v1', '--repo', repo), /repo/i);
  const fire = await hook.until((h) => h.json.type === 'alert.fire', 'the fire');
  assertSigned(fire, 'correct horse battery staple');
  assert.equal(fire.json.alert?.rule, 'job.failed');
  assert.equal(fire.json.alert?.object, 'volume.backup:v1');
  assert.equal(fire.json.site, JSON.parse(await s.haven('site', 'show', '--json')).name);
  const firing = await smtp.until(/FIRING: job\.failed volume\.backup:v1/);
  assert.match(firing, /To: ops@example\.com/);
  let open = JSON.parse(await s.haven('alert', 'list', '--state', 'open', '--json')) as AlertJson[];
  assert.deepEqual(
    open.map((a) => [a.rule, a.object, a.count, a.notified]),
    [['job.failed', 'volume.backup:v1', 1, true]],
  );
  assert.match(await s.haven('alert', 'list'), /open\s+job\.failed\s+volume\.backup:v1\s+1/);

  // The next good backup of the volume resolves it, and says so to both.
  await s.haven('repo', 'init', '--repo', repo);
  await s.haven('backup', 'volume:v1', '--repo', repo);
  const resolved = await hook.until((h) => h.json.type === 'alert.resolve', 'the resolve');
  assertSigned(resolved, 'correct horse battery staple');
  assert.equal(resolved.json.alert?.id, fire.json.alert?.id);
  assert.equal(resolved.json.alert?.state, 'resolved');
  await smtp.until(/RESOLVED: job\.failed volume\.backup:v1/);
  assert.deepEqual(JSON.parse(await s.haven('alert', 'list', '--state', 'open', '--json')), []);

  // A silence: the alert records but notifies no one.
  const silence = JSON.parse(
    await s.haven('alert', 'silence', 'job.failed', '--for', '2h', '--comment', 'repository move', '--json'),
  ) as { id: number; rule: string; expiresAt: string };
  assert.equal(silence.rule, 'job.failed');
  assert.ok(Date.parse(silence.expiresAt) - Date.now() > 7000 * 1000);
  assert.match(await s.haven('alert', 'silences'), /job\.failed .*repository move/);
  await s.haven('volume', 'create', 'v2', '--size', '8M');
  await s.havenFails('backup', 'volume:v2', '--repo', join(work, 'nowhere'));
  open = JSON.parse(await s.haven('alert', 'list', '--state', 'open', '--json')) as AlertJson[];
  assert.deepEqual(
    open.map((a) => [a.object, a.silencedBy, a.notified]),
    [['volume.backup:v2', silence.id, false]],
  );

  // A second receiver that answers 500 twice; the silence lifted; the next failure goes out to
  // both, the second one on its third try. v2's silenced alert never went out.
  const flaky = await webhookReceiver(t, [500, 500]);
  await s.haven('alert', 'notify', 'add', 'webhook', flaky.url, '--secret-file', secretFile);
  await s.haven('alert', 'unsilence', String(silence.id));
  assert.match(await s.haven('alert', 'silences'), /no silences/);
  await s.haven('volume', 'create', 'v3', '--size', '8M');
  await s.havenFails('backup', 'volume:v3', '--repo', join(work, 'nowhere'));
  await hook.until((h) => h.json.alert?.object === 'volume.backup:v3', "v3's fire");
  const third = await flaky.until(
    (h) => h.json.alert?.object === 'volume.backup:v3' && flaky.hits.length >= 3,
    'the third try',
  );
  assert.equal(flaky.hits.length, 3);
  assertSigned(third, 'correct horse battery staple');
  assert.equal(
    new Set(flaky.hits.map((h) => h.headers['x-haven-delivery'])).size,
    1,
    'one delivery, three attempts',
  );
  assert.ok(
    !hook.hits.some((h) => h.json.alert?.object === 'volume.backup:v2'),
    'the silenced alert was not sent',
  );
  await smtp.until(/FIRING: job\.failed volume\.backup:v3/);
  assert.ok(!smtp.mails.some((m) => m.data.includes('volume.backup:v2')));

  // Bad input: clear errors, nothing stored.
  const channels = await s.haven('alert', 'notify', 'list', '--json');
  assert.match(
    await s.havenFails(
      'alert',
      'notify',
      'add',
      'webhook',
      'hooks.example.com/x',
      '--secret-file',
      secretFile,
    ),
    /invalid argument: webhook URL hooks\.example\.com\/x is not a URL: give e\.g\. https:/,
  );
  assert.match(
    await s.havenFails(
      'alert',
      'notify',
      'add',
      'webhook',
      'https://hooks.example.com/x',
      '--secret-file',
      join(work, 'no-such-secret'),
    ),
    /webhook secret file .*no-such-secret cannot be read by the site daemon .*ENOENT/,
  );
  assert.match(
    await s.havenFails(
      'alert',
      'notify',
      'add',
      'email',
      '--smtp',
      'mail.example.com',
      '--from',
      'a@example.com',
      '--to',
      'b@example.com',
    ),
    /SMTP server mail\.example\.com is not HOST:PORT/,
  );
  assert.match(
    await s.havenFails('alert', 'silence', 'job.faild', '--for', '1h'),
    /unknown alert rule job\.faild: give an alert's id or one of .*job\.failed/,
  );
  assert.match(
    await s.havenFails('alert', 'silence', 'job.failed', '--for', 'soon'),
    /--for "soon" is not a duration/,
  );
  assert.match(await s.havenFails('alert', 'silence', '9999', '--for', '1h'), /not found: no alert 9999/);
  assert.match(await s.havenFails('alert', 'notify', 'remove', '9999'), /no notification channel 9999/);
  assert.equal(await s.haven('alert', 'notify', 'list', '--json'), channels);
  assert.deepEqual(JSON.parse(await s.haven('alert', 'silences', '--json')), []);

  // The event log has the alerts' own events; the secret is nowhere in it.
  const events = await s.haven('event', 'list', '--json', '--limit', '1000');
  assert.match(events, /"action": "alert\.fire"/);
  assert.match(events, /"action": "alert\.resolve"/);
  assert.ok(!events.includes('correct horse'));
});
