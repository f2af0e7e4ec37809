import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { readFileSync, writeFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { connect, createServer, type Server, type TLSSocket } from 'node:tls';

export interface TestPki {
  dir: string;
  /** File names as qemu's tls-creds-x509 `dir=` expects them: ca-cert.pem, server-cert.pem, … */
  caCert: string;
  serverCert: string;
  serverKey: string;
  clientCert: string;
  clientKey: string;
}

/** Makes a throw-away CA with a server certificate for localhost/127.0.0.1 and a client certificate. */
export function makeTestPki(dir: string): TestPki {
  const f = (n: string) => join(dir, n);
  const ossl = (...args: string[]) => execFileSync('openssl', args, { stdio: 'pipe' });
  ossl(
    'req',
    '-x509',
    '-newkey',
    'rsa:2048',
    '-nodes',
    '-days',
    '2',
    '-subj',
    '/CN=Haven Test CA',
    '-keyout',
    f('ca-key.pem'),
    '-out',
    f('ca-cert.pem'),
  );
  writeFileSync(f('server.ext'), 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n');
  writeFileSync(f('client.ext'), 'extendedKeyUsage=clientAuth\n');
  for (const who of ['server', 'client']) {
    ossl(
      'req',
      '-newkey',
      'rsa:2048',
      '-nodes',
      '-subj',
      `/CN=${who === 'server' ? 'localhost' : 'haven-client'}`,
      '-keyout',
      f(`${who}-key.pem`),
      '-out',
      f(`${who}.csr`),
    );
    ossl(
      'x509',
      '-req',
      '-in',
      f(`${who}.csr`),
      '-CA',
      f('ca-cert.pem'),
      '-CAkey',
      f('ca-key.pem'),
      '-CAcreateserial',
      '-days',
      '2',
      '-extfile',
      f(`${who}.ext`),
      '-out',
      f(`${who}-cert.pem`),
    );
  }
  return {
    dir,
    caCert: f('ca-cert.pem'),
    serverCert: f('server-cert.pem'),
    serverKey: f('server-key.pem'),
    clientCert: f('client-cert.pem'),
    clientKey: f('client-key.pem'),
  };
}

/** A mutual-TLS listener on 127.0.0.1 with the PKI's server certificate; clients must show one its CA signed. */
export async function listenMutualTls(
  pki: TestPki,
  onSocket: (socket: TLSSocket) => void,
): Promise<{ server: Server; port: number; close(): Promise<void> }> {
  const server = createServer(
    {
      key: readFileSync(pki.serverKey),
      cert: readFileSync(pki.serverCert),
      ca: readFileSync(pki.caCert),
      requestCert: true,
      rejectUnauthorized: true,
    },
    onSocket,
  );
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    server,
    port: (server.address() as AddressInfo).port,
    close: () => new Promise((r) => server.close(() => r())),
  };
}

/** Dials a mutual-TLS listener on 127.0.0.1 with the PKI's client certificate (or another). */
export async function dialMutualTls(
  port: number,
  pki: TestPki,
  cert: { key: string; cert: string } = { key: pki.clientKey, cert: pki.clientCert },
): Promise<TLSSocket> {
  return new Promise((resolve, reject) => {
    const s = connect({
      host: '127.0.0.1',
      port,
      servername: 'localhost',
      key: readFileSync(cert.key),
      cert: readFileSync(cert.cert),
      ca: readFileSync(pki.caCert),
    });
    s.once('secureConnect', () => resolve(s));
    s.once('error', reject);
  });
}
