// Verify and the compare sync, with the two gateways of one group on two StorageServices over
// mutual TLS (the target's checksums called in-process, as the site's RPC will): an equal replica
// verifies clean; a block corrupted in the replica's newest checkpoint is named, repaired through
// the journal, and verifies clean after; a verify while the source keeps writing finds nothing
// (the source's image is a snapshot taken with the checkpoint); verify outside journal mode is
// refused; a replica seeded with an older copy receives only what differs.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { EXTENT_ZERO } from '../../block/index.js';
import { StorageService } from '../../storage/index.js';
import { FaultProxy } from '../../../test/support/fault-proxy.js';
import { MiB, SourceGroup, sha, snapshotHashes } from '../../../test/support/replication.js';
import { dialMutualTls, listenMutualTls, makeTestPki } from '../../../test/support/tls.js';
import { until } from '../../../test/support/proc.js';
import { tempDir } from '../../../test/support/tmp.js';
import { SourceGateway, type SourceGatewayOptions } from './source-gateway.js';
import { TargetGateway } from './target-gateway.js';

const SIZE = 16 * MiB;
const SOURCES = ['a', 'b'];
const REPLICAS = ['ra', 'rb'];

async function volumeHashes(storage: StorageService, names: string[]): Promise<string[]> {
  const out: string[] = [];
  for (const v of names) {
    const b = Buffer.alloc(SIZE);
    await storage.openDevice(v, { readOnly: true }).read(b, 0);
    out.push(sha(b));
  }
  return out;
}

/** Source group, target storage and gateway, the TLS link through a cuttable proxy; `gateway()` makes the source's. */
async function twoSites(
  dir: string,
  opts: { seed?: (src: SourceGroup, target: StorageService) => Promise<void> } = {},
) {
  const pki = makeTestPki(dir);
  const src = new SourceGroup(dir, SOURCES, SIZE, { recording: false });
  const storage = StorageService.open(join(dir, 'target'));
  storage.createPool('p', {});
  for (const v of REPLICAS) storage.createVolume(v, SIZE, 'p');
  await opts.seed?.(src, storage);
  const errors: Error[] = [];
  const target = new TargetGateway({
    group: 'g',
    dir: join(dir, 'target-gw'),
    storage,
    volumes: REPLICAS,
    onError: (e) => errors.push(e),
  });
  const listener = await listenMutualTls(pki, (socket) => void target.accept(socket));
  const proxy = await FaultProxy.start({ port: listener.port });
  const gateways: SourceGateway[] = [];
  const gateway = (o: Partial<SourceGatewayOptions> = {}) => {
    const gw = new SourceGateway({
      group: 'g',
      dir: join(dir, 'source-gw'),
      taps: src.taps,
      connect: () => dialMutualTls(proxy.port, pki),
      retryMs: 50,
      journalBytes: 2 * MiB,
      storage: src.storage,
      volumes: SOURCES,
      remoteChecksums: (req) => target.checksums(req),
      ...o,
    });
    gateways.push(gw);
    return gw;
  };
  return {
    src,
    storage,
    target,
    proxy,
    errors,
    gateway,
    async close() {
      for (const gw of gateways) await gw.stop().catch(() => undefined);
      await proxy.close();
      await listener.close();
      await target.close();
      storage.close();
      await src.close();
    },
  };
}

test('verify: an equal replica is clean; a block corrupted in the replica is named, repaired through the journal, clean after; the next checkpoint equals the source', async (t) => {
  const dir = tempDir();
  const s = await twoSites(dir.path);
  t.after(async () => {
    await s.close();
    dir.cleanup();
  });
  await s.src.write(300);
  const gw = s.gateway();
  gw.start();
  await until('the initial sync at the target', () => s.target.newest?.name === 'initial-sync');
  await until('replicating', () => gw.status().mode === 'replicating');

  const clean = await gw.verify();
  t.diagnostic(`verify of ${clean.comparedBytes} bytes in ${clean.elapsedMs} ms`);
  assert.deepEqual(clean.differences, []);
  assert.equal(clean.comparedBytes, 2 * SIZE);
  assert.ok(clean.checkpoint > 0);
  // The source's verify snapshots are gone again.
  for (const v of SOURCES) assert.deepEqual(s.src.storage.listSnapshots(v), []);

  // Garbage written into the replica behind the applier's back; the next checkpoint's snapshot has it.
  const bad = 5 * MiB + 12 * 1024;
  await s.storage.openDevice('rb').write(Buffer.alloc(4096, 0x5a), bad);
  gw.checkpoint('with-garbage');
  await until('the corrupt checkpoint applied', () => s.target.newest?.name === 'with-garbage');

  const found = await gw.verify({ repair: true, recheck: true });
  assert.deepEqual(found.differences, [{ volume: 1, name: 'b', offset: 5 * MiB, length: MiB }]);
  assert.equal(found.repair?.bytes, MiB);
  assert.ok(found.repair!.checkpoint! > found.checkpoint);
  assert.deepEqual(found.recheck?.differences, [], 'clean after the repair');
  // The replica's checkpoint after the repair equals the source (nothing written since).
  await until('the repair checkpoint applied', () => s.target.newest!.seq >= found.repair!.checkpoint!);
  assert.deepEqual(
    await snapshotHashes(s.storage, REPLICAS, s.target.newest!.snapshot, SIZE),
    await volumeHashes(s.src.storage, SOURCES),
  );
  assert.deepEqual(s.errors, []);
});

