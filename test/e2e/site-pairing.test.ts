// Pairing two site daemons (`haven site pair`, both directions from one command) with the API
// token and with a one-time token, the mutual-TLS peer link between them (ping over RPC both
// ways), and everything that must be refused: an unpaired site, a certificate with the right
// name but another key (at the listener and at the dialer), a spent or expired token, bad
// input. Three real daemons on free ports; certificates made with openssl.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync, statSync, writeFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { connect, createServer } from 'node:tls';
import { site, startDaemon, type Site } from '../support/site.js';
import { tempDir } from '../support/tmp.js';
import { until } from '../support/proc.js';
import { Frame, jsonFrame } from '../../src/protection/replication/frames.js';
import { jsonBody, readOneFrame } from '../../src/orchestration/site/peer-frames.js';

interface PeerRow {
  name: string;
  fingerprint: string;
  link?: string;
  api?: string;
}
interface EventRow {
  action: string;
  outcome: string;
  message: string;
}

const named = (name: string) => ['--site', name];
const peersOf = async (s: Site) => JSON.parse(await s.haven('site', 'peers', '--json')) as PeerRow[];
const eventsOf = async (s: Site, action: string) =>
  JSON.parse(await s.haven('event', 'list', '--action', action, '--json')) as EventRow[];

/** A site's key and certificate files (DATA/identity/). */
const identityOf = (s: Site) => ({
  key: readFileSync(join(s.dir, 'identity', 'key.pem'), 'utf8'),
  cert: readFileSync(join(s.dir, 'identity', 'cert.pem'), 'utf8'),
});

/** A self-signed P-256 certificate for CN=haven-site-NAME with a fresh key: the right name, the wrong key. */
function impostor(dir: string, name: string): { key: string; cert: string } {
  const key = join(dir, `${name}-key.pem`);
  const cert = join(dir, `${name}-cert.pem`);
  execFileSync(
    'openssl',
    [
      'req',
      '-x509',
      '-newkey',
      'ec',
      '-pkeyopt',
      'ec_paramgen_curve:prime256v1',
      '-nodes',
      '-days',
      '2',
      '-subj',
      `/CN=haven-site-${name}`,
      '-keyout',
      key,
      '-out',
      cert,
    ],
    { stdio: 'pipe' },
  );
  return { key: readFileSync(key, 'utf8'), cert: readFileSync(cert, 'utf8') };
}

/**
 * Dials a peer link as `creds` and sends an open frame: 'accepted', 'error: MESSAGE' (an error
 * frame) or 'refused: WHY' (the link closed or failed before an answer).
 */
async function dialRaw(link: string, creds: { key: string; cert: string }, open: object): Promise<string> {
  const [host, port] = [link.slice(0, link.lastIndexOf(':')), Number(link.slice(link.lastIndexOf(':') + 1))];
  const socket = connect({
    host,
    port,
    ...creds,
    rejectUnauthorized: false,
    checkServerIdentity: () => undefined,
  });
  try {
    await new Promise<void>((resolve, reject) => {
      socket.once('secureConnect', resolve);
      socket.once('error', reject);
    });
    await jsonFrame(socket, Frame.open, open);
    const f = await readOneFrame(socket, link, { maxBytes: 65536, timeoutMs: 10_000 });
    if (f.type === Frame.error) return `error: ${String(JSON.parse(f.body.toString()).message)}`;
    jsonBody(f, Frame.open, link);
    return 'accepted';
  } catch (err) {
    return `refused: ${(err as Error).message}`;
  } finally {
    socket.destroy();
  }
}

async function pairWithToken(a: Site, b: Site, token: string): Promise<PeerRow> {
  const file = join(a.dir, '..', 'peer-token');
  writeFileSync(file, token + '\n', { mode: 0o600 });
  return JSON.parse(
    await a.haven('site', 'pair', '--peer-api', (await b.info()).url, '--peer-token-file', file, '--json'),
  ) as PeerRow;
}

