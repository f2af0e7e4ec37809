/**
 * An RBD pool against the real single-node Ceph (scripts/ceph): volumes are RBD images, served
 * over Haven's NBD export through their taps; snapshots, clones and revert are Ceph's own (the
 * `rbd` tool sees them), and what Ceph holds is exactly what was written through the export.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { closeSync, ftruncateSync, openSync, readFileSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { setImmediate as tick } from 'node:timers/promises';
import { after, before, test } from 'node:test';
import { openRawFile } from '../../src/block/index.js';
import { HavenError, logger } from '../../src/common/index.js';
import { NbdServer } from '../../src/nbd/index.js';
import { openVolumeSource, restore } from '../../src/protection/index.js';
import { runBackup } from '../../src/protection/backup/requests.js';
import { Repository, type SnapshotManifest } from '../../src/repository/index.js';
import { StorageExports, StorageService } from '../../src/storage/index.js';
import { startCeph, type Ceph } from '../support/ceph.js';
import { HAVEN_BIN, run } from '../support/proc.js';
import { tempDir } from '../support/tmp.js';

const MiB = 1024 * 1024;
const SIZE = 64 * MiB;

let ceph: Ceph;
let dir: { path: string; cleanup: () => void };
before(async () => {
  ceph = await startCeph();
  dir = tempDir('haven-rbd-');
});
after(async () => {
  await ceph?.stop();
  dir?.cleanup();
});

const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

/** What Ceph holds of an image (or image@snapshot), by `rbd export`. */
async function exported(spec: string): Promise<string> {
  const file = join(dir.path, `export-${Math.random().toString(36).slice(2)}`);
  await ceph.rbd('export', '--no-progress', spec, file);
  return sha(readFileSync(file));
}

/** A sparse image file: random MiBs at a few offsets, the rest zeroes. */
function imageFile(name: string, at: number[]): { path: string; content: Buffer } {
  const content = Buffer.alloc(SIZE);
  for (const o of at) {
    const chunk = Buffer.from(createHash('sha512').update(`${name}${o}`).digest());
    for (let i = 0; i < MiB; i += chunk.length) chunk.copy(content, o + i);
  }
  const path = join(dir.path, name);
  writeFileSync(path, '');
  const fd = openSync(path, 'w');
  for (const o of at) writeSync(fd, content, o, MiB, o);
  closeSync(fd);
  return { path, content };
}

