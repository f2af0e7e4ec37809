// The two gateways of one group on two StorageServices, over mutual TLS through a proxy that cuts
// the link: the initial sync sends about the data written (not the volume size); checkpoints
// reach the target; a cut long enough to fill the journal turns the source to bitmap mode
// without failing a guest write, while the target keeps its last consistent image; after the
// link heals the resync brings the replica level; a clean restart in bitmap mode resyncs from the
// saved bitmaps.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { EXTENT_ZERO } from '../../block/index.js';
import { StorageService } from '../../storage/index.js';
import { FaultProxy } from '../../../test/support/fault-proxy.js';
import { MiB, SourceGroup, sha, snapshotHashes } from '../../../test/support/replication.js';
import { dialMutualTls, listenMutualTls, makeTestPki, type TestPki } from '../../../test/support/tls.js';
import { until } from '../../../test/support/proc.js';
import { tempDir } from '../../../test/support/tmp.js';
import { SourceGateway, type SourceGatewayOptions } from './source-gateway.js';
import { TargetGateway } from './target-gateway.js';

const SIZE = 16 * MiB;

async function volumeHashes(storage: StorageService, names: string[]): Promise<string[]> {
  const out: string[] = [];
  for (const v of names) {
    const b = Buffer.alloc(SIZE);
    await storage.openDevice(v, { readOnly: true }).read(b, 0);
    out.push(sha(b));
  }
  return out;
}

async function twoSites(dir: string, pki: TestPki, opts: { targetJournalBytes?: number } = {}) {
  // The source's volumes and its writer (the SourceGroup's own recorder stays off: the gateway records).
  const src = new SourceGroup(dir, ['a', 'b'], SIZE, { recording: false });
  const storage = StorageService.open(join(dir, 'target'));
  storage.createPool('p', {});
  for (const v of ['ra', 'rb']) storage.createVolume(v, SIZE, 'p');
  const errors: Error[] = [];
  const target = new TargetGateway({
    group: 'g',
    dir: join(dir, 'target-gw'),
    storage,
    volumes: ['ra', 'rb'],
    ...(opts.targetJournalBytes ? { journalBytes: opts.targetJournalBytes } : {}),
    onError: (e) => errors.push(e),
  });
  const listener = await listenMutualTls(pki, (socket) => void target.accept(socket));
  const proxy = await FaultProxy.start({ port: listener.port });
  const dial: SourceGatewayOptions['connect'] = () => dialMutualTls(proxy.port, pki);
  const gateway = (opts: Partial<SourceGatewayOptions> = {}) =>
    new SourceGateway({
      group: 'g',
      dir: join(dir, 'source-gw'),
      taps: src.taps,
      connect: dial,
      retryMs: 50,
      journalBytes: 2 * MiB,
      ...opts,
    });
  return {
    src,
    storage,
    target,
    proxy,
    errors,
    gateway,
    async close() {
      await proxy.close();
      await listener.close();
      await target.close();
      storage.close();
      await src.close();
    },
  };
}

