// A real test guest streams over two disks (one total order of durable writes across them); the
// prefix-consistency checker accepts the images it left (the whole stream), accepts images built
// by replaying a prefix of its reported writes, and rejects one that lost an earlier write and
// one with a torn slot. The honest mid-stream check (a replica taken while the guest writes)
// belongs to the replication end-to-end tests; this one pins the guest and the checker together.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { openSync, closeSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { tempDir } from '../support/tmp.js';
import {
  ensureGuest,
  launchGuest,
  makeBlankDisk,
  patternBytes,
  sha256,
  streamTarget,
  type Guest,
  type GuestStreamStarted,
  type GuestWrite,
} from '../support/guest.js';
import { checkPrefixConsistency, fileReader, type Writer } from '../support/write-order.js';

const MiB = 1024 * 1024;
const SEED = 21;
const STREAM = { disks: ['/dev/vda', '/dev/vdb'], len: 4096, start: MiB, slots: 4 };

describe('write order: a guest streaming over two disks', () => {
  const tmp = tempDir('haven-write-order-');
  let guest: Guest | undefined;
  let writes: GuestWrite[] = [];
  const images = ['a.img', 'b.img'].map((f) => join(tmp.path, f));

  before(async () => {
    ensureGuest();
    for (const image of images) await makeBlankDisk(image, 64 * MiB);
  });
  after(async () => {
    await guest?.kill();
    tmp.cleanup();
  });

  /** The checker's view of `paths` (vda, vdb) as the guest's writer with `list` as its writes. */
  async function check(paths: string[], list: readonly GuestWrite[] = writes) {
    const readers = paths.map((p) => fileReader(p));
    try {
      const w: Writer = {
        name: 'guest',
        seed: SEED,
        writes: list,
        disks: { '/dev/vda': readers[0]!.read, '/dev/vdb': readers[1]!.read },
      };
      return await checkPrefixConsistency([w]);
    } finally {
      for (const r of readers) r.close();
    }
  }

  /** Zeroed images of the guest's disks with the first `prefix` writes replayed, but not `skip`. */
  async function replay(name: string, prefix: number, skip?: number): Promise<string[]> {
    const paths = [`${name}-a.img`, `${name}-b.img`].map((f) => join(tmp.path, f));
    const fds: number[] = [];
    for (const p of paths) {
      await makeBlankDisk(p, 64 * MiB);
      fds.push(openSync(p, 'r+'));
    }
    try {
      writes.slice(0, prefix).forEach((w, i) => {
        if (i === skip) return;
        writeSync(
          fds[STREAM.disks.indexOf(w.disk)]!,
          patternBytes(SEED, w.seq, w.offset, w.length),
          0,
          w.length,
          w.offset,
        );
      });
    } finally {
      for (const fd of fds) closeSync(fd);
    }
    return paths;
  }

  it('streams a total order over both disks, reported write by write as the layout says (bad disk lists refused)', async () => {
    guest = launchGuest({ drives: images.map((path) => ({ path })) });
    await guest.ready();
    await assert.rejects(
      guest.run(`stream disk=vda,vda seed=${SEED} len=4K`),
      /disk \/dev\/vda is listed twice/,
    );
    await assert.rejects(guest.run(`stream disk=vda,vdz seed=${SEED} len=4K`), /no such disk: \/dev\/vdz/);
    guest.send(`stream disk=vda,vdb seed=${SEED} len=4K start=1M slots=${STREAM.slots} rate=0`);
    const started = (await guest.waitFor((r) => r.event === 'started', {
      what: 'the stream to start',
    })) as GuestStreamStarted;
    assert.deepEqual(started.disks, STREAM.disks);
    assert.equal(started.disk, '/dev/vda,/dev/vdb');
    const from = guest.results.indexOf(started);
    await guest.waitFor((r) => r.event === 'write', { from, what: 'the first write' });
    const t0 = Date.now();
    // 2 s, and enough writes to wrap the 8 slots twice (so later writes replace earlier ones).
    const wrapped = 2 * STREAM.slots * STREAM.disks.length;
    await guest.waitFor(
      (r) => r.event === 'write' && Date.now() - t0 >= 2000 && (r.seq as number) >= wrapped,
      {
        from,
        what: `2 s and ${wrapped} writes`,
      },
    );
    const stopped = await guest.run('stop');
    const done = stopped.results.find((r) => r.event === 'done' && r.cmd === 'stream');
    assert.ok(done, guest.console());
    await guest.poweroff();
    writes = guest.writes();
    assert.equal(done.writes, writes.length);
    writes.forEach((w, k) => {
      assert.equal(w.seq, k);
      assert.deepEqual({ disk: w.disk, offset: w.offset }, streamTarget(STREAM, k), `write ${k}`);
      assert.equal(w.sha256, sha256(patternBytes(SEED, w.seq, w.offset, w.length)), `bytes of write ${k}`);
    });
    console.log(`# ${writes.length} writes over two disks in ~2 s`);
  });

  it("the stopped guest's disks hold the whole stream: the cut is every write", async () => {
    assert.ok(writes.length > 0, 'needs the stream above');
    const r = await check(images);
    assert.ok(r.ok, r.ok ? '' : r.message);
    assert.deepEqual(r.cuts.guest, { prefix: writes.length, lastSeq: writes.length - 1 });
  });

  it('replayed prefixes of the reported writes are accepted with their cut', async () => {
    assert.ok(writes.length > 0, 'needs the stream above');
    const n = writes.length;
    for (const prefix of [0, 1, Math.floor(n / 3), n - 1, n]) {
      const r = await check(await replay(`p${prefix}`, prefix));
      assert.ok(r.ok, `prefix ${prefix}: ${r.ok ? '' : r.message}`);
      assert.equal(r.cuts.guest!.prefix, prefix);
    }
  });

  it('an image that lost an earlier write, or has a torn slot, is rejected naming it', async () => {
    assert.ok(writes.length > 0, 'needs the stream above');
    // The last write to vda's slot of write `lost` in the prefix is `lost` itself: nothing later hides its loss.
    const prefix = writes.length - 1;
    const lost = prefix - 3;
    const r = await check(await replay('lost', prefix, lost));
    assert.ok(!r.ok, 'a state without write lost accepted');
    assert.equal(r.violation.kind, 'order');
    assert.match(
      r.message,
      new RegExp(
        `the earlier write ${lost} of guest on ${writes[lost]!.disk} at ${writes[lost]!.offset} is missing`,
      ),
    );
    const torn = await replay('torn', prefix);
    const w = writes[prefix - 1]!;
    const fd = openSync(torn[STREAM.disks.indexOf(w.disk)]!, 'r+');
    writeSync(fd, Buffer.alloc(1024), 0, 1024, w.offset + 2048); // a write whose middle never landed
    closeSync(fd);
    const t = await check(torn);
    assert.ok(!t.ok && t.violation.kind === 'torn', t.ok ? 'torn slot accepted' : t.message);
    assert.deepEqual(t.violation.slot, { writer: 'guest', disk: w.disk, offset: w.offset, seq: w.seq });
  });
});
