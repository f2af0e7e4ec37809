import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { closeSync, openSync, statSync, writeSync } from 'node:fs';
import { open as openFile } from 'node:fs/promises';
import { join } from 'node:path';
import { tempDir } from '../../../test/support/tmp.js';
import { VolumeFamily } from './family.js';
import { HavenError } from '../../common/index.js';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

function readAll(f: VolumeFamily, id: string, offset: number, len: number): Buffer {
  const b = Buffer.alloc(len);
  f.read(id, b, offset);
  return b;
}

test('a new volume reads zeroes and round-trips writes of every alignment', (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  const f = VolumeFamily.create(join(dir.path, 'f'), { name: 'v', size: 8 * MiB });
  const v = f.find('v')!.id;
  assert.deepEqual(readAll(f, v, 0, 1 * MiB), Buffer.alloc(MiB));
  const a = randomBytes(200_000);
  f.write(v, a, 12_345); // spans clusters, unaligned both ends
  const b = randomBytes(4096);
  f.write(v, [b.subarray(0, 1000), b.subarray(1000)], 65536 * 3 - 2048); // vectored, across a boundary
  const expect = Buffer.alloc(8 * MiB);
  a.copy(expect, 12_345);
  b.copy(expect, 65536 * 3 - 2048);
  assert.equal(sha(readAll(f, v, 0, 8 * MiB)), sha(expect));
  f.close();
  const g = VolumeFamily.open(join(dir.path, 'f'));
  assert.equal(sha(readAll(g, v, 0, 8 * MiB)), sha(expect));
  g.close();
});

test('out-of-range and snapshot writes are refused with clear errors', (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  const f = VolumeFamily.create(join(dir.path, 'f'), { name: 'v', size: MiB });
  const v = f.find('v')!.id;
  assert.throws(
    () => f.write(v, Buffer.alloc(10), MiB - 5),
    (e: HavenError) => e.code === 'OUT_OF_RANGE',
  );
  assert.throws(
    () => f.read(v, Buffer.alloc(1), MiB),
    (e: HavenError) => e.code === 'OUT_OF_RANGE',
  );
  const s = f.snapshot(v, 's');
  assert.throws(
    () => f.write(s.id, Buffer.alloc(1), 0),
    (e: HavenError) => e.code === 'READ_ONLY',
  );
  assert.throws(() => VolumeFamily.create(join(dir.path, 'g'), { name: 'x', size: 1000 }), /multiple of 512/);
  assert.throws(() => f.resize(v, 512), /shrinking/);
  f.close();
});

test('snapshots keep their point in time; clones diverge without touching the origin; revert', (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  const f = VolumeFamily.create(join(dir.path, 'f'), { name: 'v', size: 4 * MiB });
  const v = f.find('v')!.id;
  const one = randomBytes(4 * MiB);
  f.write(v, one, 0);
  const s1 = f.snapshot(v, 's1');
  const two = randomBytes(100_000);
  f.write(v, two, 500_000);
  const afterTwo = Buffer.from(one);
  two.copy(afterTwo, 500_000);
  assert.equal(sha(readAll(f, s1.id, 0, 4 * MiB)), sha(one));
  assert.equal(sha(readAll(f, v, 0, 4 * MiB)), sha(afterTwo));

  const c = f.clone(s1.id, 'c');
  f.write(c.id, Buffer.alloc(MiB, 7), MiB);
  assert.equal(sha(readAll(f, s1.id, 0, 4 * MiB)), sha(one));
  assert.equal(sha(readAll(f, v, 0, 4 * MiB)), sha(afterTwo));
  const cExpect = Buffer.from(one);
  cExpect.fill(7, MiB, 2 * MiB);
  assert.equal(sha(readAll(f, c.id, 0, 4 * MiB)), sha(cExpect));

  assert.throws(
    () => f.delete(s1.id),
    (e: HavenError) => e.code === 'CONFLICT' && /clone c/.test(e.message),
  );
  f.revert(v, s1.id);
  assert.equal(sha(readAll(f, v, 0, 4 * MiB)), sha(one));
  f.close();
  const g = VolumeFamily.open(join(dir.path, 'f'));
  assert.equal(sha(readAll(g, v, 0, 4 * MiB)), sha(one));
  assert.equal(sha(readAll(g, c.id, 0, 4 * MiB)), sha(cExpect));
  assert.equal(sha(readAll(g, s1.id, 0, 4 * MiB)), sha(one));
  g.close();
});

