// Client authentication of the NBD server's TLS, by hostile clients written against the raw
// protocol: the server must let a client into the option phase only when the handshake itself
// proved a key of the PSK file or a certificate of the CA — never because the client merely
// named a known PSK identity (OpenSSL may drop an offered PSK and fall back to certificates).
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { mkdirSync, readFileSync, truncateSync, writeFileSync } from 'node:fs';
import { connect as netConnect, type Socket } from 'node:net';
import { join } from 'node:path';
import { connect as tlsConnect, type ConnectionOptions } from 'node:tls';
import { logger } from '../../common/index.js';
import { openRawFile } from '../../block/index.js';
import { tempDir } from '../../../test/support/tmp.js';
import { makeTestPki } from '../../../test/support/tls.js';
import * as P from '../protocol.js';
import { PSK_CIPHERS } from '../psk.js';
import { NbdServer, type NbdTlsOptions } from './server.js';

const tmp = tempDir('haven-nbd-tls-auth-');
const readPem = (f: string) => readFileSync(f);
after(() => tmp.cleanup());

/** Reads exactly n bytes (or rejects when the socket closes first). */
function reader(s: Socket) {
  let buf = Buffer.alloc(0);
  let wake: (() => void) | undefined;
  let ended = false;
  s.on('data', (d: Buffer) => ((buf = Buffer.concat([buf, d])), wake?.()));
  s.on('close', () => ((ended = true), wake?.()));
  s.on('error', () => undefined);
  return async (n: number): Promise<Buffer> => {
    while (buf.length < n) {
      if (ended) throw new Error('closed by the server');
      await new Promise<void>((r) => (wake = r));
    }
    const out = buf.subarray(0, n);
    buf = buf.subarray(n);
    return out;
  };
}

function option(opt: number, data = Buffer.alloc(0)): Buffer {
  const h = Buffer.alloc(16);
  h.write('IHAVEOPT', 0, 'latin1');
  h.writeUInt32BE(opt, 8);
  h.writeUInt32BE(data.length, 12);
  return Buffer.concat([h, data]);
}

/**
 * Greeting, STARTTLS, a TLS handshake with `tls`, then NBD_OPT_LIST: resolves with the reply
 * type of the list (the server let the client in) or rejects (the server hung up).
 */
async function tryClient(port: number, tls: Omit<ConnectionOptions, 'socket'>): Promise<number> {
  const plain = netConnect(port, '127.0.0.1');
  await once(plain, 'connect');
  const readPlain = reader(plain);
  await readPlain(18);
  plain.write(Buffer.from([0, 0, 0, 3])); // fixed newstyle, no zeroes
  plain.write(option(P.OPT_STARTTLS));
  const ack = await readPlain(20);
  assert.equal(ack.readUInt32BE(12), P.REP_ACK);
  plain.removeAllListeners('data');
  const secure = tlsConnect({ socket: plain, rejectUnauthorized: false, ...tls });
  try {
    const read = reader(secure);
    await Promise.race([
      once(secure, 'secureConnect'),
      once(secure, 'error').then(([e]) => Promise.reject(e as Error)),
    ]);
    secure.write(option(P.OPT_LIST));
    const reply = await read(20);
    return reply.readUInt32BE(12);
  } finally {
    secure.destroy();
  }
}

async function server(tls: NbdTlsOptions) {
  const img = join(tmp.path, `${randomBytes(4).toString('hex')}.img`);
  writeFileSync(img, '');
  truncateSync(img, 1 << 20);
  const srv = new NbdServer({ tls, log: logger('nbd-tls-auth').child({}, { level: 'silent' }) });
  srv.addExport({ name: 'd', device: openRawFile(img) });
  const addr = await srv.listen({ host: '127.0.0.1', port: 0 });
  after(() => srv.close());
  return (addr as { port: number }).port;
}

const pki = makeTestPki(tmp.path);
const key = randomBytes(32);
const pskFile = join(tmp.path, 'keys.psk');
writeFileSync(pskFile, `haven:${key.toString('hex')}\n`, { mode: 0o600 });

test('PSK beside a certificate: the key proves the client; a named identity without it does not', async () => {
  const port = await server({ cert: pki.serverCert, key: pki.serverKey, ca: pki.caCert, psk: pskFile });
  const psk = (k: Buffer, ciphers?: string) => ({
    pskCallback: () => ({ psk: k, identity: 'haven' }),
    checkServerIdentity: () => undefined,
    ...(ciphers ? { ciphers } : {}),
  });
  assert.equal(await tryClient(port, psk(key)), P.REP_SERVER, 'the right key lets the client in');
  assert.equal(
    await tryClient(port, { ...psk(key, PSK_CIPHERS), maxVersion: 'TLSv1.2' }),
    P.REP_SERVER,
    'and over TLS 1.2 (a PSK suite)',
  );
  await assert.rejects(tryClient(port, { ...psk(randomBytes(32), PSK_CIPHERS), maxVersion: 'TLSv1.2' }));
  await assert.rejects(tryClient(port, psk(randomBytes(32))), 'a wrong key is refused');
  // Only a SHA-384 suite: OpenSSL skips the (SHA-256) PSK and falls back to certificates; the
  // client named "haven" but proved nothing, and presents no certificate.
  await assert.rejects(
    tryClient(port, psk(randomBytes(32), 'TLS_AES_256_GCM_SHA384')),
    'naming a known identity is not proving its key',
  );
  assert.equal(
    await tryClient(port, { cert: readPem(pki.clientCert), key: readPem(pki.clientKey) }),
    P.REP_SERVER,
    'a certificate the CA signed lets the client in',
  );
  await assert.rejects(tryClient(port, {}), 'no credential at all is refused');
});

test('a certificate-only server checks the CA itself', async () => {
  const port = await server({ cert: pki.serverCert, key: pki.serverKey, ca: pki.caCert });
  const otherDir = join(tmp.path, 'other');
  mkdirSync(otherDir);
  const other = makeTestPki(otherDir);
  await assert.rejects(
    tryClient(port, { cert: readPem(other.clientCert), key: readPem(other.clientKey) }),
    'a certificate of another CA is refused',
  );
  assert.equal(
    await tryClient(port, { cert: readPem(pki.clientCert), key: readPem(pki.clientKey) }),
    P.REP_SERVER,
  );
});