test('an RBD pool: volumes as RBD images written over NBD, snapshots, v2 clones and revert as Ceph operations', async () => {
  const svc = StorageService.open(join(dir.path, 'site'));
  const server = new NbdServer({ log: logger('test-nbd') });
  try {
    const pool = await svc.createRbdPool('ceph', { conf: ceph.conf, cephPool: ceph.pool, prefix: 'haven-' });
    assert.equal(pool.capabilities.thin, true);
    assert.equal(pool.capabilities.snapshots, true);
    assert.equal(pool.capabilities.clones, true);
    assert.equal(pool.capabilities.distributed, true);
    assert.equal(pool.capabilities.replicas, 1, "the Ceph pool's size");
    assert.deepEqual(svc.capabilitiesOf('ceph'), {
      tier: 'standard',
      thin: true,
      snapshots: true,
      clones: true,
      distributed: true,
      replicas: '1',
    });
    svc.createVolume('v', SIZE, 'ceph', { app: 'db' });
    assert.match(await ceph.rbd('ls', ceph.pool), /^haven-v$/m);
    const exports = new StorageExports(svc, server);
    exports.refresh();
    const addr = await server.listen({ path: join(dir.path, 'nbd.sock') });
    assert.ok('path' in addr);
    const uri = (name: string) => `nbd+unix:///${encodeURIComponent(name)}?socket=${addr.path}`;

    // Written through Haven's NBD export, read back from Ceph by rbd export: the same bytes.
    const first = imageFile('first', [0, 5 * MiB, 33 * MiB + 4096 * 3, SIZE - MiB]);
    await run('nbdcopy', [first.path, uri('v')]);
    assert.equal(await exported(`${ceph.pool}/haven-v`), sha(first.content));
    // And through the export again (the tap over the RBD device).
    const back = join(dir.path, 'back');
    await run('nbdcopy', [uri('v'), back]);
    assert.equal(sha(readFileSync(back)), sha(first.content));
    // Thin: only the objects written hold data (4 MiB objects: at most two per MiB written).
    assert.ok(svc.volume('v').allocatedBytes <= 8 * 4 * MiB, `${svc.volume('v').allocatedBytes} allocated`);
    assert.deepEqual(svc.volume('v').labels, { app: 'db' });

    // A snapshot is an RBD snapshot.
    svc.snapshot('v', 's1');
    assert.match(await ceph.rbd('snap', 'ls', `${ceph.pool}/haven-v`), /\bs1\b/);
    assert.deepEqual(
      svc.listSnapshots('v').map((s) => s.name),
      ['s1'],
    );
    exports.refresh();
    await run('qemu-io', ['-f', 'raw', '-c', `write -P 0xab ${MiB} ${2 * MiB}`, uri('v')]);
    const second = Buffer.from(first.content);
    second.fill(0xab, MiB, 3 * MiB);
    assert.equal(await exported(`${ceph.pool}/haven-v`), sha(second));
    assert.equal(await exported(`${ceph.pool}/haven-v@s1`), sha(first.content));
    // The snapshot's export reads the snapshot.
    await run('nbdcopy', [uri('v@s1'), back]);
    assert.equal(sha(readFileSync(back)), sha(first.content));

    // A clone is an RBD clone (v2: no protection), a child of the snapshot.
    const c = svc.clone('v', 's1', 'c');
    assert.equal(c.origin, 'v@s1');
    assert.match(await ceph.rbd('children', `${ceph.pool}/haven-v@s1`), /haven-c/);
    assert.match(await ceph.rbd('info', `${ceph.pool}/haven-c`), /parent: rbd\/haven-v@s1/);
    assert.equal(await exported(`${ceph.pool}/haven-c`), sha(first.content));
    exports.refresh();
    await run('qemu-io', ['-f', 'raw', '-c', `write -P 0xcd 0 4096`, uri('c')]);
    assert.equal(await exported(`${ceph.pool}/haven-v@s1`), sha(first.content), 'the origin stays');
    assert.throws(
      () => svc.deleteSnapshot('v', 's1'),
      (e: HavenError) => e.code === 'CONFLICT' && /origin of clone c/.test(e.message),
    );

    // Revert is an RBD rollback.
    svc.revert('v', 's1');
    assert.equal(await exported(`${ceph.pool}/haven-v`), sha(first.content));
    await run('nbdcopy', [uri('v'), back]);
    assert.equal(sha(readFileSync(back)), sha(first.content), 'the export reads the reverted volume');

    // Resize grows the image.
    svc.resizeVolume('v', 2 * SIZE);
    assert.equal(svc.volume('v').size, 2 * SIZE);
    assert.match(await ceph.rbd('info', `${ceph.pool}/haven-v`), /size 128 MiB/);
    assert.throws(() => svc.resizeVolume('v', SIZE), /shrinking/);

    // Delete: the clone, the snapshot, the volume; images that are not the site's are left alone.
    await ceph.rbd('create', '--size', '4M', `${ceph.pool}/someone-else`);
    exports.refresh();
    await server.close();
    svc.deleteVolume('c');
    assert.throws(() => svc.deleteVolume('v'), /has snapshot s1/);
    svc.deleteSnapshot('v', 's1');
    svc.deleteVolume('v');
    assert.equal((await ceph.rbd('ls', ceph.pool)).trim(), 'someone-else');
    assert.deepEqual(svc.listVolumes(), []);
  } finally {
    await server.close();
    svc.close();
  }
});

test('an RBD pool survives a reopen of the site; its volumes are listed from Ceph', async () => {
  const site = join(dir.path, 'site2');
  let svc = StorageService.open(site);
  try {
    await svc.createRbdPool('ceph', { conf: ceph.conf, cephPool: ceph.pool, prefix: 'site2-' });
    svc.createVolume('w', 8 * MiB, 'ceph');
    const dev = svc.openDevice('w');
    const data = Buffer.alloc(MiB, 0x5a);
    await dev.write(data, 3 * MiB);
    await dev.flush();
  } finally {
    svc.close();
  }
  svc = StorageService.open(site);
  try {
    assert.deepEqual(
      svc.listVolumes().map((v) => [v.name, v.pool, v.size]),
      [['w', 'ceph', 8 * MiB]],
    );
    const got = Buffer.alloc(MiB);
    await svc.openDevice('w').read(got, 3 * MiB);
    assert.ok(got.every((b) => b === 0x5a));
    svc.deleteVolume('w');
  } finally {
    svc.close();
  }
});