test('verify while the source keeps writing compares like with like: no false differences', async (t) => {
  const dir = tempDir();
  const s = await twoSites(dir.path);
  let writing = true;
  let writer: Promise<void> = Promise.resolve();
  t.after(async () => {
    writing = false;
    await writer;
    await s.close();
    dir.cleanup();
  });
  await s.src.write(200);
  const gw = s.gateway({ journalBytes: 64 * MiB });
  gw.start();
  await until('the initial sync at the target', () => s.target.newest?.name === 'initial-sync');
  await until('replicating', () => gw.status().mode === 'replicating');
  let writes = 0;
  writer = (async () => {
    while (writing) {
      await s.src.write(4);
      writes += 4;
      await sleep(1);
    }
  })();
  for (let i = 0; i < 3; i++) {
    const before = writes;
    const r = await gw.verify();
    assert.ok(writes > before, 'the source wrote while it was verified');
    assert.deepEqual(r.differences, [], `verify ${i} at checkpoint ${r.checkpoint}`);
  }
  assert.equal(gw.status().mode, 'replicating');
  writing = false;
  await writer;
  t.diagnostic(`${writes} writes during 3 verifies`);
});

test('verify outside journal mode, without the target, with a bad extent size: a clear error, nothing changed', async (t) => {
  const dir = tempDir();
  const s = await twoSites(dir.path);
  t.after(async () => {
    await s.close();
    dir.cleanup();
  });
  // More data than the 2 MiB journal holds, and no link: the initial sync cannot complete.
  await s.src.write(300);
  s.proxy.cut();
  const gw = s.gateway();
  gw.start();
  await until('initial sync', () => gw.status().mode === 'initial-sync');
  await assert.rejects(gw.verify(), {
    code: 'CONFLICT',
    message: /group g is in its initial sync.*once it is replicating/,
  });
  s.proxy.heal();
  await until(
    'replicating',
    () => gw.status().mode === 'replicating' && s.target.newest?.name === 'initial-sync',
  );
  await assert.rejects(gw.verify({ extentBytes: 1000 }), {
    code: 'INVALID_ARGUMENT',
    message: /extent size 1000/,
  });
  const bare = new SourceGateway({
    group: 'h',
    dir: join(dir.path, 'bare'),
    taps: s.src.taps,
    connect: () => Promise.reject(new Error('no link')),
  });
  await assert.rejects(bare.verify(), { code: 'INVALID_ARGUMENT', message: /group h cannot be verified/ });
  await bare.stop();
  assert.throws(() => s.gateway({ volumes: ['a'] }), {
    code: 'INVALID_ARGUMENT',
    message: /1 volume names for 2 taps/,
  });
  // The journal full while the link is cut: bitmap mode.
  s.proxy.cut();
  await s.src.write(400);
  await until('bitmap mode', () => gw.status().mode === 'bitmap');
  await assert.rejects(gw.verify({ repair: true }), {
    code: 'CONFLICT',
    message: /group g is in bitmap mode/,
  });
  for (const v of SOURCES) assert.deepEqual(s.src.storage.listSnapshots(v), [], 'no verify snapshot left');
  gw.pause();
  await assert.rejects(gw.verify(), { code: 'CONFLICT', message: /group g is paused: resume it/ });
});

