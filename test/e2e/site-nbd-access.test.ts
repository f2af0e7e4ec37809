// Who may touch a site's volumes over NBD (issue 13, items 8 and 11): the TCP listener is TLS-only
// and every client authenticates — with the site's PSK (made at the first start) or a client
// certificate its CA signed. An unauthenticated client (another local user), a wrong key and a
// wrong certificate are refused; the unix socket and the keys are the site user's only; plain
// TCP is an explicit opt-in that warns; a client that stalls in the handshake is dropped while
// others are served. Real peers: nbdinfo, qemu-img, python3-libnbd, as uid 65534 where it counts.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chmodSync, copyFileSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { createConnection, type Socket } from 'node:net';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { freePort } from '../support/proc.js';
import { site } from '../support/site.js';
import { makeTestPki } from '../support/tls.js';

const NOBODY = ['--reuid=65534', '--regid=65534', '--clear-groups'];

/** Runs a libnbd script with /usr/bin/python3 (python3-libnbd), as `nobody` when asked. */
function libnbd(script: string, asNobody = false) {
  const py = ['/usr/bin/python3', '-c', `import nbd, sys\n${script}`];
  const [cmd, ...args] = asNobody ? ['setpriv', ...NOBODY, ...py] : py;
  return spawnSync(cmd!, args, { encoding: 'utf8', timeout: 30_000, cwd: '/' });
}

function nbdinfo(uri: string, asNobody = false) {
  const [cmd, ...args] = asNobody ? ['setpriv', ...NOBODY, 'nbdinfo', uri] : ['nbdinfo', uri];
  return spawnSync(cmd!, args, { encoding: 'utf8', timeout: 30_000, cwd: '/' });
}

/** Waits for the daemon to log a line (its logger writes asynchronously). */
async function logged(output: () => string, re: RegExp, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!re.test(output())) {
    if (Date.now() > deadline) assert.fail(`the daemon never logged ${re}:\n${output()}`);
    await sleep(50);
  }
}

/** A raw TCP client that reads the greeting, then (optionally) sends `bytes` and stalls. */
async function staller(port: number, bytes?: Buffer): Promise<{ socket: Socket; closed: Promise<number> }> {
  const socket = createConnection(port, '127.0.0.1');
  const opened = Date.now();
  const closed = new Promise<number>((resolve) => socket.on('close', () => resolve(Date.now() - opened)));
  socket.on('error', () => undefined);
  await new Promise<void>((resolve) => socket.once('data', () => resolve()));
  if (bytes) socket.write(bytes);
  return { socket, closed };
}