test('a snapshot costs the same work for a 1 GiB and a 1 TiB volume', (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  const cost = (size: number, name: string) => {
    const f = VolumeFamily.create(join(dir.path, name), { name: 'v', size });
    const v = f.find('v')!.id;
    for (let i = 0; i < 16; i++) f.write(v, Buffer.alloc(4096, i + 1), (size / 16) * i);
    f.commit();
    const before = { ...f.stats };
    const heap0 = process.memoryUsage().heapUsed;
    f.snapshot(v, 's');
    const work = {
      pagesRead: f.stats.pagesRead - before.pagesRead,
      pagesWritten: f.stats.pagesWritten - before.pagesWritten,
      superblocksWritten: f.stats.superblocksWritten - before.superblocksWritten,
      clustersCopied: f.stats.clustersCopied - before.clustersCopied,
    };
    const heap = process.memoryUsage().heapUsed - heap0;
    f.close();
    return { work, heap };
  };
  const small = cost(GiB, 'small');
  const large = cost(1024 * GiB, 'large');
  assert.deepEqual(large.work, small.work);
  assert.equal(small.work.pagesWritten, 0);
  assert.ok(large.heap < 1 * MiB, `snapshot of 1 TiB used ${large.heap} bytes of heap`);
});

test('trim frees owned space; deleting a snapshot frees what only it held', (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  const f = VolumeFamily.create(join(dir.path, 'f'), { name: 'v', size: 16 * MiB });
  const v = f.find('v')!.id;
  f.write(v, randomBytes(8 * MiB), 0);
  f.commit();
  assert.equal(f.allocatedBytes(), 8 * MiB);
  const s = f.snapshot(v, 's');
  f.write(v, randomBytes(4 * MiB), 0); // copies 4 MiB: 12 MiB in use
  f.commit();
  assert.equal(f.allocatedBytes(), 12 * MiB);
  f.delete(s.id);
  assert.equal(f.allocatedBytes(), 8 * MiB);
  f.zero(v, 0, 8 * MiB);
  f.commit();
  assert.equal(f.allocatedBytes(), 0);
  assert.deepEqual(readAll(f, v, 0, 8 * MiB), Buffer.alloc(8 * MiB));
  assert.deepEqual(f.status(v, 0, 16 * MiB), [{ offset: 0, length: 16 * MiB, flags: 3 }]);
  f.close();
});

test('a machine crash before a flush loses only unflushed writes; the flushed state loads intact', (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  const f = VolumeFamily.create(join(dir.path, 'f'), { name: 'v', size: 4 * MiB });
  const v = f.find('v')!.id;
  const flushed = randomBytes(2 * MiB);
  f.write(v, flushed, 0);
  f.commit();
  f.snapshot(v, 's');
  f.write(v, randomBytes(3 * MiB), MiB); // never flushed
  f.abandon();
  // Another boot: the page cache (and the mapping journal in it) is gone, as after a power cut.
  const g = VolumeFamily.open(join(dir.path, 'f'), { bootId: 'another boot' });
  const got = readAll(g, v, 0, 2 * MiB);
  // Unflushed writes may or may not be there; clusters that were never committed are not mapped.
  assert.equal(sha(readAll(g, g.find('s')!.id, 0, 2 * MiB)), sha(flushed));
  assert.equal(got.length, 2 * MiB);
  assert.deepEqual(readAll(g, v, 2 * MiB, 2 * MiB), Buffer.alloc(2 * MiB));
  g.close();
});