test('initial sync, checkpoints, a cut that fills the journal (bitmap mode), the resync after it; a clean restart resyncs from saved bitmaps', async (t) => {
  const dir = tempDir();
  const pki = makeTestPki(dir.path);
  const s = await twoSites(dir.path, pki);
  let gw = s.gateway();
  const modes: string[] = [];
  t.after(async () => {
    await gw.stop();
    await s.close();
    dir.cleanup();
  });
  // Data before replication: ~3.6 MiB of 32 MiB, not compressible.
  await s.src.write(300);
  gw = s.gateway({ onChange: (st) => modes.push(st.mode) });
  gw.start();
  await until('the initial sync at the target', () => s.target.newest?.name === 'initial-sync');
  assert.deepEqual(
    await snapshotHashes(s.storage, ['ra', 'rb'], s.target.newest!.snapshot, SIZE),
    await volumeHashes(s.src.storage, ['a', 'b']),
  );
  let dataBytes = 0;
  for (const tap of s.src.taps)
    for (const e of await tap.blockStatus(0, SIZE)) if (!(e.flags & EXTENT_ZERO)) dataBytes += e.length;
  t.diagnostic(`initial sync: ${s.proxy.upBytes} bytes on the wire for ${dataBytes} bytes of data`);
  assert.ok(
    s.proxy.upBytes <= dataBytes * 1.1,
    `the initial sync sent ${s.proxy.upBytes} bytes for ${dataBytes} of data`,
  );

  // Replicating: a checkpoint after more writes reaches the target, equal to the source. (First
  // the end of the initial sync drains from the 2 MiB journal: 50 writes on top could fill it.)
  await until('the journal drained', () => gw.status().acknowledged >= gw.journal.nextSeq - 1);
  await s.src.write(50);
  const c1 = gw.checkpoint('c1');
  assert.ok(c1 !== undefined);
  await until('c1 at the target', () => s.target.newest?.name === 'c1');
  const atC1 = await volumeHashes(s.src.storage, ['a', 'b']);
  assert.deepEqual(await snapshotHashes(s.storage, ['ra', 'rb'], s.target.newest!.snapshot, SIZE), atC1);
  assert.ok(gw.status().rpoMs! >= 0);

  // The link cut: writes go on and fill the 2 MiB journal: bitmap mode, no write fails.
  s.proxy.cut();
  await s.src.write(400);
  await until('bitmap mode', () => gw.status().mode === 'bitmap');
  assert.equal(gw.checkpoint('during-the-cut'), undefined, 'no consistent point in bitmap mode');
  // The target's consistent image is still c1, readable.
  assert.equal(s.target.newest?.name, 'c1');
  assert.deepEqual(await snapshotHashes(s.storage, ['ra', 'rb'], s.target.newest!.snapshot, SIZE), atC1);

  // Healed: the journal drains, the resync runs, a checkpoint follows it.
  s.proxy.heal();
  await until('the resync at the target', () => s.target.newest?.name === 'resync');
  assert.deepEqual(
    await snapshotHashes(s.storage, ['ra', 'rb'], s.target.newest!.snapshot, SIZE),
    await volumeHashes(s.src.storage, ['a', 'b']),
  );
  // Replicating once the source heard that the target applied the resync's checkpoint.
  await until('replicating after the resync', () => gw.status().mode === 'replicating');
  for (const m of ['initial-sync', 'replicating', 'bitmap', 'resyncing'])
    assert.ok(modes.includes(m), `went through ${m}`);

  // Bitmap mode again, then a clean stop and a start: the saved bitmaps drive the resync.
  s.proxy.cut();
  await s.src.write(400);
  await until('bitmap mode again', () => gw.status().mode === 'bitmap');
  await gw.stop();
  const resynced = s.target.newest!.seq;
  gw = s.gateway();
  s.proxy.heal();
  gw.start();
  const cp = gw.checkpoint('after-restart');
  assert.equal(cp, undefined, 'no checkpoint before the resync');
  await until(
    'the resync after the restart',
    () => s.target.newest?.name === 'resync' && s.target.newest.seq > resynced,
  );
  assert.deepEqual(
    await snapshotHashes(s.storage, ['ra', 'rb'], s.target.newest!.snapshot, SIZE),
    await volumeHashes(s.src.storage, ['a', 'b']),
  );
  assert.deepEqual(s.errors, []);
});

test('synchronous mode: a write is acknowledged once the target holds it; with the link cut writes go on, degraded, then synchronous again', async (t) => {
  const dir = tempDir();
  const pki = makeTestPki(dir.path);
  const s = await twoSites(dir.path, pki);
  const gw = s.gateway({ sync: true, syncTimeoutMs: 2000 });
  t.after(async () => {
    await gw.stop();
    await s.close();
    dir.cleanup();
  });
  gw.start();
  await until('the initial sync', () => s.target.newest?.name === 'initial-sync');
  await until('synchronous', () => gw.status().sync?.degraded === false && gw.status().link === 'up');
  // Each write, once acknowledged, is in the target's journal already.
  for (let i = 0; i < 40; i++) {
    await s.src.write(1);
    assert.ok(
      s.target.journal.nextSeq >= gw.journal.nextSeq,
      `write ${i}: the target holds up to ${s.target.journal.nextSeq - 1}, the source journaled ${gw.journal.nextSeq - 1}`,
    );
  }
  // The link cut: writes still complete (within the timeout), and the mode says so.
  s.proxy.cut();
  const started = performance.now();
  await s.src.write(20);
  assert.ok(performance.now() - started < 5000, 'writes went on without the link');
  assert.equal(gw.status().sync?.degraded, true);
  s.proxy.heal();
  await until('synchronous again', () => gw.status().sync?.degraded === false);
  await s.src.write(5);
  assert.ok(s.target.journal.nextSeq >= gw.journal.nextSeq, 'synchronous again after catching up');
});

test('a target journal smaller than the initial sync: the applier lets go of what the replica holds, the sync completes', async (t) => {
  const dir = tempDir();
  const pki = makeTestPki(dir.path);
  // 1 MiB at the target, ~3.6 MiB to sync and no checkpoint until the end: it used to refuse as full.
  const s = await twoSites(dir.path, pki, { targetJournalBytes: 1 * MiB });
  await s.src.write(300);
  const gw = s.gateway();
  t.after(async () => {
    await gw.stop();
    await s.close();
    dir.cleanup();
  });
  gw.start();
  await until('the initial sync at the target', () => s.target.newest?.name === 'initial-sync', 60_000);
  assert.deepEqual(
    await snapshotHashes(s.storage, ['ra', 'rb'], s.target.newest!.snapshot, SIZE),
    await volumeHashes(s.src.storage, ['a', 'b']),
  );
  assert.deepEqual(s.errors, []);
  assert.ok(s.target.journal.bytes <= 1 * MiB);
});