test('site NBD over TCP: TLS with the PSK only; nobody else gets in; stalled handshakes are dropped', async (t) => {
  const port = await freePort();
  const s = await site(t, ['--nbd-listen', `127.0.0.1:${port}`, '--nbd-handshake-timeout', '2']);
  await s.haven('volume', 'create', 'v1', '--size', '16M');
  const info = JSON.parse(await s.haven('site', 'show', '--json')) as {
    nbd: { tcp: string; socket: string; pskFile: string; pskIdentity: string; plain?: string };
  };
  assert.equal(info.nbd.tcp, `127.0.0.1:${port}`);
  assert.equal(info.nbd.plain, undefined, 'no plain listener unless asked for');
  assert.equal(info.nbd.pskFile, join(s.dir, 'nbd-tls', 'keys.psk'));
  assert.match(
    await s.haven('site', 'show'),
    /nbd tls:\s+127\.0\.0\.1:\d+: PSK identity haven in .*keys\.psk/,
  );

  // The keys, the data and the socket are the site user's alone.
  assert.equal(statSync(info.nbd.pskFile).mode & 0o777, 0o600);
  assert.match(readFileSync(info.nbd.pskFile, 'utf8'), /^haven:[0-9a-f]{64}\n$/);
  for (const d of [s.dir, join(s.dir, 'nbd-tls'), join(s.dir, 'run')])
    assert.equal(statSync(d).mode & 0o777, 0o700, d);
  assert.equal(statSync(info.nbd.socket).mode & 0o777, 0o600);

  // Another local user: refused on TCP (no TLS, then TLS without a key) and on the unix socket.
  const plainTry = libnbd(
    `h = nbd.NBD()\ntry:\n  h.connect_uri("nbd://127.0.0.1:${port}/v1")\n  h.pwrite(b"owned", 0)\n  print("WROTE")\nexcept nbd.Error as e:\n  print("REFUSED", e)`,
    true,
  );
  assert.match(plainTry.stdout, /REFUSED/, plainTry.stdout + plainTry.stderr);
  assert.doesNotMatch(plainTry.stdout, /WROTE/);
  assert.notEqual(nbdinfo(`nbd://127.0.0.1:${port}/v1`, true).status, 0);
  assert.notEqual(nbdinfo(`nbds://127.0.0.1:${port}/v1?tls-verify-peer=false`, true).status, 0);
  const viaSocket = nbdinfo(`nbd+unix:///v1?socket=${info.nbd.socket}`, true);
  assert.notEqual(viaSocket.status, 0);
  assert.match(viaSocket.stderr, /Permission denied/);

  // The PSK file works with libnbd (write), nbdinfo and qemu-img (read back what was written).
  const pskUri = `nbds://haven@127.0.0.1:${port}/v1?tls-psk-file=${info.nbd.pskFile}`;
  const wrote = libnbd(
    [
      'h = nbd.NBD()',
      'h.set_tls(nbd.TLS_REQUIRE)',
      `h.set_tls_psk_file("${info.nbd.pskFile}")`,
      'h.set_tls_username("haven")',
      'h.set_export_name("v1")',
      `h.connect_tcp("127.0.0.1", "${port}")`,
      'h.pwrite(b"by the key holder", 4096)',
      'h.flush()',
      'print("OK")',
    ].join('\n'),
  );
  assert.match(wrote.stdout, /OK/, wrote.stderr);
  const ni = nbdinfo(pskUri);
  assert.equal(ni.status, 0, ni.stderr);
  assert.match(ni.stdout, /with TLS/);
  const out = join(s.dir, '..', 'v1.raw');
  const qi = spawnSync(
    'qemu-img',
    [
      'convert',
      '-O',
      'raw',
      '--object',
      `tls-creds-psk,id=tls0,endpoint=client,dir=${join(s.dir, 'nbd-tls')},username=haven`,
      '--image-opts',
      `driver=nbd,host=127.0.0.1,port=${port},export=v1,tls-creds=tls0`,
      out,
    ],
    { encoding: 'utf8', timeout: 60_000 },
  );
  assert.equal(qi.status, 0, qi.stderr);
  assert.equal(
    readFileSync(out)
      .subarray(4096, 4096 + 17)
      .toString(),
    'by the key holder',
  );

  // A wrong key, and an identity the site does not know, are refused.
  const bad = join(s.dir, '..', 'bad');
  mkdirSync(bad);
  writeFileSync(join(bad, 'keys.psk'), `haven:${randomBytes(32).toString('hex')}\n`);
  writeFileSync(join(bad, 'other.psk'), `mallory:${randomBytes(32).toString('hex')}\n`);
  assert.notEqual(
    nbdinfo(`nbds://haven@127.0.0.1:${port}/v1?tls-psk-file=${join(bad, 'keys.psk')}`).status,
    0,
  );
  assert.notEqual(
    nbdinfo(`nbds://mallory@127.0.0.1:${port}/v1?tls-psk-file=${join(bad, 'other.psk')}`).status,
    0,
  );

  // Haven's own client with the PSK file.
  const own = await s.haven('nbd', 'info', `nbds://127.0.0.1:${port}/v1`, '--tls-psk-file', info.nbd.pskFile);
  assert.match(own, /v1/);

  // Slow clients: one that sends nothing after the greeting, one that stops inside STARTTLS
  // (option sent, TLS handshake never begun). Both are dropped at the bound; meanwhile others work.
  const starttls = Buffer.alloc(4 + 16);
  starttls.writeUInt32BE(3, 0); // fixed newstyle, no zeroes
  starttls.write('IHAVEOPT', 4, 'latin1');
  starttls.writeUInt32BE(5, 12); // NBD_OPT_STARTTLS
  const silent = await staller(port);
  const midTls = await staller(port, starttls);
  assert.equal(nbdinfo(pskUri).status, 0, 'another client is served while two stall');
  const [a, b] = await Promise.race([
    Promise.all([silent.closed, midTls.closed]),
    new Promise<never>((_, reject) =>
      setTimeout(() => reject(new Error('a stalled NBD client was not dropped within 8 s')), 8000).unref(),
    ),
  ]);
  assert.ok(a >= 1500 && b >= 1500, `dropped at the bound (2 s), not before: ${a} ms, ${b} ms`);
  await logged(s.daemon.output, /no handshake within 2000 ms/);
});