test('an unreachable Ceph or a wrong pool fails clearly and within the timeout', async () => {
  const svc = StorageService.open(join(dir.path, 'site3'));
  try {
    // A monitor address nobody answers on.
    const wrong = join(dir.path, 'wrong.conf');
    writeFileSync(
      wrong,
      readFileSync(ceph.conf, 'utf8').replace(/mon host = .*/, 'mon host = [v2:127.0.0.1:9,v1:127.0.0.1:10]'),
    );
    assert.notEqual(readFileSync(wrong, 'utf8'), readFileSync(ceph.conf, 'utf8'));
    const t0 = performance.now();
    await assert.rejects(
      svc.createRbdPool('lost', { conf: wrong, cephPool: ceph.pool, timeoutSeconds: 3 }),
      (e: HavenError) => e.code === 'TIMEOUT' && /no monitor answered within 3 s/.test(e.message),
    );
    const s = (performance.now() - t0) / 1000;
    assert.ok(s < 10, `gave up after ${s.toFixed(1)} s`);
    // A configuration that does not exist.
    await assert.rejects(
      svc.createRbdPool('lost', { conf: join(dir.path, 'nope.conf'), cephPool: ceph.pool }),
      /cannot be read/,
    );
    // A Ceph pool the cluster does not have.
    await assert.rejects(
      svc.createRbdPool('lost', { conf: ceph.conf, cephPool: 'no-such-pool' }),
      (e: HavenError) => e.code === 'NOT_FOUND' && /no pool no-such-pool/.test(e.message),
    );
    assert.deepEqual(svc.listPools(), [], 'nothing recorded');
  } finally {
    svc.close();
  }
});

test('a site whose Ceph clusters do not answer opens after one connect timeout, not one per pool', async () => {
  const site = join(dir.path, 'site-lost');
  const svc = StorageService.open(site);
  try {
    await svc.createRbdPool('r1', { conf: ceph.conf, cephPool: ceph.pool, prefix: 'lost1-' });
    await svc.createRbdPool('r2', { conf: ceph.conf, cephPool: ceph.pool, prefix: 'lost2-' });
  } finally {
    svc.close();
  }
  // Both pools now point at a monitor address nobody answers on.
  const wrong = join(dir.path, 'lost-mon.conf');
  writeFileSync(
    wrong,
    readFileSync(ceph.conf, 'utf8').replace(/mon host = .*/, 'mon host = [v2:127.0.0.1:9,v1:127.0.0.1:10]'),
  );
  for (const p of ['r1', 'r2']) {
    const f = join(site, 'pools', p, 'pool.json');
    const cfg = JSON.parse(readFileSync(f, 'utf8')) as { ceph: { conf: string } };
    cfg.ceph.conf = wrong;
    writeFileSync(f, JSON.stringify(cfg));
  }
  const t0 = performance.now();
  const reopened = await StorageService.openAsync(site, { cephTimeoutSeconds: 2 });
  const s = (performance.now() - t0) / 1000;
  try {
    assert.ok(
      s >= 1.5 && s < 3.5,
      `opened after ${s.toFixed(2)} s (two pools, 2 s timeout each, tried at once)`,
    );
    for (const p of reopened.listPools().filter((x) => x.name !== 'default')) {
      assert.equal(p.ceph?.health.state, 'failed', `${p.name} is failed`);
      assert.match(p.ceph?.health.message ?? '', /cannot be reached.*no monitor answered within 2 s/);
    }
    assert.deepEqual(
      reopened
        .listPools()
        .map((p) => p.name)
        .sort(),
      ['r1', 'r2'],
    );
  } finally {
    reopened.close();
  }
});

