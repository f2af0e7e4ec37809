/**
 * Volume semantics every pool the site owns must have, as one table of cases run on a file pool
 * (src/storage/own-pool-file.test.ts) and on an RBD pool in a real Ceph
 * (src/storage/own-pool-rbd.test.ts). Each case keeps a model of what every volume and snapshot
 * must read (a Buffer) and compares the pool's bytes with it by hash, so both pool kinds give the
 * same results byte for byte; where the pool is Ceph, the case also checks what Ceph itself says
 * (`rbd snap ls`, `rbd children`, `rbd export`, `rbd ls`).
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import type { BlockDevice } from '../../src/block/index.js';
import { HavenError } from '../../src/common/index.js';
import type { OwnPool } from '../../src/storage/own-pool.js';

const MiB = 1024 * 1024;
const KiB = 1024;
export const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

/** What Ceph says of a volume, for the RBD pool's run of a case. */
export interface CephView {
  /** `rbd snap ls`: the snapshot names of the volume's image. */
  snapshots(volume: string): Promise<string[]>;
  /** `rbd children`: the volumes cloned from volume@snapshot. */
  children(volume: string, snapshot: string): Promise<string[]>;
  /** `rbd export` of the volume's image (or image@snapshot): the sha256 of its bytes. */
  exportHash(target: string): Promise<string>;
  /** `rbd ls`: the site's volumes among the Ceph pool's images. */
  images(): Promise<string[]>;
}

export interface PoolUnderTest {
  kind: 'file' | 'rbd';
  pool(): OwnPool;
  /** Closes the pool and opens it again from what it recorded. */
  reopen(): OwnPool;
  ceph?: CephView;
}

export interface PoolCase {
  name: string;
  run(p: PoolUnderTest): Promise<void>;
}

/** Bytes that differ per name and offset (seeded, not random: a failure is reproducible). */
export function pattern(name: string, length: number): Buffer {
  const out = Buffer.alloc(length);
  let block = createHash('sha512').update(name).digest();
  for (let at = 0; at < length; at += block.length) {
    block.copy(out, at);
    block = createHash('sha512').update(block).digest();
  }
  return out;
}

async function readAll(dev: BlockDevice, size: number): Promise<Buffer> {
  const b = Buffer.alloc(size);
  for (let at = 0; at < size; at += 4 * MiB) await dev.read(b.subarray(at, Math.min(size, at + 4 * MiB)), at);
  return b;
}

/** The pool's bytes of a volume or snapshot, by hash, equal to the model's. */
async function assertReads(p: PoolUnderTest, target: string, model: Buffer, what = target): Promise<void> {
  const dev = p.pool().openDevice(target);
  try {
    assert.equal(dev.size, model.length, `${what}: size`);
    assert.equal(
      sha(await readAll(dev, model.length)),
      sha(model),
      `${what}: the bytes read differ from the model`,
    );
  } finally {
    if (target.includes('@')) await dev.close();
  }
  if (p.ceph)
    assert.equal(await p.ceph.exportHash(target), sha(model), `${what}: rbd export differs from the model`);
}

/** Writes to the device and to the model alike. */
async function write(dev: BlockDevice, model: Buffer, data: Buffer, offset: number): Promise<void> {
  await dev.write(data, offset);
  data.copy(model, offset);
}

const code = (c: string) => (e: unknown) => e instanceof HavenError && e.code === c;

/** Refused with this code, whether the pool throws at once or its promise rejects. */
async function refused(fn: () => unknown, c: string, what: string): Promise<void> {
  await assert.rejects(async () => fn(), code(c), what);
}

const SIZE = 16 * MiB;