test('pairing with the API token: both sites know each other, ping works both ways, the identity is private', async (t) => {
  const [a, b] = await Promise.all([site(t, named('east')), site(t, named('west'))]);
  const [ia, ib] = await Promise.all([a.info(), b.info()]);
  assert.match(ia.fingerprint, /^([0-9A-F]{2}:){31}[0-9A-F]{2}$/);
  assert.ok(ia.link, 'the daemon reports its peer link address');
  assert.equal(statSync(join(a.dir, 'identity', 'key.pem')).mode & 0o777, 0o600);
  assert.equal(statSync(join(a.dir, 'identity')).mode & 0o777, 0o700);
  const subject = execFileSync('openssl', [
    'x509',
    '-noout',
    '-subject',
    '-in',
    join(a.dir, 'identity', 'cert.pem'),
  ]);
  assert.match(subject.toString(), /CN ?= ?haven-site-east/);

  const p = await pairWithToken(a, b, ib.token);
  assert.equal(p.name, 'west');
  assert.equal(p.fingerprint, ib.fingerprint);
  assert.equal(p.link, ib.link);
  // Both directions from one command.
  assert.deepEqual(
    (await peersOf(b)).map((x) => [x.name, x.fingerprint, x.link, x.api]),
    [['east', ia.fingerprint, ia.link, ia.url]],
  );
  assert.match(await a.haven('site', 'ping', 'west'), /^site west answered in [\d.]+ ms/);
  assert.match(await b.haven('site', 'ping', 'east'), /^site east answered in [\d.]+ ms/);
  assert.match(await a.haven('site', 'show'), new RegExp(`identity: certificate ${ia.fingerprint}`));
  assert.equal((await eventsOf(a, 'peer.pair'))[0]?.outcome, 'ok');
  assert.equal((await eventsOf(b, 'peer.pair'))[0]?.outcome, 'ok');

  // Pairing again with the same certificates only refreshes the addresses.
  await pairWithToken(a, b, ib.token);
  assert.equal((await peersOf(a)).length, 1);

  // A channel nobody serves is refused with an error frame, even for a paired site.
  assert.match(
    await dialRaw(ib.link!, identityOf(a), { channel: 'no-such-channel' }),
    /^error: .*no peer link channel no-such-channel/,
  );
  assert.equal(await dialRaw(ib.link!, identityOf(a), { channel: 'rpc' }), 'accepted');

  // Unpairing is local: the link is refused from then on, the other side still lists it.
  await a.haven('site', 'unpair', 'west');
  assert.deepEqual(await peersOf(a), []);
  assert.match(await a.havenFails('site', 'ping', 'west'), /site west is not paired with this site/);
  assert.match(await b.havenFails('site', 'ping', 'east'), /east at .* refused the link/);
  assert.equal((await peersOf(b)).length, 1);
  assert.equal((await eventsOf(a, 'peer.unpair'))[0]?.outcome, 'ok');
});

test('a one-time pairing token pairs once; a spent or expired one is refused and nothing is stored', async (t) => {
  const [a, b, c] = await Promise.all([
    site(t, named('one')),
    site(t, named('two')),
    site(t, named('three')),
  ]);
  const token = JSON.parse(await b.haven('site', 'pair-token', '--json')) as {
    token: string;
    expiresAt: string;
  };
  assert.ok(Date.parse(token.expiresAt) - Date.now() > 14 * 60_000, 'valid for 15 minutes');
  // The token opens the accept route only: not the rest of the API.
  const res = await fetch(`${(await b.info()).url}/api/v1/site`, {
    headers: { authorization: `Bearer ${token.token}` },
  });
  assert.equal(res.status, 401);

  await pairWithToken(a, b, token.token);
  assert.deepEqual(
    (await peersOf(b)).map((p) => p.name),
    ['one'],
  );
  assert.match(await b.haven('site', 'ping', 'one'), /site one answered/);

  const again = await c.havenFails(
    'site',
    'pair',
    '--peer-api',
    (await b.info()).url,
    '--peer-token',
    token.token,
  );
  assert.match(again, /refused the peer token: the pairing token of site two was used already/);
  assert.deepEqual(await peersOf(c), []);
  assert.deepEqual(
    (await peersOf(b)).map((p) => p.name),
    ['one'],
  );

  const short = JSON.parse(await b.haven('site', 'pair-token', '--ttl', '0.02', '--json')) as {
    token: string;
    expiresAt: string;
  };
  await until('the pairing token expired', () => Date.now() > Date.parse(short.expiresAt) + 50, 10_000);
  const expired = await c.havenFails(
    'site',
    'pair',
    '--peer-api',
    (await b.info()).url,
    '--peer-token',
    short.token,
  );
  assert.match(expired, /the pairing token of site two has expired/);
  assert.deepEqual(await peersOf(c), []);
  assert.deepEqual(
    (await peersOf(b)).map((p) => p.name),
    ['one'],
  );
});

