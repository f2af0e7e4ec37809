// The NBD interop matrix (test/support/nbd-interop.ts) on the storage service's exports and the
// site daemon's: every peer on a volume by name, plain and TLS (X.509 for `haven storage serve`,
// the site's PSK on its TCP listener), over TCP and the site's unix socket, and a snapshot
// read-only. These servers export many volumes and so have no default export: a client that
// names none is refused with a message saying to name one, never handed some volume.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { after, before, describe, it } from 'node:test';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { Site } from '../../src/orchestration/index.js';
import { importVolume, withStorage } from '../../src/storage/index.js';
import { HAVEN_BIN, freePort, start, waitForListen, type Running } from '../support/proc.js';
import { tempDir } from '../support/tmp.js';
import { makeTestPki } from '../support/tls.js';
import {
  defaultRefusedCases,
  interopCases,
  plainEndpoint,
  writeInteropSource,
  type NbdEndpoint,
} from '../support/nbd-interop.js';

const NO_DEFAULT = /no default export: name one in the URI, e\.g\. nbd:\/\/HOST:PORT\/NAME/;

describe('storage service and site exports: every peer by name; the default export refused', () => {
  const tmp = tempDir('haven-storage-interop-');
  const source = join(tmp.path, 'source.raw');
  const servers: Running[] = [];
  let site: Site | undefined;
  const eps = new Map<string, NbdEndpoint>();
  let pskPort = 0;

  /** A data directory holding volume "v" (the source, imported) with snapshot "s". */
  const dataDir = async (name: string) => {
    const dir = join(tmp.path, name);
    await withStorage(dir, async (s) => {
      s.createPool('default');
      await importVolume(s, { image: source, name: 'v', pool: 'default' });
      s.snapshot('v', 's');
      s.createVolume('other', 1024 * 1024, 'default'); // what a first-export default might hand out
    });
    return dir;
  };

  before(async () => {
    writeInteropSource(source);
    mkdirSync(join(tmp.path, 'pki'));
    const pki = makeTestPki(join(tmp.path, 'pki'));
    const [plain, tls, psk, siteTcp] = [
      await freePort(),
      await freePort(),
      await freePort(),
      await freePort(),
    ];
    const pskDir = await dataDir('psk');
    for (const [dir, port, extra] of [
      [await dataDir('plain'), plain, ['--plain']],
      [await dataDir('tls'), tls, ['--tls-cert', pki.serverCert, '--tls-key', pki.serverKey]],
      [pskDir, psk, []], // the default: TLS with the site's key
    ] as const) {
      const s = start(process.execPath, [
        HAVEN_BIN,
        ...['storage', 'serve', '--data', dir, '--listen', `127.0.0.1:${port}`, ...extra],
      ]);
      servers.push(s);
      await waitForListen({ port }, 15000, s);
    }
    const siteDir = await dataDir('site');
    site = await Site.open({ dataDir: siteDir, nbdListen: `127.0.0.1:${siteTcp}` });

    for (const [what, name] of [
      ['named', 'v'],
      ['default', ''],
    ] as const) {
      eps.set(`storage serve, plain, ${what} export`, plainEndpoint(`nbd://127.0.0.1:${plain}/${name}`));
      eps.set(`storage serve, TLS, ${what} export`, {
        uri: `nbds://127.0.0.1:${tls}/${name}?tls-certificates=${pki.dir}`,
        qemu: {
          args: ['--object', `tls-creds-x509,id=tls0,dir=${pki.dir},endpoint=client`, '--image-opts'],
          image: `driver=nbd,host=127.0.0.1,port=${tls},${name ? `export=${name},` : ''}tls-creds=tls0`,
        },
        haven: [`nbds://127.0.0.1:${tls}/${name}`, '--tls-ca', pki.caCert],
      });
      const pskKeys = join(pskDir, 'nbd-tls', 'keys.psk');
      eps.set(`storage serve, TLS-PSK by default, ${what} export`, {
        uri: `nbds://haven@127.0.0.1:${psk}/${name}?tls-psk-file=${pskKeys}`,
        qemu: {
          args: [
            '--object',
            `tls-creds-psk,id=tls0,endpoint=client,dir=${join(pskDir, 'nbd-tls')},username=haven`,
            '--image-opts',
          ],
          image: `driver=nbd,host=127.0.0.1,port=${psk},${name ? `export=${name},` : ''}tls-creds=tls0`,
        },
        haven: [`nbds://127.0.0.1:${psk}/${name}`, '--tls-psk-file', pskKeys],
      });
      const keys = join(siteDir, 'nbd-tls', 'keys.psk');
      eps.set(`site, TLS-PSK, ${what} export`, {
        uri: `nbds://haven@127.0.0.1:${siteTcp}/${name}?tls-psk-file=${keys}`,
        qemu: {
          args: [
            '--object',
            `tls-creds-psk,id=tls0,endpoint=client,dir=${join(siteDir, 'nbd-tls')},username=haven`,
            '--image-opts',
          ],
          image: `driver=nbd,host=127.0.0.1,port=${siteTcp},${name ? `export=${name},` : ''}tls-creds=tls0`,
        },
        haven: [`nbds://127.0.0.1:${siteTcp}/${name}`, '--tls-psk-file', keys],
      });
      eps.set(
        `site, unix socket, ${what} export`,
        plainEndpoint(`nbd+unix:///${name}?socket=${join(siteDir, 'run', 'nbd.sock')}`),
      );
    }
    eps.set('storage serve, plain, snapshot', plainEndpoint(`nbd://127.0.0.1:${plain}/v%40s`));
    pskPort = psk;
  });
  after(async () => {
    await Promise.all(servers.map((s) => s.stop()));
    await site?.close();
    tmp.cleanup();
  });

  const ep = (way: string) => () => eps.get(way)!;
  for (const server of [
    'storage serve, plain',
    'storage serve, TLS',
    'storage serve, TLS-PSK by default',
    'site, TLS-PSK',
    'site, unix socket',
  ]) {
    const named = `${server}, named export`;
    describe(named, () => interopCases(named, ep(named), { scratch: tmp.path, source }));
    const dflt = `${server}, default export`;
    describe(dflt, () => defaultRefusedCases(dflt, ep(dflt), NO_DEFAULT, 'v'));
  }
  it('storage serve on TCP refuses a client without the key (TLS is the default)', () => {
    const r = spawnSync('nbdinfo', [`nbd://127.0.0.1:${pskPort}/v`], { encoding: 'utf8', timeout: 30_000 });
    assert.notEqual(r.status, 0, 'an unauthenticated client was let in');
    const withTls = spawnSync('nbdinfo', [`nbds://127.0.0.1:${pskPort}/v`], {
      encoding: 'utf8',
      timeout: 30_000,
    });
    assert.notEqual(withTls.status, 0, 'a TLS client without the key was let in');
  });
  const snap = 'storage serve, plain, snapshot';
  describe(snap, () => interopCases(snap, ep(snap), { scratch: tmp.path, source, readOnly: true }));
});
