import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { tempDir } from '../../../test/support/tmp.js';
import { HavenError, isPromise, logger } from '../../common/index.js';
import { NbdServer } from '../../nbd/index.js';
import { StorageExports, StorageService, sitePsk } from '../../storage/index.js';
import {
  TransferSlots,
  attachSnapshot,
  chooseTransport,
  offeredTransports,
  type SiteEndpoints,
} from './transports.js';

const MiB = 1024 * 1024;
const code = (c: string) => (e: unknown) => e instanceof HavenError && e.code === c;

test('auto picks san, hotadd, nbds, nbd in that order; a transport not offered is named, never replaced', () => {
  assert.equal(chooseTransport(undefined, ['nbd', 'hotadd', 'san']), 'san');
  assert.equal(chooseTransport('auto', ['nbd', 'nbds']), 'nbds');
  assert.equal(chooseTransport('nbd', ['nbd', 'nbds']), 'nbd');
  assert.throws(() => chooseTransport('hotadd', ['nbd']), /hotadd is not available.*available: nbd/);
  assert.throws(() => chooseTransport('ftp', ['nbd']), /unknown transport ftp/);
  assert.throws(() => chooseTransport(undefined, []), /offers no transport/);
});

test('a site offers the transports its listeners allow, and says which listener a wanted one lacks', () => {
  const tcp = { host: '127.0.0.1', port: 1 };
  assert.deepEqual(offeredTransports({}), ['san', 'hotadd']);
  assert.deepEqual(
    offeredTransports({ nbd: tcp, nbds: { ...tcp, psk: { identity: 'x', key: Buffer.alloc(32) } } }),
    ['san', 'hotadd', 'nbds', 'nbd'],
  );
  assert.deepEqual(offeredTransports({ nbd: tcp }, ['nbd', 'hotadd']), ['nbd', 'hotadd']);
  assert.throws(() => offeredTransports({}, ['nbds']), /no NBD TCP listener \(--nbd-listen is none\)/);
  assert.throws(() => offeredTransports({}, ['nbd']), /no plain NBD listener \(--nbd-listen-plain\)/);
  assert.throws(() => offeredTransports({}, ['usb']), /unknown transport usb/);
});

test('transfer slots: a job past the limit waits, in order; an aborted waiter leaves the queue', async () => {
  const slots = new TransferSlots(1);
  const first = await slots.acquire('h');
  const order: string[] = [];
  const waits: number[] = [];
  const second = slots.acquire('h', undefined, (n) => waits.push(n)).then((r) => (order.push('second'), r));
  const ac = new AbortController();
  const aborted = slots.acquire('h', ac.signal);
  const third = slots.acquire('h').then((r) => (order.push('third'), r));
  assert.equal((await slots.acquire('other'))(), undefined, 'another host has its own slots');
  ac.abort(new HavenError('CANCELLED', 'gone'));
  await assert.rejects(aborted, code('CANCELLED'));
  first();
  (await second)();
  (await third)();
  assert.deepEqual(order, ['second', 'third']);
  assert.deepEqual(waits, [1]);
  assert.equal(slots.used('h'), 0);
  assert.throws(() => new TransferSlots(0), /whole number from 1/);
});

test('hotadd, nbd and nbds attach a snapshot through the listeners the site passes, with its key', async (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  const storage = StorageService.open(dir.path);
  storage.createPool('default');
  storage.createVolume('v', 4 * MiB, 'default');
  const data = randomBytes(MiB);
  const dev = storage.openDevice('v');
  const w = dev.write(data, MiB);
  if (isPromise(w)) await w;
  storage.snapshot('v', 's');
  const psk = sitePsk(dir.path, logger('test'));
  const plain = new NbdServer({ log: logger('test-nbd') });
  const tls = new NbdServer({ log: logger('test-nbds'), tls: { psk: psk.file } });
  try {
    const exports = new StorageExports(storage, plain);
    exports.addServer(tls);
    const sock = await plain.listen({ path: join(dir.path, 'nbd.sock') });
    const tcp = await plain.listen({ host: '127.0.0.1', port: 0 });
    const tcps = await tls.listen({ host: '0.0.0.0', port: 0 }); // reached on the loopback address
    const port = (a: typeof tcp) => ('port' in a ? a.port : 0);
    const site: SiteEndpoints = {
      exports, // not refreshed yet: attaching exports the new snapshot first
      socket: 'path' in sock ? sock.path : '',
      nbd: { host: '127.0.0.1', port: port(tcp) },
      nbds: { host: '0.0.0.0', port: port(tcps), psk: { identity: psk.identity, key: psk.key } },
    };
    for (const transport of ['hotadd', 'nbd', 'nbds'] as const) {
      const snap = await attachSnapshot(transport, 'v@s', site);
      const back = Buffer.alloc(MiB);
      await snap.read(back, MiB);
      assert.ok(back.equals(data), `${transport} reads the snapshot`);
      assert.ok(snap.readOnly, `${transport}: a snapshot is read-only`);
      await snap.close();
    }
    await assert.rejects(
      attachSnapshot('nbd', 'v@s', { ...site, nbd: undefined }),
      /needs an NBD TCP listener/,
    );
    await assert.rejects(attachSnapshot('san', 'v@s', site), /does not attach over NBD/);
    // Without the site's key the TLS listener lets nobody in.
    await assert.rejects(
      attachSnapshot('nbds', 'v@s', {
        ...site,
        nbds: { ...site.nbds!, psk: { identity: 'haven', key: Buffer.alloc(32) } },
      }),
    );
  } finally {
    await plain.close();
    await tls.close();
    storage.close();
  }
});