test('an unpaired site and a certificate with the right name but another key are refused at the link', async (t) => {
  const tmp = tempDir('haven-impostor-');
  t.after(tmp.cleanup);
  const [a, b, c] = await Promise.all([
    site(t, named('alpha')),
    site(t, named('beta')),
    site(t, named('gamma')),
  ]);
  const ib = await b.info();
  await pairWithToken(a, b, ib.token);

  assert.equal(await dialRaw(ib.link!, identityOf(a), { channel: 'rpc' }), 'accepted');
  // gamma is a real site, paired with nobody.
  assert.match(await dialRaw(ib.link!, identityOf(c), { channel: 'rpc' }), /^refused/);
  // A certificate made out to alpha, with another key.
  assert.match(await dialRaw(ib.link!, impostor(tmp.path, 'alpha'), { channel: 'rpc' }), /^refused/);
  await until(
    'beta logged the refusals',
    () => b.daemon.output().split('refused a peer link').length > 2,
    10_000,
  );
  const refused = await eventsOf(b, 'peer.link.refused');
  assert.ok(refused.length >= 2, `refused links are events: ${JSON.stringify(refused)}`);
  assert.ok(refused.every((e) => e.outcome === 'warning'));
  // The paired site still gets through.
  assert.match(await a.haven('site', 'ping', 'beta'), /site beta answered/);

  // The dialer's side: something else listening at beta's link address with beta's name but
  // another key is refused, naming both fingerprints.
  await b.daemon.stop();
  const fake = impostor(tmp.path, 'beta');
  const server = createServer({ ...fake, requestCert: true, rejectUnauthorized: false }, (s) => s.destroy());
  const port = Number(ib.link!.slice(ib.link!.lastIndexOf(':') + 1));
  await new Promise<void>((r) => server.listen(port, '127.0.0.1', r));
  t.after(() => new Promise<void>((r) => server.close(() => r())));
  assert.equal((server.address() as AddressInfo).port, port);
  const wrong = await a.havenFails('site', 'ping', 'beta');
  assert.match(
    wrong,
    /site beta at .* presented the certificate ([0-9A-F:]{95}), not the one paired \(([0-9A-F:]{95})\)/,
  );
  assert.ok(wrong.includes(ib.fingerprint), wrong);
});

