// A VM whose boot disk is a volume on an RBD pool (issue 18): the site daemon imports the disk
// into Ceph, starts the test guest on it (the volume is its first, boot, disk `vda`; the guest's
// kernel and initramfs come from the host, as for every test VM — there is no boot loader on the
// test guest), the guest writes known patterns, a snapshot taken while it writes is an RBD
// snapshot (`rbd snap ls`), and after a clean stop what Ceph holds (`rbd export`) is exactly what
// the guest wrote, what the guest itself hashed, and what Haven's NBD export of the volume reads.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { startCeph, type Ceph } from '../support/ceph.js';
import { patternBytes } from '../support/guest.js';
import { assertWrites, guestArgs, site, waitForConsole, writesIn, wholeConsoleLog } from '../support/site.js';

const MiB = 1024 * 1024;
const SIZE = 32 * MiB;
const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

let ceph: Ceph;
before(async () => {
  ceph = await startCeph();
});
after(async () => {
  await ceph?.stop();
});

test('a VM runs on an RBD volume (its first disk), writes, and Ceph holds exactly what it wrote; a snapshot while it runs is an RBD snapshot', async (t) => {
  const s = await site(t);
  await s.haven(...ceph.poolCreateArgs('vm-'));
  // The boot disk: random bytes, imported into the RBD pool.
  const seedImage = randomBytes(SIZE);
  const seedFile = join(s.dir, '..', 'seed.img');
  writeFileSync(seedFile, seedImage);
  await s.haven('volume', 'import', seedFile, '--name', 'root', '--pool', 'ceph');
  const shown = JSON.parse(await s.haven('volume', 'show', 'root', '--json')) as {
    pool: string;
    size: number;
  };
  assert.equal(shown.pool, 'ceph');
  assert.equal(shown.size, SIZE);
  assert.match(await ceph.rbd('ls', ceph.pool), /^vm-root$/m);
  const rbdExport = async (spec: string) => {
    const file = join(s.dir, '..', `export-${Math.random().toString(36).slice(2)}`);
    await ceph.rbd('export', '--no-progress', `${ceph.pool}/${spec}`, file);
    return readFileSync(file);
  };
  assert.equal(sha(await rbdExport('vm-root')), sha(seedImage), 'the import is in Ceph');

  // 32 writes of 64 KiB over the first 2 MiB, the guest's own hash of that region, then a stream
  // of 4 KiB writes over 1 MiB at 8 MiB until the VM is stopped.
  const first = { seed: 21, count: 32, len: 64 * 1024 };
  const region = first.count * first.len;
  const stream = { seed: 22, len: 4096, start: 8 * MiB, slots: 256 };
  await s.haven(
    'vm',
    'create',
    'rbdvm',
    '--disk',
    'root',
    ...guestArgs(
      `write-pattern disk=vda seed=${first.seed} count=${first.count} len=${first.len}; ` +
        `hash disk=vda offset=0 length=${region}; ` +
        `stream disk=vda seed=${stream.seed} len=${stream.len} start=${stream.start} slots=${stream.slots} rate=50`,
    ),
  );
  await s.haven('vm', 'start', 'rbdvm');
  /** Waits (with a deadline) until the guest reported at least n stream writes. */
  const streamedAtLeast = async (n: number) => {
    const deadline = Date.now() + 60_000;
    for (;;) {
      const log = await wholeConsoleLog(s, 'rbdvm');
      if (writesIn(log).filter((w) => w.offset >= stream.start).length >= n) return;
      if (Date.now() > deadline) throw new Error(`fewer than ${n} stream writes after 60 s:\n${log}`);
      await sleep(250); // the poll interval
    }
  };
  let log = await waitForConsole(s, 'rbdvm', /"cmd":"hash"/, 120_000);
  assert.match(
    log,
    /HAVEN-GUEST \{"event":"ready".*"disks":\["vda"\]/,
    'the RBD volume is the guest disk vda',
  );
  const hashed = log
    .split('\n')
    .filter((l) => l.includes('"event":"done"') && l.includes('"cmd":"hash"'))
    .map(
      (l) => JSON.parse(l.slice(l.indexOf('{'))) as { sha256: string; offset: number; length: number },
    )[0]!;
  assert.equal(hashed.length, region);
  // What the guest wrote, as the host computes it.
  const expected = Buffer.from(seedImage);
  for (let k = 0; k < first.count; k++)
    patternBytes(first.seed, k, k * first.len, first.len).copy(expected, k * first.len);
  assert.equal(hashed.sha256, sha(expected.subarray(0, region)), 'the guest read back what it wrote');

  // A snapshot of the running, writing VM: an RBD snapshot.
  // What the guest reported before the snapshot was asked for is durable before it: it must be in it.
  await streamedAtLeast(10);
  const atSnapshot = writesIn(await wholeConsoleLog(s, 'rbdvm')).filter((w) => w.offset >= stream.start);
  await s.haven('snapshot', 'create', 'root', 'live');
  assert.match(await ceph.rbd('snap', 'ls', `${ceph.pool}/vm-root`), /\blive\b/);
  // The guest goes on writing after the snapshot.
  await streamedAtLeast(atSnapshot.length + 20);

  // A clean stop (the test guest ignores the power button: QEMU quits after the grace time).
  assert.match(await s.haven('vm', 'stop', 'rbdvm', '--grace', '1'), /VM rbdvm stopped/);
  log = await wholeConsoleLog(s, 'rbdvm');
  assert.doesNotMatch(
    log,
    /"event":"error"|I\/O error|blk_update_request|Buffer I\/O/,
    'no I/O error in the guest',
  );
  const streamed = writesIn(log).filter((w) => w.offset >= stream.start);
  assert.ok(streamed.length > atSnapshot.length, 'the guest wrote after the snapshot');

  // What Ceph holds: the first region byte for byte as the guest hashed it, every streamed write
  // the guest reported, the rest of the seed untouched.
  const inCeph = await rbdExport('vm-root');
  assert.equal(sha(inCeph.subarray(0, region)), hashed.sha256, "rbd export's first 2 MiB = the guest's hash");
  assertWrites(inCeph, stream.seed, streamed);
  assert.equal(
    sha(inCeph.subarray(region, stream.start)),
    sha(seedImage.subarray(region, stream.start)),
    'between the two regions the seed is untouched',
  );
  assert.equal(
    sha(inCeph.subarray(stream.start + stream.slots * stream.len)),
    sha(seedImage.subarray(stream.start + stream.slots * stream.len)),
    'after the stream the seed is untouched',
  );
  // Haven's NBD read of the volume (haven volume export) is the same bytes.
  const viaNbd = join(s.dir, '..', 'root.img');
  await s.haven('volume', 'export', 'root', viaNbd);
  assert.equal(sha(readFileSync(viaNbd)), sha(inCeph), "Haven's export = rbd export");

  // The snapshot: the first region as the guest wrote it, each stream slot either the seed or a
  // streamed write — and it holds every write the guest saw complete before the snapshot.
  const snap = await rbdExport('vm-root@live');
  assert.equal(sha(snap.subarray(0, region)), hashed.sha256, 'the snapshot holds the first region');
  for (let slot = 0; slot < stream.slots; slot++) {
    const offset = stream.start + slot * stream.len;
    const got = snap.subarray(offset, offset + stream.len);
    const before = atSnapshot.filter((w) => w.offset === offset).map((w) => w.seq);
    const minSeq = before.length ? Math.max(...before) : -1;
    const ok =
      (minSeq < 0 && got.equals(seedImage.subarray(offset, offset + stream.len))) ||
      streamed.some(
        (w) =>
          w.offset === offset &&
          w.seq >= minSeq &&
          got.equals(patternBytes(stream.seed, w.seq, offset, stream.len)),
      );
    assert.ok(ok, `slot ${slot} of the snapshot is neither the seed nor a write at or after ${minSeq}`);
  }
  const snapViaNbd = join(s.dir, '..', 'live.img');
  await s.haven('volume', 'export', 'root@live', snapViaNbd);
  assert.equal(sha(readFileSync(snapViaNbd)), sha(snap), "Haven's export of the snapshot = rbd export of it");
});
