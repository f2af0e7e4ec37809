// The prefix-consistency checker (test/support/write-order.ts) on disks built in memory by
// replaying the test guest's stream layout: prefixes are accepted with their cut, a later write
// without an earlier one, a torn slot or foreign bytes are rejected, naming the slot.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { patternBytes, streamTarget } from './support/guest.js';
import { checkPrefixConsistency, type OrderedWrite, type Writer } from './support/write-order.js';

const KiB = 1024;
const DISKS = ['/dev/vda', '/dev/vdb'];
const LEN = 4 * KiB;

/** The writes of a stream over `disks` with `slots` slots of LEN at 64 KiB, seqs from `first`. */
function streamWrites(count: number, slots: number, disks = DISKS, first = 0): OrderedWrite[] {
  const stream = { disks, len: LEN, start: 64 * KiB, slots };
  return Array.from({ length: count }, (_, k) => ({
    seq: first + k,
    length: LEN,
    ...streamTarget(stream, k),
  }));
}

/** In-memory disks of 1 MiB each with a writer's first `prefix` writes applied. */
function replay(seed: number, writes: readonly OrderedWrite[], prefix: number, disks = DISKS) {
  const images: Record<string, Buffer> = Object.fromEntries(disks.map((d) => [d, Buffer.alloc(1024 * KiB)]));
  for (const w of writes.slice(0, prefix))
    patternBytes(seed, w.seq, w.offset, w.length).copy(images[w.disk]!, w.offset);
  return images;
}

function writer(
  name: string,
  seed: number,
  writes: readonly OrderedWrite[],
  images: Record<string, Buffer>,
): Writer {
  const disks = Object.fromEntries(
    Object.entries(images).map(([d, img]) => [
      d,
      (buf: Uint8Array, offset: number) => void buf.set(img.subarray(offset, offset + buf.length)),
    ]),
  );
  return { name, seed, writes, disks };
}

