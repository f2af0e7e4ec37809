// Notifications to real receivers on loopback: an HTTP server that checks the signature, and
// smtp-server. Retries with backoff, silences, the bounded queue, and bad channel input.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { SMTPServer } from 'smtp-server';
import { HavenError } from '../../common/index.js';
import { tempDir } from '../../../test/support/tmp.js';
import { openDatabase } from '../site/database.js';
import { EventLog } from '../site/events.js';
import { JobManager } from '../site/jobs.js';
import { SiteAlerts, type AlertOptions } from './alerts.js';
import { webhookSignature } from './senders.js';

function open(path: string, opts: AlertOptions = {}) {
  const db = openDatabase(join(path, 'site.db'));
  const events = new EventLog(db);
  const jobs = new JobManager(db, events);
  const alerts = new SiteAlerts(
    {
      site: 'test',
      version: '0',
      db,
      events,
      job: (id) => {
        const code = jobs.get(id).errorCode;
        return code ? { errorCode: code } : {};
      },
      pools: () => [],
      replication: () => [],
      recoveries: () => [],
    },
    { checkIntervalSeconds: 3600, delivery: { retryBaseMs: 50 }, ...opts },
  );
  alerts.start();
  return {
    db,
    events,
    jobs,
    alerts,
    close: async () => {
      await alerts.close();
      db.close();
    },
  };
}

function failJob(jobs: JobManager, kind: string, target: string, ok = false): Promise<void> {
  return new Promise((resolve) => {
    const j = jobs.start({ kind, target, actor: 'tester' }, async () => {
      if (!ok) throw new HavenError('IO', 'the repository is gone');
      return {};
    });
    const on = (u: { id: string; state: string }) => {
      if (u.id !== j.id || u.state === 'running') return;
      jobs.off('update', on);
      resolve();
    };
    jobs.on('update', on);
  });
}

interface Hit {
  body: string;
  json: { type: string; timestamp: number; alert?: { id: number; object: string; state: string } };
  headers: IncomingMessage['headers'];
}