test('site NBD over TCP: client certificates signed by the CA; wrong ones refused; plain only as a warned opt-in', async (t) => {
  const [port, plainPort] = [await freePort(), await freePort()];
  const tmp = join((await import('node:os')).tmpdir(), `haven-pki-${process.pid}-${Date.now()}`);
  const [good, other, wrong, caOnly] = ['good', 'other', 'wrong', 'ca-only'].map((n) => join(tmp, n)) as [
    string,
    string,
    string,
    string,
  ];
  for (const d of [good, other, wrong, caOnly]) mkdirSync(d, { recursive: true });
  t.after(() => spawnSync('rm', ['-rf', tmp]));
  const pki = makeTestPki(good);
  const stranger = makeTestPki(other);
  // Trusts the site's CA but presents a certificate another CA signed; or presents none.
  copyFileSync(pki.caCert, join(wrong, 'ca-cert.pem'));
  copyFileSync(stranger.clientCert, join(wrong, 'client-cert.pem'));
  copyFileSync(stranger.clientKey, join(wrong, 'client-key.pem'));
  copyFileSync(pki.caCert, join(caOnly, 'ca-cert.pem'));

  const s = await site(t, [
    '--nbd-listen',
    `127.0.0.1:${port}`,
    '--nbd-tls-cert',
    pki.serverCert,
    '--nbd-tls-key',
    pki.serverKey,
    '--nbd-tls-ca',
    pki.caCert,
    '--nbd-listen-plain',
    `127.0.0.1:${plainPort}`,
  ]);
  await s.haven('volume', 'create', 'v1', '--size', '8M');

  const uri = (dir: string) => `nbds://localhost:${port}/v1?tls-certificates=${dir}`;
  const ok = nbdinfo(uri(good));
  assert.equal(ok.status, 0, ok.stderr);
  const qi = spawnSync(
    'qemu-img',
    [
      'info',
      '--object',
      `tls-creds-x509,id=tls0,endpoint=client,dir=${good}`,
      '--image-opts',
      `driver=nbd,host=localhost,port=${port},export=v1,tls-creds=tls0`,
    ],
    { encoding: 'utf8', timeout: 30_000 },
  );
  assert.equal(qi.status, 0, qi.stderr);
  assert.match(qi.stdout, /virtual size: 8 MiB/);
  const wrongCert = nbdinfo(uri(wrong));
  assert.notEqual(wrongCert.status, 0, 'a certificate of another CA is refused');
  assert.notEqual(nbdinfo(uri(caOnly)).status, 0, 'no client certificate is refused');
  // Beside the certificates, the PSK still works (the suites that carry it come first).
  const psk = join(s.dir, 'nbd-tls', 'keys.psk');
  const withPsk = nbdinfo(`nbds://haven@127.0.0.1:${port}/v1?tls-psk-file=${psk}`);
  assert.equal(withPsk.status, 0, withPsk.stderr);
  await logged(s.daemon.output, /not signed by the trusted CA/);

  // The plain opt-in: it serves anyone, and the daemon said so loudly at start.
  const plain = nbdinfo(`nbd://127.0.0.1:${plainPort}/v1`, true);
  assert.equal(plain.status, 0, plain.stderr);
  await logged(s.daemon.output, /plain TCP WITHOUT AUTHENTICATION/);
  const shown = await s.haven('site', 'show');
  assert.match(shown, /or a client certificate signed by .*ca-cert\.pem/);
  assert.match(shown, new RegExp(`nbd plain: 127\\.0\\.0\\.1:${plainPort} WITHOUT AUTHENTICATION`));
});

test('a data directory, run directory or key file open to others is made private at start', async (t) => {
  const { Site } = await import('../../src/orchestration/index.js');
  const tmp = join((await import('node:os')).tmpdir(), `haven-private-${process.pid}-${Date.now()}`);
  t.after(() => spawnSync('rm', ['-rf', tmp]));
  const data = join(tmp, 'data');
  mkdirSync(data, { recursive: true, mode: 0o755 });
  chmodSync(data, 0o755); // as `mkdir -p` leaves it under the usual umask
  const first = await Site.open({ dataDir: data, nbdListen: 'none' });
  await first.close();
  assert.equal(statSync(data).mode & 0o777, 0o700);
  chmodSync(data, 0o750);
  chmodSync(join(data, 'run'), 0o755);
  chmodSync(join(data, 'nbd-tls', 'keys.psk'), 0o644);
  const key = readFileSync(join(data, 'nbd-tls', 'keys.psk'), 'utf8');
  const again = await Site.open({ dataDir: data, nbdListen: 'none' });
  await again.close();
  assert.equal(statSync(data).mode & 0o777, 0o700);
  assert.equal(statSync(join(data, 'run')).mode & 0o777, 0o700);
  assert.equal(statSync(join(data, 'nbd-tls', 'keys.psk')).mode & 0o777, 0o600);
  assert.equal(readFileSync(join(data, 'nbd-tls', 'keys.psk'), 'utf8'), key, 'the key is kept across starts');
});