describe('write order: prefix consistency', () => {
  it('accepts every prefix of a stream over two disks, empty and full ones and wrapped slots, with its cut', async () => {
    const writes = streamWrites(40, 6); // 12 slots in all: the stream wraps over them three times
    for (let prefix = 0; prefix <= writes.length; prefix++) {
      const r = await checkPrefixConsistency([writer('g', 3, writes, replay(3, writes, prefix))]);
      assert.ok(r.ok, `prefix ${prefix}: ${r.ok ? '' : r.message}`);
      assert.deepEqual(r.cuts.g, { prefix, lastSeq: prefix === 0 ? undefined : prefix - 1 });
    }
  });

  it('finds each writer its own cut; a cross-writer constraint can reject the pair', async () => {
    const a = streamWrites(30, 8);
    const b = streamWrites(30, 8, DISKS, 100);
    const writers = [writer('a', 1, a, replay(1, a, 7)), writer('b', 2, b, replay(2, b, 19))];
    const r = await checkPrefixConsistency(writers);
    assert.ok(r.ok, r.ok ? '' : r.message);
    assert.deepEqual(r.cuts, { a: { prefix: 7, lastSeq: 6 }, b: { prefix: 19, lastSeq: 118 } });
    const fine = await checkPrefixConsistency(writers, [
      { before: { writer: 'a', seq: 5 }, after: { writer: 'b', seq: 110 } },
    ]);
    assert.ok(fine.ok);
    const broken = await checkPrefixConsistency(writers, [
      { before: { writer: 'a', seq: 10 }, after: { writer: 'b', seq: 110 } },
    ]);
    assert.ok(!broken.ok);
    assert.equal(broken.violation.kind, 'constraint');
    assert.match(broken.message, /write 110 of b is there, but write 10 of a/);
  });

  it('rejects a later write without an earlier one on the other disk, naming both', async () => {
    const writes = streamWrites(40, 6);
    const images = replay(5, writes, 29);
    // Write 27 (vdb, third round of its slot) is lost: its slot still holds write 15, while 28 (vda) is there.
    const lost = writes[27]!;
    assert.equal(lost.disk, '/dev/vdb');
    patternBytes(5, 15, lost.offset, LEN).copy(images[lost.disk]!, lost.offset);
    const r = await checkPrefixConsistency([writer('g', 5, writes, images)]);
    assert.ok(!r.ok);
    assert.deepEqual(r.violation, {
      kind: 'order',
      present: { writer: 'g', disk: '/dev/vda', offset: writes[28]!.offset, seq: 28 },
      missing: { writer: 'g', disk: '/dev/vdb', offset: lost.offset, seq: 27 },
    });
    // A lost first write leaves its slot zero (initial): write 1 on vdb is there without write 0 on vda.
    const first = replay(5, writes, 2);
    first['/dev/vda']!.fill(0);
    const r0 = await checkPrefixConsistency([writer('g', 5, writes, first)]);
    assert.ok(!r0.ok);
    assert.equal(r0.violation.kind, 'order');
    assert.match(
      r0.message,
      /write 1 of g on \/dev\/vdb at 65536 is there, but the earlier write 0 of g on \/dev\/vda at 65536 is missing/,
    );
  });

  it('rejects torn slots (new head, old tail; old head, new tail) and foreign bytes', async () => {
    const writes = streamWrites(20, 4);
    const w = writes[12]!; // overwrites write 4 in its slot
    const newHead = replay(8, writes, 12);
    patternBytes(8, 12, w.offset, 2 * KiB).copy(newHead[w.disk]!, w.offset);
    const r1 = await checkPrefixConsistency([writer('g', 8, writes, newHead)]);
    assert.ok(!r1.ok);
    assert.deepEqual(r1.violation, {
      kind: 'torn',
      slot: { writer: 'g', disk: w.disk, offset: w.offset, seq: 12 },
      firstLine: `haven seed=8 seq=12 off=${w.offset}`,
    });
    const newTail = replay(8, writes, 12);
    patternBytes(8, 12, w.offset, LEN).copy(newTail[w.disk]!, w.offset + LEN - 512, LEN - 512);
    const r2 = await checkPrefixConsistency([writer('g', 8, writes, newTail)]);
    assert.ok(!r2.ok);
    assert.equal(r2.violation.kind, 'torn');
    assert.match(r2.message, /starts as write 4 but is not all of it/);
    // The first write half done on a zero disk: torn as well (it starts as the slot's initial content).
    const half = replay(8, writes, 0);
    patternBytes(8, 0, writes[0]!.offset, LEN).copy(half[writes[0]!.disk]!, writes[0]!.offset + 2048, 2048);
    const r3 = await checkPrefixConsistency([writer('g', 8, writes, half)]);
    assert.ok(!r3.ok && r3.violation.kind === 'torn', r3.ok ? '' : r3.message);
    const foreign = replay(8, writes, 12);
    patternBytes(9, 12, w.offset, LEN).copy(foreign[w.disk]!, w.offset); // another seed's write
    const r4 = await checkPrefixConsistency([writer('g', 8, writes, foreign)]);
    assert.ok(!r4.ok);
    assert.equal(r4.violation.kind, 'foreign');
    assert.match(
      r4.message,
      /holds none of its writes nor its initial content \(first line "haven seed=9 seq=12/,
    );
  });

  it('takes the initial content from a reader when the disks were not zero before the stream', async () => {
    const writes = streamWrites(10, 4);
    const before = replay(0, streamWrites(8, 4, DISKS, 500), 8); // what an earlier stream left there
    const images = Object.fromEntries(Object.entries(before).map(([d, b]) => [d, Buffer.from(b)]));
    for (const x of writes.slice(0, 3)) patternBytes(4, x.seq, x.offset, LEN).copy(images[x.disk]!, x.offset);
    const initial = writer('init', 0, [], before).disks;
    const r = await checkPrefixConsistency([{ ...writer('g', 4, writes, images), initial }]);
    assert.ok(r.ok, r.ok ? '' : r.message);
    assert.equal(r.cuts.g!.prefix, 3);
    const zeros = await checkPrefixConsistency([writer('g', 4, writes, images)]);
    assert.ok(!zeros.ok && zeros.violation.kind === 'foreign', 'without it, the earlier stream is foreign');
  });

  it('refuses write lists it cannot judge, naming the writer', async () => {
    const images = replay(1, [], 0);
    const overlap: OrderedWrite[] = [
      { seq: 0, disk: '/dev/vda', offset: 0, length: 8192 },
      { seq: 1, disk: '/dev/vda', offset: 4096, length: 8192 },
    ];
    await assert.rejects(
      checkPrefixConsistency([writer('g', 1, overlap, images)]),
      /writer g: slots 0 and 4096 of \/dev\/vda overlap/,
    );
    const unknown: OrderedWrite[] = [{ seq: 0, disk: '/dev/vdz', offset: 0, length: 4096 }];
    await assert.rejects(
      checkPrefixConsistency([writer('g', 1, unknown, images)]),
      /write 0 is to \/dev\/vdz, which has no reader/,
    );
  });

  it('checks a few thousand slots on 256 MiB disks quickly (reads only the slots)', async () => {
    const disks = ['/dev/vdb', '/dev/vdc'];
    // Zero-filled and mostly never touched: only the slots' pages are ever written or read.
    const big: Record<string, Buffer> = Object.fromEntries(
      disks.map((d) => [d, Buffer.alloc(256 * 1024 * KiB)]),
    );
    const stream = { disks, len: LEN, start: 128 * 1024 * KiB, slots: 2048 };
    const writes = Array.from({ length: 6000 }, (_, k) => ({
      seq: k,
      length: LEN,
      ...streamTarget(stream, k),
    }));
    for (const w of writes.slice(0, 5000))
      patternBytes(2, w.seq, w.offset, w.length).copy(big[w.disk]!, w.offset);
    const t0 = performance.now();
    const r = await checkPrefixConsistency([writer('g', 2, writes, big)]);
    const ms = performance.now() - t0;
    assert.ok(r.ok, r.ok ? '' : r.message);
    assert.equal(r.cuts.g!.prefix, 5000);
    console.log(`# 4096 slots of 4 KiB (6000 writes) on two 256 MiB disks checked in ${ms.toFixed(0)} ms`);
    assert.ok(ms < 10_000, `took ${ms} ms`);
  });
});