test('a killed service loses no acknowledged write: the next open replays its mapping changes', (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  const path = join(dir.path, 'f');
  const f = VolumeFamily.create(path, { name: 'v', size: 16 * MiB });
  const v = f.find('v')!.id;
  const expect = randomBytes(16 * MiB);
  f.write(v, expect.subarray(0, 8 * MiB), 0);
  f.commit();
  f.snapshot(v, 's');
  const snap = sha(readAll(f, f.find('s')!.id, 0, 8 * MiB));
  // Unflushed from here: copy on write of shared clusters (partial and whole), fresh clusters,
  // a trim (unmapped clusters), zeroes written allocated, in-place writes to a cluster mapped
  // since the commit, and clusters that a commit freed and that are mapped again.
  f.write(v, expect.subarray(100, 5000), 100);
  f.write(v, expect.subarray(MiB, 2 * MiB), MiB);
  f.write(v, expect.subarray(9 * MiB + 7, 10 * MiB), 9 * MiB + 7);
  f.write(v, expect.subarray(9 * MiB + 7, 9 * MiB + 4096), 9 * MiB + 7);
  f.zero(v, 3 * MiB, MiB);
  expect.fill(0, 3 * MiB, 4 * MiB);
  f.zero(v, 4 * MiB, 64 * 1024, true);
  expect.fill(0, 4 * MiB, 4 * MiB + 64 * 1024);
  f.zero(v, 12 * MiB, 4 * MiB); // never written: stays unmapped
  expect.fill(0, 12 * MiB, 16 * MiB);
  f.write(v, expect.subarray(10 * MiB, 12 * MiB), 10 * MiB);
  f.commit();
  f.zero(v, 10 * MiB, 2 * MiB); // owned clusters: freed (and punched) by the next commit
  f.commit();
  f.write(v, expect.subarray(10 * MiB, 11 * MiB), 10 * MiB); // reuses them, unflushed
  expect.fill(0, 11 * MiB, 12 * MiB);
  expect.fill(0, 8 * MiB, 9 * MiB + 7);
  const allocated = f.allocatedBytes();
  f.abandon(); // kill -9: no commit, the page cache keeps the data and the journal
  const g = VolumeFamily.open(path);
  assert.equal(sha(readAll(g, v, 0, 16 * MiB)), sha(expect), 'every acknowledged write is there');
  assert.equal(sha(readAll(g, g.find('s')!.id, 0, 8 * MiB)), snap, 'the snapshot is as it was');
  assert.equal(g.allocatedBytes(), allocated);
  // Replayed durably: a power cut now (another boot, the journal ignored) keeps it all too.
  g.abandon();
  const h = VolumeFamily.open(path, { bootId: 'another boot' });
  assert.equal(sha(readAll(h, v, 0, 16 * MiB)), sha(expect));
  h.write(v, expect.subarray(0, MiB), 0);
  h.close();
  const k = VolumeFamily.open(path);
  assert.equal(sha(readAll(k, v, 0, 16 * MiB)), sha(expect));
  k.close();
});

test('a journal a later commit covers, or of another boot, is not replayed', (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  const path = join(dir.path, 'f');
  const f = VolumeFamily.create(path, { name: 'v', size: 4 * MiB });
  const v = f.find('v')!.id;
  const a = randomBytes(MiB);
  f.write(v, a, 0);
  f.commit();
  f.zero(v, 0, MiB); // unflushed trim, journalled
  f.abandon();
  // On another boot the trim is gone with the page cache: the committed data stays.
  const g = VolumeFamily.open(path, { bootId: 'another boot' });
  assert.equal(sha(readAll(g, v, 0, MiB)), sha(a));
  g.write(v, randomBytes(64 * 1024), 2 * MiB);
  g.commit();
  g.abandon();
  // The old journal went with that open; the newer commit is what loads.
  const h = VolumeFamily.open(path);
  assert.equal(sha(readAll(h, v, 0, MiB)), sha(a));
  h.close();
});