/** A webhook receiver answering `statuses` in turn (then 200); `next()` waits for the next request. */
async function receiver(statuses: number[] = []) {
  const hits: Hit[] = [];
  const waiters: ((h: Hit) => void)[] = [];
  const server: Server = createServer((req, res) => {
    let body = '';
    req.on('data', (d: Buffer) => (body += d.toString()));
    req.on('end', () => {
      const h: Hit = { body, json: JSON.parse(body) as Hit['json'], headers: req.headers };
      hits.push(h);
      res.statusCode = statuses.shift() ?? 200;
      res.end();
      waiters.shift()?.(h);
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/hook`,
    hits,
    next: () => new Promise<Hit>((r) => waiters.push(r)),
    close: () => new Promise<void>((r) => server.close(() => r())),
  };
}

/** Until every delivery is done (the receiver answers before the queue forgets it). */
async function drained(alerts: SiteAlerts): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (alerts.pendingDeliveries() > 0) {
    assert.ok(Date.now() < deadline, 'deliveries still pending');
    await new Promise((r) => setTimeout(r, 10));
  }
}

function checkSignature(h: Hit, secret: string): void {
  const t = Number(h.headers['x-haven-timestamp']);
  assert.equal(h.json.timestamp, t, 'the timestamp is in the signed body');
  assert.ok(Math.abs(Date.now() / 1000 - t) < 60, 'a fresh timestamp');
  assert.equal(h.headers['x-haven-signature'], webhookSignature(secret, t, h.body));
}

test('a webhook that answers 500 twice gets the delivery on the third try, signed afresh each time', async (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  const hook = await receiver([500, 500]);
  t.after(hook.close);
  const s = open(dir.path);
  t.after(() => s.close());
  const secretFile = join(dir.path, 'secret');
  writeFileSync(secretFile, 'sesame\n', { mode: 0o600 });
  s.alerts.addChannel('tester', { kind: 'webhook', url: hook.url, secretFile });
  const three = Promise.all([hook.next(), hook.next(), hook.next()]);
  const t0 = Date.now();
  await failJob(s.jobs, 'vm.backup', 'app1');
  const hits = await three;
  for (const h of hits) {
    checkSignature(h, 'sesame');
    assert.equal(h.json.type, 'alert.fire');
    assert.equal(h.json.alert?.object, 'vm.backup:app1');
  }
  assert.ok(Date.now() - t0 >= 150, 'backoff: 50 ms, then 100 ms');
  assert.equal(
    new Set(hits.map((h) => h.headers['x-haven-delivery'])).size,
    1,
    'one delivery, three attempts',
  );
  await drained(s.alerts);
  // The secret is nowhere in what the site keeps.
  assert.ok(!JSON.stringify(s.events.query({ limit: 1000 })).includes('sesame'));
  assert.ok(!JSON.stringify(s.alerts.channels()).includes('sesame'));
});

test('a silenced rule records its alert but notifies no one; the resolve of a notified alert goes out', async (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  const hook = await receiver();
  t.after(hook.close);
  const s = open(dir.path);
  t.after(() => s.close());
  const secretFile = join(dir.path, 'secret');
  writeFileSync(secretFile, 'k');
  s.alerts.addChannel('tester', { kind: 'webhook', url: hook.url, secretFile });
  const silence = s.alerts.silence('tester', 'job.failed', 3600, 'maintenance');
  await failJob(s.jobs, 'vm.backup', 'quiet');
  const [quiet] = s.alerts.list({ state: 'open' });
  assert.equal(quiet?.object, 'vm.backup:quiet');
  assert.equal(quiet?.silencedBy, silence.id);
  assert.equal(quiet?.notified, false);
  assert.equal(s.alerts.pendingDeliveries(), 0);
  assert.match(s.events.query({ action: 'alert.fire' })[0]!.message, /silenced by silence/);

  s.alerts.unsilence('tester', silence.id);
  const fire = hook.next();
  await failJob(s.jobs, 'vm.backup', 'loud');
  assert.equal((await fire).json.alert?.object, 'vm.backup:loud');
  const resolve = hook.next();
  await failJob(s.jobs, 'vm.backup', 'loud', true);
  const r = await resolve;
  assert.equal(r.json.type, 'alert.resolve');
  assert.equal(r.json.alert?.state, 'resolved');
  // The silenced alert's resolve is not sent either (no one was told it fired).
  await failJob(s.jobs, 'vm.backup', 'quiet', true);
  await drained(s.alerts);
  assert.equal(hook.hits.length, 2);
});

test('the queue is bounded: beyond it the oldest delivery is dropped, and the log says so', async (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  const s = open(dir.path, { delivery: { retryBaseMs: 60_000, maxPending: 2 } });
  t.after(() => s.close());
  const secretFile = join(dir.path, 'secret');
  writeFileSync(secretFile, 'k');
  // Nothing listens on port 9 of loopback: every attempt fails and waits a minute.
  s.alerts.addChannel('tester', { kind: 'webhook', url: 'http://127.0.0.1:9/', secretFile });
  for (const v of ['a', 'b', 'c']) await failJob(s.jobs, 'volume.backup', v);
  assert.equal(s.alerts.pendingDeliveries(), 2);
  const lost = s.events.query({ action: 'alert.notify' });
  assert.equal(lost.length, 1);
  assert.match(lost[0]!.message, /dropped: more than 2 deliveries waiting/);
});

test('e-mail through a real SMTP server, with authentication from a password file', async (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  const mails: { from: string; to: string[]; data: string; user?: string }[] = [];
  let got!: () => void;
  const arrived = new Promise<void>((r) => (got = r));
  const smtp = new SMTPServer({
    disabledCommands: ['STARTTLS'],
    allowInsecureAuth: true,
    onAuth: (auth, _session, cb) =>
      auth.username === 'haven' && auth.password === 'p4ss'
        ? cb(null, { user: 'haven' })
        : cb(new Error('bad credentials')),
    onData: (stream, session, cb) => {
      let data = '';
      stream.on('data', (d: Buffer) => (data += d.toString()));
      stream.on('end', () => {
        mails.push({
          from: session.envelope.mailFrom ? session.envelope.mailFrom.address : '',
          to: session.envelope.rcptTo.map((r) => r.address),
          data,
          ...(session.user ? { user: String(session.user) } : {}),
        });
        cb();
        got();
      });
    },
  });
  await new Promise<void>((r) => smtp.listen(0, '127.0.0.1', r));
  t.after(() => new Promise<void>((r) => smtp.close(() => r())));
  const port = (smtp.server.address() as AddressInfo).port;
  const s = open(dir.path);
  t.after(() => s.close());
  const passwordFile = join(dir.path, 'smtp-password');
  writeFileSync(passwordFile, 'p4ss\n');
  const c = s.alerts.addChannel('tester', {
    kind: 'email',
    smtp: `127.0.0.1:${port}`,
    from: 'haven@example.com',
    to: ['ops@example.com'],
    user: 'haven',
    passwordFile,
  });
  assert.deepEqual(await s.alerts.testChannel('tester', c.id), { channel: c.id, sent: true });
  await arrived;
  assert.equal(mails[0]!.user, 'haven');
  assert.deepEqual(mails[0]!.to, ['ops@example.com']);
  assert.match(mails[0]!.data, /Subject: \[haven test\] test notification/);
  assert.ok(!JSON.stringify(s.events.query({ limit: 1000 })).includes('p4ss'));

  // A wrong password: the test says why, and names no password.
  writeFileSync(passwordFile, 'wrong');
  await assert.rejects(s.alerts.testChannel('tester', c.id), (err: Error) => {
    assert.match(err.message, /SMTP 127\.0\.0\.1:\d+: 535/);
    assert.ok(!err.message.includes('wrong'));
    return true;
  });
});

test('bad channels: a bad URL, a missing or empty secret file, a bad SMTP address: clear errors, nothing stored', async (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  const s = open(dir.path);
  t.after(() => s.close());
  const secretFile = join(dir.path, 'secret');
  writeFileSync(secretFile, 'k');
  const empty = join(dir.path, 'empty');
  writeFileSync(empty, '\n');
  const bad: [Parameters<SiteAlerts['addChannel']>[1], RegExp][] = [
    [{ kind: 'webhook', url: 'not a url', secretFile }, /webhook URL not a url is not a URL/],
    [{ kind: 'webhook', url: 'ftp://x/', secretFile }, /is not http\(s\)/],
    [{ kind: 'webhook', url: 'https://u:p@x/', secretFile }, /no credentials in the URL/],
    [
      { kind: 'webhook', url: 'https://x/', secretFile: join(dir.path, 'nope') },
      /webhook secret file .*nope cannot be read .*ENOENT/,
    ],
    [{ kind: 'webhook', url: 'https://x/', secretFile: empty }, /is empty/],
    [{ kind: 'webhook', url: 'https://x/', secretFile: 'relative' }, /must be an absolute path/],
    [{ kind: 'email', smtp: 'mail.example.com', from: 'a@b', to: ['c@d'] }, /is not HOST:PORT/],
    [{ kind: 'email', smtp: 'm:25', from: 'nobody', to: ['c@d'] }, /nobody is not an e-mail address/],
    [{ kind: 'email', smtp: 'm:25', from: 'a@b', to: ['c@d'], user: 'u' }, /both --user and --password-file/],
  ];
  for (const [req, re] of bad) assert.throws(() => s.alerts.addChannel('tester', req), re);
  assert.deepEqual(s.alerts.channels(), []);
  assert.equal(s.events.query({ action: 'alert.notify.add' }).length, 0);
});