export const poolCases: PoolCase[] = [
  {
    name: 'written bytes read back, unwritten ones are zeroes, across 4 MiB object boundaries',
    async run(p) {
      const pool = p.pool();
      const info = pool.createVolume('rw', SIZE, { app: 'db' });
      assert.equal(info.size, SIZE);
      assert.deepEqual(info.labels, { app: 'db' });
      const model = Buffer.alloc(SIZE);
      await assertReads(p, 'rw', model, 'a new volume');
      const dev = pool.openDevice('rw');
      await write(dev, model, pattern('a', MiB), 0);
      await write(dev, model, pattern('b', 8 * KiB), 4 * MiB - 4 * KiB); // straddles an object boundary
      await write(dev, model, pattern('c', 512), 9 * MiB + 512);
      await write(dev, model, pattern('d', 3 * MiB), SIZE - 3 * MiB);
      await dev.flush();
      await assertReads(p, 'rw', model);
      // Trim and write zeroes (whole and partial objects) read back as zeroes.
      await dev.trim(256 * KiB, 128 * KiB);
      model.fill(0, 256 * KiB, 384 * KiB);
      await dev.writeZeroes(SIZE - 2 * MiB, 4 * KiB);
      model.fill(0, SIZE - 2 * MiB, SIZE - 2 * MiB + 4 * KiB);
      await dev.flush();
      await assertReads(p, 'rw', model, 'after trim and write zeroes');
      // Thin: a volume holds about what was written, not its size.
      assert.ok(pool.volume('rw').allocatedBytes < SIZE, `${pool.volume('rw').allocatedBytes} allocated`);
    },
  },
  {
    name: 'a snapshot keeps its point in time, read-only, while the volume goes on',
    async run(p) {
      const pool = p.pool();
      pool.createVolume('sv', SIZE);
      const dev = pool.openDevice('sv');
      const model = Buffer.alloc(SIZE);
      await write(dev, model, pattern('s0', 2 * MiB), MiB);
      const s1 = Buffer.from(model);
      assert.equal(pool.snapshot('sv', 's1').name, 's1');
      await write(dev, model, pattern('s1', MiB), 2 * MiB);
      await write(dev, model, pattern('s1b', 64 * KiB), 12 * MiB);
      const s2 = Buffer.from(model);
      pool.snapshot('sv', 's2');
      await write(dev, model, pattern('s2', 4 * MiB), 0);
      assert.deepEqual(
        pool.listSnapshots('sv').map((s) => s.name),
        ['s1', 's2'],
      );
      if (p.ceph) assert.deepEqual(await p.ceph.snapshots('sv'), ['s1', 's2'], 'rbd snap ls');
      await assertReads(p, 'sv@s1', s1);
      await assertReads(p, 'sv@s2', s2);
      await assertReads(p, 'sv', model);
      const snap = pool.openDevice('sv@s1');
      try {
        await refused(() => snap.write(Buffer.alloc(512), 0), 'READ_ONLY', 'a snapshot is read-only');
      } finally {
        await snap.close();
      }
      await refused(() => pool.snapshot('sv', 's1'), 'CONFLICT', 'a snapshot name is taken');
      await refused(() => pool.openDevice('sv@nope'), 'NOT_FOUND', 'no such snapshot');
      pool.deleteSnapshot('sv', 's1');
      assert.deepEqual(
        pool.listSnapshots('sv').map((s) => s.name),
        ['s2'],
      );
      if (p.ceph) assert.deepEqual(await p.ceph.snapshots('sv'), ['s2'], 'rbd snap ls after delete');
      await assertReads(p, 'sv@s2', s2, 'the other snapshot after a delete');
    },
  },
  {
    name: 'a clone reads its origin snapshot and diverges without touching it',
    async run(p) {
      const pool = p.pool();
      pool.createVolume('org', SIZE, { app: 'origin' });
      const dev = pool.openDevice('org');
      const model = Buffer.alloc(SIZE);
      await write(dev, model, pattern('o', 6 * MiB), 0);
      const atSnap = Buffer.from(model);
      pool.snapshot('org', 'base');
      const c = pool.clone('org', 'base', 'org-c', { role: 'test' });
      assert.equal(c.origin, 'org@base');
      // A clone has the labels it is given, none of its origin's (a replica's label on a clone of
      // its checkpoint would hide the clone).
      assert.deepEqual(c.labels, { role: 'test' });
      assert.deepEqual(pool.volumeLabels('org-c'), { role: 'test' });
      if (p.ceph) assert.deepEqual(await p.ceph.children('org', 'base'), ['org-c'], 'rbd children');
      const clone = Buffer.from(atSnap);
      await assertReads(p, 'org-c', clone, 'the new clone');
      const cdev = pool.openDevice('org-c');
      await write(cdev, clone, pattern('c1', 4 * KiB), 3 * MiB + 4 * KiB);
      await write(cdev, clone, pattern('c2', 2 * MiB), 10 * MiB);
      await cdev.trim(0, MiB);
      clone.fill(0, 0, MiB);
      await write(dev, model, pattern('o2', MiB), 5 * MiB);
      await assertReads(p, 'org-c', clone, 'the clone after its writes');
      await assertReads(p, 'org@base', atSnap, 'the origin snapshot under a written clone');
      await assertReads(p, 'org', model, 'the origin after its own writes');
      // A clone of the clone: two levels.
      pool.snapshot('org-c', 'cs');
      pool.clone('org-c', 'cs', 'org-cc');
      assert.deepEqual(pool.volume('org-cc').labels, {}, 'a clone given no labels has none');
      await assertReads(p, 'org-cc', clone, 'a clone of a clone');
      // What depends on what is refused, the rest goes in order.
      await refused(() => pool.deleteSnapshot('org', 'base'), 'CONFLICT', 'the origin of a clone');
      await refused(() => pool.deleteVolume('org'), 'CONFLICT', 'a volume with snapshots');
      pool.deleteVolume('org-cc');
      pool.deleteSnapshot('org-c', 'cs');
      pool.deleteVolume('org-c');
      if (p.ceph) assert.deepEqual(await p.ceph.children('org', 'base'), [], 'no children left');
      pool.deleteSnapshot('org', 'base');
      pool.deleteVolume('org');
      assert.equal(pool.hasVolume('org'), false);
      assert.equal(pool.hasVolume('org-c'), false);
      if (p.ceph) {
        const left = await p.ceph.images();
        for (const v of ['org', 'org-c', 'org-cc']) assert.ok(!left.includes(v), `image of ${v} removed`);
      }
    },
  },
  {
    name: 'revert brings back the snapshot, also under an open device, and keeps the snapshot',
    async run(p) {
      const pool = p.pool();
      pool.createVolume('rv', SIZE);
      const dev = pool.openDevice('rv');
      const model = Buffer.alloc(SIZE);
      await write(dev, model, pattern('r0', 5 * MiB), 2 * MiB);
      const snap = Buffer.from(model);
      pool.snapshot('rv', 'good');
      await write(dev, model, pattern('r1', 8 * MiB), 0);
      await dev.trim(12 * MiB, 4 * MiB);
      await dev.flush();
      pool.revert('rv', 'good');
      await assertReads(p, 'rv', snap, 'the reverted volume');
      // The device opened before the revert reads the reverted data too.
      assert.equal(sha(await readAll(dev, SIZE)), sha(snap), 'the open device after revert');
      assert.deepEqual(
        pool.listSnapshots('rv').map((s) => s.name),
        ['good'],
      );
      // And goes on from there.
      const after = Buffer.from(snap);
      await write(dev, after, pattern('r2', MiB), 15 * MiB);
      await assertReads(p, 'rv', after, 'written after the revert');
      await assertReads(p, 'rv@good', snap, 'the snapshot after the revert');
      await refused(() => pool.revert('rv', 'nope'), 'NOT_FOUND', 'revert to a missing snapshot');
    },
  },
  {
    name: 'grow keeps the data and reads zeroes beyond; shrink is refused',
    async run(p) {
      const pool = p.pool();
      pool.createVolume('gv', 8 * MiB);
      const dev = pool.openDevice('gv');
      const small = Buffer.alloc(8 * MiB);
      await write(dev, small, pattern('g', 8 * MiB), 0);
      pool.snapshot('gv', 'small');
      assert.equal(pool.resizeVolume('gv', SIZE).size, SIZE);
      assert.equal(pool.volume('gv').size, SIZE);
      const big = Buffer.concat([small, Buffer.alloc(SIZE - 8 * MiB)]);
      await assertReads(p, 'gv', big, 'the grown volume');
      const grown = pool.openDevice('gv');
      await write(grown, big, pattern('g2', MiB), SIZE - MiB);
      await assertReads(p, 'gv', big, 'written in the grown part');
      await assertReads(p, 'gv@small', small, 'the snapshot keeps its size');
      await refused(() => pool.resizeVolume('gv', 8 * MiB), 'INVALID_ARGUMENT', 'shrink');
    },
  },
  {
    name: 'rename keeps data, labels, snapshots and the volume key',
    async run(p) {
      const pool = p.pool();
      pool.createVolume('old', SIZE, { k: 'v' });
      const key = pool.volumeKey('old');
      const model = Buffer.alloc(SIZE);
      await write(pool.openDevice('old'), model, pattern('n', 3 * MiB), 7 * MiB);
      pool.snapshot('old', 'then');
      pool.setVolumeLabel('old', 'k2', 'w');
      pool.renameVolume('old', 'new');
      assert.equal(pool.hasVolume('old'), false);
      assert.equal(pool.volumeKey('new'), key);
      assert.deepEqual(pool.volumeLabels('new'), { k: 'v', k2: 'w' });
      assert.deepEqual(
        pool.listSnapshots('new').map((s) => s.name),
        ['then'],
      );
      await assertReads(p, 'new', model);
      await assertReads(p, 'new@then', model);
      pool.setVolumeLabel('new', 'k', undefined);
      assert.deepEqual(pool.volumeLabels('new'), { k2: 'w' });
      await refused(() => pool.volume('old'), 'NOT_FOUND', 'the old name');
      pool.createVolume('other', MiB);
      await refused(() => pool.renameVolume('new', 'other'), 'CONFLICT', 'rename onto a taken name');
    },
  },
  {
    name: 'volumes, snapshots, clones, labels and data survive a reopen of the pool',
    async run(p) {
      let pool = p.pool();
      pool.createVolume('keep', SIZE, { tier: 'gold' });
      const model = Buffer.alloc(SIZE);
      await write(pool.openDevice('keep'), model, pattern('k', 5 * MiB), 3 * MiB);
      const snap = Buffer.from(model);
      pool.snapshot('keep', 'k1');
      pool.clone('keep', 'k1', 'keep-c');
      await write(pool.openDevice('keep'), model, pattern('k2', MiB), 0);
      pool = p.reopen();
      assert.ok(pool.hasVolume('keep') && pool.hasVolume('keep-c'));
      assert.deepEqual(pool.volumeLabels('keep'), { tier: 'gold' });
      assert.equal(pool.volume('keep-c').origin, 'keep@k1');
      assert.deepEqual(
        pool.listSnapshots('keep').map((s) => s.name),
        ['k1'],
      );
      await assertReads(p, 'keep', model, 'the volume after reopen');
      await assertReads(p, 'keep@k1', snap, 'the snapshot after reopen');
      await assertReads(p, 'keep-c', snap, 'the clone after reopen');
    },
  },
  {
    name: 'bad requests are refused with the same codes and change nothing',
    async run(p) {
      const pool = p.pool();
      await refused(() => pool.createVolume('bad name', MiB), 'INVALID_ARGUMENT', 'a bad name');
      await refused(() => pool.createVolume('bv', 0), 'INVALID_ARGUMENT', 'size 0');
      await refused(() => pool.createVolume('bv', 1000), 'INVALID_ARGUMENT', 'not a multiple of 512');
      await refused(() => pool.volume('nope'), 'NOT_FOUND', 'no such volume');
      await refused(() => pool.snapshot('nope', 's'), 'NOT_FOUND', 'snapshot of no volume');
      pool.createVolume('bv', MiB);
      await refused(() => pool.createVolume('bv', MiB), 'CONFLICT', 'a taken name');
      await refused(() => pool.clone('bv', 'nope', 'bc'), 'NOT_FOUND', 'clone of a missing snapshot');
      assert.equal(pool.hasVolume('bc'), false);
      assert.deepEqual(pool.listSnapshots('bv'), []);
      assert.equal(pool.volume('bv').size, MiB);
    },
  },
];