test('grows a volume across a tree-depth boundary and keeps its data', (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  const f = VolumeFamily.create(join(dir.path, 'f'), { name: 'v', size: 16 * MiB });
  const v = f.find('v')!.id;
  const d = randomBytes(MiB);
  f.write(v, d, 3 * MiB);
  f.resize(v, 64 * GiB);
  f.write(v, d, 64 * GiB - MiB);
  f.close();
  const g = VolumeFamily.open(join(dir.path, 'f'));
  assert.equal(sha(readAll(g, v, 3 * MiB, MiB)), sha(d));
  assert.equal(sha(readAll(g, v, 64 * GiB - MiB, MiB)), sha(d));
  g.close();
});

test('random operations agree with a simple model, across reopen and crash', (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  const path = join(dir.path, 'f');
  const size = 2 * MiB;
  let seed = 12345;
  const rnd = (n: number) => {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    return seed % n;
  };
  let f = VolumeFamily.create(path, { name: 'v0', size }, { clusterSize: 4096 });
  const model = new Map<string, Buffer>([['v0', Buffer.alloc(size)]]);
  let n = 0;
  const check = (why: string) => {
    for (const [name, expect] of model)
      assert.equal(sha(readAll(f, f.find(name)!.id, 0, size)), sha(expect), `${name} after ${why}`);
    assert.equal(f.memberCount, model.size);
  };
  const names = (kind: 'volume' | 'snapshot') => [...model.keys()].filter((k) => f.find(k)!.kind === kind);
  for (let step = 0; step < 400; step++) {
    const op = rnd(100);
    const vols = names('volume');
    const snaps = names('snapshot');
    if (op < 45 && vols.length) {
      const name = vols[rnd(vols.length)]!;
      const off = rnd(size);
      const len = Math.min(1 + rnd(40000), size - off);
      const data = randomBytes(len);
      f.write(f.find(name)!.id, data, off);
      const copy = Buffer.from(model.get(name)!);
      data.copy(copy, off);
      model.set(name, copy);
    } else if (op < 55 && vols.length) {
      const name = vols[rnd(vols.length)]!;
      const off = rnd(size);
      const len = Math.min(1 + rnd(100000), size - off);
      f.zero(f.find(name)!.id, off, len);
      const copy = Buffer.from(model.get(name)!);
      copy.fill(0, off, off + len);
      model.set(name, copy);
    } else if (op < 65 && vols.length) {
      const name = vols[rnd(vols.length)]!;
      const s = `s${n++}`;
      f.snapshot(f.find(name)!.id, s);
      model.set(s, model.get(name)!);
    } else if (op < 72 && snaps.length) {
      const s = snaps[rnd(snaps.length)]!;
      const c = `c${n++}`;
      f.clone(f.find(s)!.id, c);
      model.set(c, model.get(s)!);
    } else if (op < 77 && snaps.length) {
      const s = f.find(snaps[rnd(snaps.length)]!)!;
      const origin = [...model.keys()].find((k) => f.find(k)!.id === s.parent);
      if (origin) {
        f.revert(s.parent!, s.id);
        model.set(origin, model.get(s.name)!);
      }
    } else if (op < 85 && model.size > 1) {
      const all = [...model.keys()];
      const victim = f.find(all[rnd(all.length)]!)!;
      const hasDependents = f.list().some((m) => m.parent === victim.id);
      if (hasDependents)
        assert.throws(
          () => f.delete(victim.id),
          (e: HavenError) => e.code === 'CONFLICT',
        );
      else {
        f.delete(victim.id);
        model.delete(victim.name);
      }
    } else if (op < 92) {
      f.close();
      f = VolumeFamily.open(path);
    } else {
      f.commit();
      f.abandon();
      f = VolumeFamily.open(path);
    }
    check(`step ${step} (op ${op})`);
  }
  f.close();
});