test('a volume moves live from a file pool to an RBD pool and back while it is written; every acknowledged write arrives', async () => {
  const svc = StorageService.open(join(dir.path, 'site4'));
  try {
    svc.createPool('file');
    await svc.createRbdPool('ceph', { conf: ceph.conf, cephPool: ceph.pool, prefix: 'site4-' });
    const size = 32 * MiB;
    svc.createVolume('m', size, 'file');
    const dev = svc.openDevice('m'); // the tap: what the NBD server holds for a VM
    const shadow = Buffer.alloc(size);
    for (let at = 0; at < 24 * MiB; at += 2 * MiB) {
      const b = randomBytes(MiB);
      await dev.write(b, at);
      b.copy(shadow, at);
    }
    svc.addBitmap('m', 'cbt');
    const moveWhileWriting = async (to: string) => {
      let moving = true;
      let writes = 0;
      const writer = (async () => {
        while (moving) {
          const at = Math.floor(Math.random() * (size - 4096));
          const b = randomBytes(4096);
          await dev.write(b, at);
          b.copy(shadow, at);
          writes++;
          await tick();
        }
      })();
      try {
        return { r: await svc.moveVolume('m', to), writes };
      } finally {
        moving = false;
        await writer;
      }
    };
    const there = await moveWhileWriting('ceph');
    assert.equal(svc.volume('m').pool, 'ceph');
    assert.ok(there.writes > 10, `the writer went on during the move (${there.writes} writes)`);
    assert.ok(there.r.mirroredBytes > 0, 'writes during the copy were mirrored');
    assert.deepEqual(svc.listVolumes('file'), [], 'the source is gone');
    assert.equal((await ceph.rbd('ls', ceph.pool)).match(/^site4-.*$/gm)?.join(), 'site4-m');
    assert.equal(await exported(`${ceph.pool}/site4-m`), sha(shadow), 'Ceph holds every acknowledged write');
    assert.deepEqual(
      svc.listBitmaps('m').map((b) => [b.name, b.dirtyBytes]),
      [['cbt', size]],
      'bitmaps move, all dirty',
    );

    const back = await moveWhileWriting('file');
    assert.equal(svc.volume('m').pool, 'file');
    assert.ok(back.writes > 10, `the writer went on during the move back (${back.writes} writes)`);
    assert.ok(back.r.mirroredBytes > 0, 'writes during the copy back were mirrored');
    assert.equal((await ceph.rbd('ls', ceph.pool)).match(/^site4-.*$/gm), null, 'the RBD image is gone');
    const got = Buffer.alloc(size);
    await svc.openDevice('m', { readOnly: true }).read(got, 0);
    assert.equal(sha(got), sha(shadow));
    console.log(
      `move file → rbd: ${there.r.seconds.toFixed(2)} s, pause ${there.r.pauseMs.toFixed(1)} ms, ${there.writes} writes; ` +
        `rbd → file: ${back.r.seconds.toFixed(2)} s, pause ${back.r.pauseMs.toFixed(1)} ms, ${back.writes} writes`,
    );
    svc.deleteVolume('m');
  } finally {
    svc.close();
  }
});

