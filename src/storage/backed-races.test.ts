// A volume over a base while absorbBase (finalize) runs beside the guest's writes, at the awkward
// moments: a write to a cluster whose fill is reading it from a slow base, a partial write whose
// copy on write is still reading when the fill comes by, a write in flight at the switch; and
// random interleavings of all of it, checked against a model. The base is a real raw file behind
// a gate that holds reads until the test lets them go.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { closeSync, openSync, truncateSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { setImmediate as turn } from 'node:timers/promises';
import { openRawFile, type BlockDevice, type Extent } from '../block/index.js';
import { tempDir } from '../../test/support/tmp.js';
import { StorageService } from './service.js';

const KiB = 1024;
const CS = 64 * KiB; // the pool's cluster size
const SIZE = 64 * CS;

/** A base whose reads wait, while held, until released (in any order the test likes). */
class GatedBase implements BlockDevice {
  held = false;
  /** Answer block status a turn later (as a base over NBD does). */
  asyncStatus = false;
  readonly waiting: { offset: number; length: number; go: () => void }[] = [];
  constructor(private readonly inner: BlockDevice) {}
  get size() {
    return this.inner.size;
  }
  readonly readOnly = true;
  get blockSizes() {
    return this.inner.blockSizes;
  }
  readonly flushCoversAll = true;
  async read(buf: Uint8Array, offset: number): Promise<void> {
    if (this.held) await new Promise<void>((go) => this.waiting.push({ offset, length: buf.length, go }));
    await this.inner.read(buf, offset);
  }
  /** Lets the held reads covering `offset` go (all of them without an offset). */
  release(offset?: number): void {
    for (const w of [...this.waiting])
      if (offset === undefined || (w.offset <= offset && offset < w.offset + w.length)) {
        this.waiting.splice(this.waiting.indexOf(w), 1);
        w.go();
      }
  }
  /** Resolves once a read covering `offset` is held (event-driven, with a deadline). */
  async heldAt(offset: number): Promise<void> {
    const deadline = Date.now() + 10_000;
    while (!this.waiting.some((w) => w.offset <= offset && offset < w.offset + w.length)) {
      assert.ok(Date.now() < deadline, `no read of the base at ${offset} was held`);
      await turn();
    }
  }
  write(): never {
    throw new Error('the base is never written');
  }
  writeZeroes(): never {
    throw new Error('the base is never written');
  }
  trim(): never {
    throw new Error('the base is never written');
  }
  flush(): void {}
  blockStatus(offset: number, length: number): Extent[] | Promise<Extent[]> {
    const list = this.inner.blockStatus(offset, length);
    return this.asyncStatus ? turn().then(() => list) : list;
  }
  close() {
    return this.inner.close();
  }
}

/** A service with volume "r" over a gated base holding data in its first half (clusters 0-31). */
function setup(t: { after: (fn: () => void) => void }) {
  const dir = tempDir();
  const svc = StorageService.open(dir.path);
  svc.createPool('p');
  const baseData = Buffer.alloc(SIZE);
  randomBytes(SIZE / 2).copy(baseData, 0);
  const basePath = join(dir.path, 'base.raw');
  writeFileSync(basePath, '');
  truncateSync(basePath, SIZE);
  const fd = openSync(basePath, 'r+');
  writeSync(fd, baseData, 0, SIZE / 2, 0);
  closeSync(fd);
  const base = new GatedBase(openRawFile(basePath, { readOnly: true }));
  svc.createVolume('r', SIZE, 'p');
  svc.attachBase('r', base);
  const dev = svc.openDevice('r');
  t.after(() => {
    svc.close();
    dir.cleanup();
  });
  const expect = Buffer.from(baseData);
  const write = (data: Buffer, offset: number) => {
    data.copy(expect, offset);
    return Promise.resolve(dev.write(data, offset));
  };
  /** The volume alone (the base detached) holds exactly what the model says. */
  const check = async (what: string) => {
    assert.equal(svc.baseOf('r'), undefined, 'the base is detached');
    const got = Buffer.alloc(SIZE);
    await svc.openDevice('r').read(got, 0);
    for (let c = 0; c < SIZE / CS; c++)
      assert.ok(
        got.subarray(c * CS, (c + 1) * CS).equals(expect.subarray(c * CS, (c + 1) * CS)),
        `${what}: cluster ${c} differs`,
      );
  };
  return { svc, base, dev, write, check, expect };
}