/** Copies the source volumes into the replica volumes (a restored backup of them). */
async function seedReplica(src: SourceGroup, target: StorageService): Promise<void> {
  const b = Buffer.alloc(SIZE);
  for (let i = 0; i < SOURCES.length; i++) {
    await src.storage.openDevice(SOURCES[i]!, { readOnly: true }).read(b, 0);
    await target.openDevice(REPLICAS[i]!).write(b, 0);
  }
}

test('compare initial sync: a replica seeded with an older copy of the source receives only the extents that changed since (5%), and ends equal', async (t) => {
  const dir = tempDir();
  const EXTENT = 64 * 1024;
  let changed = 0;
  const s = await twoSites(dir.path, {
    seed: async (src, target) => {
      // Data all over both volumes, copied to the replica...
      await src.write(1500);
      await seedReplica(src, target);
      // ...then 5% of each volume changed at the source: 12 extents written, one zeroed.
      for (let v = 0; v < SOURCES.length; v++) {
        for (let k = 0; k < 12; k++) {
          const at = (7 + k * 19 + v * 3) * EXTENT;
          await src.taps[v]!.write(Buffer.alloc(EXTENT, 0x30 + k), at);
          changed += EXTENT;
        }
        await src.taps[v]!.writeZeroes(250 * EXTENT, EXTENT);
        changed += EXTENT;
      }
    },
  });
  t.after(async () => {
    await s.close();
    dir.cleanup();
  });
  const gw = s.gateway({ initialSync: 'compare', extentBytes: EXTENT });
  gw.start();
  await until('the initial sync at the target', () => s.target.newest?.name === 'initial-sync');
  const sent = s.proxy.upBytes;
  let allocated = 0;
  for (const tap of s.src.taps)
    for (const e of await tap.blockStatus(0, SIZE)) if (!(e.flags & EXTENT_ZERO)) allocated += e.length;
  t.diagnostic(
    `compare sync: ${sent} bytes on the wire for ${changed} bytes changed; a copy sync would send the ${allocated} allocated`,
  );
  assert.ok(sent >= changed - 2 * EXTENT, `sent ${sent}: the changed data (zeroes are not sent as data)`);
  assert.ok(sent <= changed * 1.1, `sent ${sent} bytes for ${changed} changed`);
  assert.deepEqual(
    await snapshotHashes(s.storage, REPLICAS, s.target.newest!.snapshot, SIZE),
    await volumeHashes(s.src.storage, SOURCES),
  );
  await until('replicating', () => gw.status().mode === 'replicating');
  assert.deepEqual((await gw.verify()).differences, []);
  assert.deepEqual(s.errors, []);
});

test('after a crash of the source daemon the full resync compares: a replica that is level receives almost nothing, a corrupt extent is sent; a verify snapshot left behind goes', async (t) => {
  const dir = tempDir();
  const s = await twoSites(dir.path);
  t.after(async () => {
    await s.close();
    dir.cleanup();
  });
  await s.src.write(300);
  let gw = s.gateway();
  gw.start();
  await until('the initial sync at the target', () => s.target.newest?.name === 'initial-sync');
  await until('drained', () => gw.status().acknowledged >= gw.journal.nextSeq - 1);
  await gw.stop();
  // What a kill -9 leaves: the state says the gateway was running.
  const statePath = join(dir.path, 'source-gw', 'state.json');
  writeFileSync(statePath, JSON.stringify({ ...JSON.parse(readFileSync(statePath, 'utf8')), running: true }));
  await s.storage.openDevice('ra').write(Buffer.alloc(4096, 0x77), 3 * MiB);
  // A verify the crash interrupted left its snapshot; a user's own snapshot stays.
  s.src.storage.snapshot('a', 'replication-verify-9');
  s.src.storage.snapshot('a', 'verify-9');
  const before = s.proxy.upBytes;
  gw = s.gateway();
  gw.start();
  assert.deepEqual(
    s.src.storage.listSnapshots('a').map((x) => x.name),
    ['verify-9'],
  );
  await until('the full resync at the target', () => s.target.newest?.name === 'resync');
  const sent = s.proxy.upBytes - before;
  t.diagnostic(`full compare resync: ${sent} bytes on the wire for one corrupt extent of ${2 * SIZE} bytes`);
  assert.ok(sent < 1.2 * MiB, `sent ${sent}`);
  assert.deepEqual(
    await snapshotHashes(s.storage, REPLICAS, s.target.newest!.snapshot, SIZE),
    await volumeHashes(s.src.storage, SOURCES),
  );
});