test('incremental backups of an RBD volume read only what changed: from the bitmaps, and from Ceph when the bitmaps are lost', async (t) => {
  const site = join(dir.path, 'site5');
  const size = 64 * MiB;
  const shadow = Buffer.alloc(size);
  const repo = await Repository.init(join(dir.path, 'repo'));
  const restoredSha = async (snap: SnapshotManifest) => {
    const out = join(dir.path, `restored-${snap.id}.img`);
    const fd = openSync(out, 'w');
    ftruncateSync(fd, size);
    closeSync(fd);
    const dev = openRawFile(out);
    try {
      await restore(repo, snap, 0, dev, { fresh: true, workers: 2 });
    } finally {
      await dev.close();
    }
    return sha(readFileSync(out));
  };
  const change = async (svc: StorageService, at: number[], length: number) => {
    const dev = svc.openDevice('b');
    for (const o of at) {
      const b = randomBytes(length);
      await dev.write(b, o);
      b.copy(shadow, o);
    }
    return at.length * length;
  };
  let svc = StorageService.open(site);
  let full: SnapshotManifest, inc: SnapshotManifest;
  try {
    await svc.createRbdPool('ceph', { conf: ceph.conf, cephPool: ceph.pool, prefix: 'site5-' });
    svc.createVolume('b', size, 'ceph');
    await change(
      svc,
      Array.from({ length: 48 }, (_, i) => i * MiB),
      MiB,
    );
    full = await runBackup(repo, await openVolumeSource(svc, repo, 'b'));
    assert.equal(full.parent, undefined);
    // About 1% of the disk, in 64 KiB granules (the backup bitmap's): 10 of them, scattered.
    const changed = await change(
      svc,
      Array.from({ length: 10 }, (_, i) => i * 6 * MiB + 128 * 1024),
      64 * 1024,
    );
    inc = await runBackup(repo, await openVolumeSource(svc, repo, 'b'));
    t.diagnostic(
      `bitmaps: changed ${changed} bytes (${((100 * changed) / size).toFixed(2)}%), read ${inc.stats.readBytes}`,
    );
    assert.equal(inc.parent, full.id);
    assert.equal(inc.stats.readBytes, changed, 'only the changed granules were read');
    assert.equal(await restoredSha(inc), sha(shadow));
    assert.match(await ceph.rbd('snap', 'ls', `${ceph.pool}/site5-b`), /haven-backup-/);
  } finally {
    svc.close();
  }
  // The site dies with the bitmaps in use (its marker stays): they are not trusted afterwards.
  const poolPath = JSON.parse(readFileSync(join(site, 'pools.json'), 'utf8')).pools[0].path as string;
  writeFileSync(join(poolPath, 'bitmaps', '.in-use'), '1\n');
  svc = StorageService.open(site);
  try {
    assert.ok(svc.listBitmaps('b').every((b) => b.inconsistent));
    // Unaligned changes, about 1%, in objects the previous epoch has: Ceph's diff between the two
    // backups' snapshots says exactly where (the engine reads the 64 KiB granules they touch).
    const at = Array.from({ length: 10 }, (_, i) => i * 4.5 * MiB + 3 * MiB + 1000 * i);
    const changed = await change(svc, at, 65_000);
    const G = 64 * 1024;
    const granules = at.reduce((n, o) => n + Math.ceil((o + 65_000) / G) - Math.floor(o / G), 0) * G;
    const inc2 = await runBackup(repo, await openVolumeSource(svc, repo, 'b'));
    t.diagnostic(
      `Ceph's diff: changed ${changed} bytes in ${granules / G} granules, read ${inc2.stats.readBytes}`,
    );
    assert.equal(inc2.parent, inc.id, 'incremental without the bitmaps');
    assert.equal(inc2.stats.readBytes, granules, 'only the granules of the changed extents were read');
    assert.equal(await restoredSha(inc2), sha(shadow));
    for (const s of svc.listSnapshots('b')) svc.deleteSnapshot('b', s.name);
    svc.deleteVolume('b');
  } finally {
    svc.close();
  }
});

test('haven pool create --type rbd: the CLI makes an RBD pool, and refuses one without its Ceph pool', async () => {
  const site = join(dir.path, 'site6');
  const haven = async (...args: string[]) =>
    (await run(process.execPath, [HAVEN_BIN, ...args, '--data', site])).stdout;
  const p = JSON.parse(await haven(...ceph.poolCreateArgs('cli-', 'cp'), '--json')) as {
    capabilities: Record<string, unknown>;
    ceph: { pool: string; health: { state: string } };
  };
  assert.equal(p.capabilities.distributed, true);
  assert.equal(p.ceph.pool, ceph.pool);
  assert.equal(p.ceph.health.state, 'ok');
  await haven('volume', 'create', 'cv', '--size', '16M', '--pool', 'cp');
  assert.match(await ceph.rbd('ls', ceph.pool), /^cli-cv$/m);
  await assert.rejects(
    haven('pool', 'create', 'bad', '--type', 'rbd', '--ceph-conf', ceph.conf),
    /needs cephConf .* and cephPool/,
  );
  await haven('volume', 'delete', 'cv');
  assert.doesNotMatch(await ceph.rbd('ls', ceph.pool), /cli-cv/);
});