test('a partial write to a cluster the fill is reading from the base waits, and both land', async (t) => {
  const { svc, base, write, check } = setup(t);
  base.held = true;
  const absorbing = svc.absorbBase('r');
  await base.heldAt(0); // the fill reads cluster 0
  const w = write(randomBytes(4 * KiB), 5 * KiB);
  const w2 = write(randomBytes(CS), CS * 3); // a whole cluster the fill has not reached yet
  await turn();
  base.held = false;
  base.release();
  await Promise.all([w, w2, absorbing]);
  await check('after the fill');
});

test('a whole-cluster write while the fill reads that cluster is not overwritten by the fill', async (t) => {
  const { svc, base, write, check } = setup(t);
  base.held = true;
  const absorbing = svc.absorbBase('r');
  await base.heldAt(0);
  const w = write(randomBytes(CS), 0);
  await turn();
  base.held = false;
  base.release();
  await Promise.all([w, absorbing]);
  await check('after the fill');
});

test("a copy on write still reading when the fill comes by: one copy, the guest's bytes win", async (t) => {
  const { svc, base, write, check } = setup(t);
  base.held = true;
  const w1 = write(randomBytes(100), 7 * CS + 10); // copy on write of cluster 7, held
  await base.heldAt(7 * CS);
  const w2 = write(randomBytes(100), 7 * CS + 50); // overlaps: the tap orders it after w1
  const w3 = write(randomBytes(CS - 200), 7 * CS + 200); // same cluster, not overlapping
  const absorbing = svc.absorbBase('r');
  await turn();
  base.held = false;
  base.release();
  await Promise.all([w1, w2, w3, absorbing]);
  await check('after the fill');
  assert.equal(svc.baseOf('r'), undefined);
});

test('a write waiting for its copy on write at the switch: finalize waits for it, nothing is lost', async (t) => {
  const { svc, base, write, check } = setup(t);
  // Cluster 40 holds only zeroes in the base: the fill never reads it, a partial write does.
  base.held = true;
  const w = write(randomBytes(4 * KiB), 40 * CS + 4 * KiB);
  await base.heldAt(40 * CS);
  base.held = false;
  let settled = false;
  const absorbing = svc.absorbBase('r').finally(() => (settled = true));
  // The fill copies clusters 0-31 and comes to the switch meanwhile; the held copy on write is
  // let go only once the fill is done, and absorbBase has had many turns to switch.
  for (let i = 0; i < 10_000 && svc.baseOf('r')?.filledBytes !== 32 * CS; i++) await turn();
  for (let i = 0; i < 200 && !settled; i++) await turn();
  base.release();
  await Promise.all([w, absorbing]);
  await check('after the switch');
});

test('random interleavings of guest writes, zeroes and slow base reads with finalize: the volume is the model', async (t) => {
  let seed = 20261203;
  const rnd = (n: number) => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff), (seed >>> 8) % n);
  for (let round = 0; round < 40; round++) {
    await t.test(`round ${round}`, async (tt) => {
      const { svc, base, dev, check, expect } = setup(tt);
      base.held = rnd(2) === 0;
      base.asyncStatus = rnd(2) === 0;
      // Overlapping writes in flight too: the tap applies them in the order they came.
      const ops: Promise<void>[] = [];
      const guest = (k: number) => {
        for (let i = 0; i < k; i++) {
          const cluster = rnd(SIZE / CS);
          const kind = rnd(4);
          const len = kind === 0 ? CS : 1 + rnd(kind === 1 ? 512 : 3 * CS);
          const offset = Math.min(cluster * CS + (kind === 0 ? 0 : rnd(CS)), SIZE - len);
          let p: Promise<void>;
          if (rnd(5) === 0) {
            expect.fill(0, offset, offset + len);
            p = Promise.resolve(dev.writeZeroes(offset, len));
          } else {
            const data = randomBytes(len);
            data.copy(expect, offset);
            p = Promise.resolve(dev.write(data, offset));
          }
          ops.push(p);
        }
      };
      guest(1 + rnd(6));
      const absorbing = svc.absorbBase('r');
      // Meanwhile: more writes, and held base reads let go in random order.
      for (let step = 0; step < 30; step++) {
        await turn();
        if (rnd(3) === 0) guest(1 + rnd(3));
        if (base.waiting.length && rnd(2) === 0) base.release(base.waiting[rnd(base.waiting.length)]!.offset);
        if (rnd(8) === 0) base.held = !base.held;
      }
      base.held = false;
      base.release();
      const pending = setInterval(() => base.release(), 1); // late copies on write: let them go
      try {
        await Promise.all([...ops, absorbing]);
      } finally {
        clearInterval(pending);
      }
      await check(`round ${round}`);
    });
  }
});