/**
 * Holds every thread of libuv's pool (an open of a FIFO blocks until a writer comes), so that
 * work queued meanwhile runs only after release(): reads off the event loop, deterministically late.
 */
async function holdThreadPool(t: TestContext): Promise<{ release: () => Promise<void> }> {
  // Its own folder, removed only after the release (the test's may go first).
  const own = tempDir('haven-fifo-');
  const fifo = join(own.path, 'hold.fifo');
  execFileSync('mkfifo', [fifo]);
  const threads = Number(process.env.UV_THREADPOOL_SIZE) || 4;
  const held = Array.from({ length: threads }, () => openFile(fifo, 'r'));
  // Until every thread sits in its open, the queue would not be behind them.
  await new Promise((r) => setTimeout(r, 50));
  let released: Promise<void> | undefined;
  const release = () =>
    (released ??= (async () => {
      const w = openSync(fifo, 'w');
      for (const h of await Promise.all(held)) await h.close();
      closeSync(w);
    })());
  // Also when an assertion fails while the pool is held: the process could not end otherwise.
  t.after(async () => {
    await release();
    own.cleanup();
  });
  return { release };
}

/** A family whose volume `v` held `a` (4 MiB of random data) when snapshot `s` was taken. */
function snapshotOfRandom(dir: string, size: number) {
  const f = VolumeFamily.create(join(dir, 'f'), { name: 'v', size });
  const v = f.find('v')!.id;
  const a = randomBytes(4 * MiB);
  f.write(v, a, 0);
  return { f, v, a, s: f.snapshot(v, 's') };
}

test('readAsync: a snapshot read off the event loop gets its own data even when the snapshot is deleted and its clusters wanted meanwhile', async (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  const { f, v, a, s } = snapshotOfRandom(dir.path, 16 * MiB);
  f.write(v, randomBytes(4 * MiB), 0); // v moves on: s alone holds a's clusters
  f.commit();
  // Same bytes both ways, holes included.
  const sync = readAll(f, s.id, 0, 8 * MiB);
  const viaPool = Buffer.alloc(8 * MiB);
  await f.readAsync(s.id, viaPool, 0);
  assert.equal(sha(viaPool), sha(sync));
  // The race: the read's mapping is taken now, its data read only after s is gone and new writes
  // wanted clusters (the lowest free first: s's).
  const pool = await holdThreadPool(t);
  const got = Buffer.alloc(4 * MiB);
  const reading = f.readAsync(s.id, got, 0);
  f.delete(s.id);
  f.commit();
  const c = randomBytes(4 * MiB);
  f.write(v, c, 8 * MiB);
  f.commit();
  assert.equal(f.allocatedBytes(), 8 * MiB, "s's clusters are not counted while they wait");
  await pool.release();
  await reading;
  assert.equal(sha(got), sha(a), 'the read saw what s held, not the newer write');
  assert.equal(sha(readAll(f, v, 8 * MiB, 4 * MiB)), sha(c));
  // Once the read ended, s's clusters are free again: the next writes reuse them (the file does not grow).
  const size = statSync(join(dir.path, 'f', 'data')).size;
  f.write(v, randomBytes(4 * MiB), 12 * MiB);
  f.commit();
  assert.equal(statSync(join(dir.path, 'f', 'data')).size, size, 'the freed clusters were reused');
  f.close();
});

test('readAsync: closing the family while a read is on the thread pool keeps the data file open until it ends', async (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  const { f, a, s } = snapshotOfRandom(dir.path, 4 * MiB);
  const pool = await holdThreadPool(t);
  const got = Buffer.alloc(4 * MiB);
  const reading = f.readAsync(s.id, got, 0);
  f.close();
  // A file opened now would get the closed descriptor's number, were it closed.
  const other = openSync(join(dir.path, 'other'), 'w+');
  writeSync(other, Buffer.alloc(4 * MiB, 7));
  await pool.release();
  await reading;
  closeSync(other);
  assert.equal(sha(got), sha(a));
});