test('bad input: a bad URL, a wrong token, the site itself, a rebuilt site under its old name: clear errors, nothing stored', async (t) => {
  const [a, b] = await Promise.all([site(t, named('north')), site(t, named('south'))]);
  const [ia, ib] = await Promise.all([a.info(), b.info()]);
  const pair = (api: string, token: string) =>
    a.havenFails('site', 'pair', '--peer-api', api, '--peer-token', token);

  assert.match(await pair('not a url', ib.token), /the peer API "not a url" is not a URL/);
  assert.match(await pair('ftp://127.0.0.1/', ib.token), /not an http\(s\) URL/);
  assert.match(
    await pair(ib.url, 'wrong-token'),
    /refused the peer token: the token is neither the API token nor a pairing token of site south/,
  );
  assert.match(await pair(ia.url, ia.token), /site north itself: a site cannot pair with itself/);
  assert.match(await a.havenFails('site', 'pair', '--peer-api', ib.url), /--peer-token or --peer-token-file/);
  // A fingerprint told out of band that the answer does not match: refused before anything is stored.
  const wrongFp = ia.fingerprint; // north's own, certainly not south's
  const expected = await a.havenFails(
    'site',
    'pair',
    '--peer-api',
    ib.url,
    '--peer-token',
    ib.token,
    '--peer-fingerprint',
    wrongFp,
  );
  assert.match(
    expected,
    new RegExp(`presents the certificate ${ib.fingerprint}, not ${wrongFp} as expected`),
  );
  assert.match(
    await a.havenFails(
      'site',
      'pair',
      '--peer-api',
      ib.url,
      '--peer-token',
      ib.token,
      '--peer-fingerprint',
      'AB:CD',
    ),
    /body\.fingerprint must match pattern/,
  );
  assert.match(
    await a.havenFails(
      'site',
      'pair',
      '--peer-api',
      ib.url,
      '--peer-token-file',
      join(a.dir, 'no-such-file'),
    ),
    /cannot read the peer token file/,
  );
  // An API that is not there.
  await b.daemon.stop();
  assert.match(await pair(ib.url, ib.token), /cannot reach the peer API/);
  assert.deepEqual(await peersOf(a), []);
  b.daemon = await startDaemon(b.dir, ['--peer-listen', ib.link!]);
  const ib2 = await b.info();
  assert.deepEqual(await peersOf(b), []);
  assert.ok((await eventsOf(a, 'peer.pair')).every((e) => e.outcome === 'failed'));

  // The right fingerprint, in lower case too.
  await a.haven(
    'site',
    'pair',
    '--peer-api',
    ib2.url,
    '--peer-token',
    ib2.token,
    '--peer-fingerprint',
    ib2.fingerprint.toLowerCase(),
  );
  await a.haven('site', 'unpair', 'south');
  await b.haven('site', 'unpair', 'north');

  // Paired, then "south" is rebuilt (a new data directory, a new certificate): both ends refuse.
  await pairWithToken(a, b, ib2.token);
  const rebuilt = await site(t, named('south'));
  const ir = await rebuilt.info();
  assert.notEqual(ir.fingerprint, ib.fingerprint);
  // The rebuilt site asks north: north refuses (it knows south under another certificate).
  const asks = await rebuilt.havenFails('site', 'pair', '--peer-api', ia.url, '--peer-token', ia.token);
  assert.match(
    asks,
    new RegExp(
      `site south is paired with site north under the certificate ${ib.fingerprint}, but .* presents ${ir.fingerprint}`,
    ),
  );
  assert.match(asks, /haven site unpair south/);
  // north asks the rebuilt site: north refuses its answer, and the check came before anything was stored there.
  assert.match(await pair(ir.url, ir.token), /paired with site north under the certificate/);
  assert.deepEqual(await peersOf(rebuilt), []);
  assert.deepEqual(
    (await peersOf(a)).map((p) => p.fingerprint),
    [ib.fingerprint],
  );
  // After unpairing the old one, the rebuilt one pairs.
  await a.haven('site', 'unpair', 'south');
  await pairWithToken(a, rebuilt, ir.token);
  assert.match(await a.haven('site', 'ping', 'south'), /site south answered/);
  assert.match(await rebuilt.haven('site', 'ping', 'north'), /site north answered/);
});

test('a pairing survives restarts of both daemons: the peers are in the database and the listener trusts them again', async (t) => {
  const [a, b] = await Promise.all([site(t, named('left')), site(t, named('right'))]);
  const [ia, ib] = await Promise.all([a.info(), b.info()]);
  await pairWithToken(a, b, ib.token);
  await Promise.all([a.daemon.stop(), b.daemon.stop()]);
  // Same link addresses as before (where the peers dial them); new API ports.
  [a.daemon, b.daemon] = await Promise.all([
    startDaemon(a.dir, ['--site', 'left', '--peer-listen', ia.link!]),
    startDaemon(b.dir, ['--site', 'right', '--peer-listen', ib.link!]),
  ]);
  assert.equal((await a.info()).fingerprint, ia.fingerprint, 'the identity is kept');
  assert.deepEqual(
    (await peersOf(a)).map((p) => p.name),
    ['right'],
  );
  assert.match(await a.haven('site', 'ping', 'right'), /site right answered/);
  assert.match(await b.haven('site', 'ping', 'left'), /site left answered/);
  // And an unpaired certificate is still refused after the restart.
  const other = await site(t, named('stranger'));
  assert.match(await dialRaw(ib.link!, identityOf(other), { channel: 'rpc' }), /^refused/);
});
