// The source replication journal (decision 0012) on real files: order and content across
// segments and reopenings, a torn tail cut off, damage named, the bound, trimming, and kill -9 of
// a process appending at full speed losing no acknowledged record.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { appendFileSync, readdirSync, statSync, truncateSync, openSync, writeSync, closeSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { start } from '../../../test/support/proc.js';
import { tempDir } from '../../../test/support/tmp.js';
import { RECORD_HEADER, RecordKind } from './journal-format.js';
import { ReplicationJournal } from './journal.js';

/** The bytes of record `n`: recognisable, of a length that varies with n. */
function payload(n: number): Buffer {
  const b = Buffer.alloc(512 + ((n * 7919) % 6000));
  for (let i = 0; i + 4 <= b.length; i += 4) b.writeUInt32LE((n * 2654435761 + i) >>> 0, i);
  return b;
}
const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

function readAll(j: ReplicationJournal, from = j.firstSeq, scratch = Buffer.alloc(64 * 1024)) {
  const out: { seq: number; kind: number; volume: number; offset: number; length: number; hash: string }[] =
    [];
  for (let seq = from; ;) {
    const batch = j.read(seq, scratch);
    if (!batch.length) return out;
    for (const e of batch) {
      out.push({
        seq: e.seq,
        kind: e.kind,
        volume: e.volume,
        offset: e.offset,
        length: e.length,
        hash: sha(e.payload),
      });
      seq = e.seq + 1;
    }
  }
}

test('records come back in order and intact across segments and a reopening; a large one alone', async (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  let j = ReplicationJournal.open(dir.path, { segmentBytes: 32 * 1024 });
  const want: string[] = [];
  for (let n = 0; n < 200; n++) {
    const p = payload(n);
    // The payload in two parts, as a write's buffers may come.
    const seq = j.append(RecordKind.write, n % 3, n * 65536 * 4096, p.length, [
      p.subarray(0, 100),
      p.subarray(100),
    ]);
    assert.equal(seq, n + 1);
    want.push(sha(p));
  }
  // An offset past 2^32 and one past 2^53 / 4 survive the 64-bit field.
  j.append(RecordKind.zero, 7, 2 ** 50 + 4096, 1 << 30);
  const big = Buffer.alloc(200 * 1024, 9);
  j.append(RecordKind.resync, 1, 0, big.length, [big]);
  await j.sync();
  await j.close();
  assert.ok(readdirSync(dir.path).length > 20, 'many segments');

  j = ReplicationJournal.open(dir.path, { segmentBytes: 32 * 1024 });
  t.after(() => j.close());
  assert.equal(j.firstSeq, 1);
  assert.equal(j.nextSeq, 203);
  const got = readAll(j);
  assert.deepEqual(
    got.slice(0, 200).map((r) => r.hash),
    want,
  );
  assert.deepEqual(
    got.map((r) => r.seq),
    Array.from({ length: 202 }, (_, i) => i + 1),
  );
  assert.deepEqual(got[5], {
    seq: 6,
    kind: RecordKind.write,
    volume: 2,
    offset: 5 * 65536 * 4096,
    length: payload(5).length,
    hash: want[5],
  });
  assert.deepEqual(
    { kind: got[200]!.kind, volume: got[200]!.volume, offset: got[200]!.offset, length: got[200]!.length },
    { kind: RecordKind.zero, volume: 7, offset: 2 ** 50 + 4096, length: 1 << 30 },
  );
  // Larger than the 64 KiB scratch: read on its own, whole.
  assert.equal(got[201]!.hash, sha(big));
  // Reading from the middle, and appending on after the reopening.
  assert.equal(readAll(j, 150)[0]!.seq, 150);
  assert.equal(j.append(RecordKind.checkpoint, 0, 0, 0, [Buffer.from('{"time":1}')]), 203);
});

test('a torn tail is cut off at the last whole record; appends go on from there', async (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  let j = ReplicationJournal.open(dir.path);
  for (let n = 0; n < 10; n++) j.append(RecordKind.write, 0, n * 4096, 4096, [payload(n)]);
  await j.close();
  const seg = join(dir.path, readdirSync(dir.path)[0]!);
  const size = statSync(seg).size;
  // The last record half written, then garbage after a whole one: both cases of a crash.
  truncateSync(seg, size - 100);
  j = ReplicationJournal.open(dir.path);
  assert.equal(j.nextSeq, 10, 'record 10 was torn: gone');
  assert.equal(readAll(j).length, 9);
  await j.close();
  appendFileSync(seg, Buffer.alloc(3000, 0xab));
  j = ReplicationJournal.open(dir.path);
  t.after(() => j.close());
  assert.equal(j.nextSeq, 10);
  assert.equal(j.append(RecordKind.write, 0, 0, 4096, [payload(99)]), 10);
  const all = readAll(j);
  assert.equal(all.length, 10);
  assert.equal(all[9]!.hash, sha(payload(99)));
});

test('a damaged record before the tail is CORRUPT, naming the segment; a missing segment too', async (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  const j = ReplicationJournal.open(dir.path, { segmentBytes: 16 * 1024 });
  for (let n = 0; n < 40; n++) j.append(RecordKind.write, 0, n * 4096, 4096, [payload(n)]);
  await j.close();
  const segs = readdirSync(dir.path).sort();
  const first = join(dir.path, segs[0]!);
  const fd = openSync(first, 'r+');
  writeSync(fd, Buffer.from([0x55]), 0, 1, RECORD_HEADER + 10); // a payload byte of record 1
  closeSync(fd);
  assert.throws(
    () => ReplicationJournal.open(dir.path, { segmentBytes: 16 * 1024 }),
    (e: Error & { code?: string }) =>
      e.code === 'CORRUPT' && e.message.includes(segs[0]!) && /sequence 1\b/.test(e.message),
  );
  // A segment gone from the middle: records are missing, and the journal says so.
  const fd2 = openSync(first, 'r+');
  writeSync(fd2, Buffer.from([payload(0)[10]!]), 0, 1, RECORD_HEADER + 10);
  closeSync(fd2);
  ReplicationJournal.open(dir.path, { segmentBytes: 16 * 1024 }).close();
  const { rmSync } = await import('node:fs');
  rmSync(join(dir.path, segs[1]!));
  assert.throws(
    () => ReplicationJournal.open(dir.path, { segmentBytes: 16 * 1024 }),
    (e: Error & { code?: string }) => e.code === 'CORRUPT' && e.message.includes('records are missing'),
  );
});

test('the bound refuses an append whole; trimming what the target holds makes room; trimmed records are NOT_FOUND', async (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  const rec = RECORD_HEADER + 4096;
  const j = ReplicationJournal.open(dir.path, { segmentBytes: 4 * rec, maxBytes: 10 * rec });
  t.after(() => j.close());
  for (let n = 0; n < 10; n++)
    assert.equal(j.append(RecordKind.write, 0, 0, 4096, [Buffer.alloc(4096, n)]), n + 1);
  const before = j.bytes;
  assert.equal(j.append(RecordKind.write, 0, 0, 4096, [Buffer.alloc(4096)]), undefined, 'full');
  assert.equal(j.bytes, before, 'nothing written');
  // Records 1-4 are one segment, 5-8 the next: the target holds up to 6, so only 1-4 can go.
  j.trim(7);
  assert.equal(j.firstSeq, 5);
  assert.equal(j.bytes, 6 * rec);
  assert.equal(j.append(RecordKind.write, 0, 0, 4096, [Buffer.alloc(4096)]), 11);
  assert.throws(
    () => j.read(3, Buffer.alloc(rec)),
    (e: Error & { code?: string }) => e.code === 'NOT_FOUND',
  );
  assert.deepEqual(
    readAll(j).map((r) => r.seq),
    [5, 6, 7, 8, 9, 10, 11],
  );
});

// A child appends records as fast as it can and reports each sequence once append returned (what
// a guest's acknowledgement waits for); it is killed with SIGKILL at a random moment. Every
// reported record must be there, intact, in order: 5 rounds on one journal.
test('kill -9 of a process appending: no record it was told had been appended is lost or damaged', async (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  const journalJs = fileURLToPath(new URL('./journal.js', import.meta.url));
  const formatJs = fileURLToPath(new URL('./journal-format.js', import.meta.url));
  const child = `
    import { ReplicationJournal } from ${JSON.stringify(journalJs)};
    import { RecordKind } from ${JSON.stringify(formatJs)};
    const j = ReplicationJournal.open(${JSON.stringify(dir.path)}, { segmentBytes: 256 * 1024 });
    const p = Buffer.alloc(3000);
    for (let n = 0; ; n++) {
      const seq = j.nextSeq;
      p.fill(seq & 0xff);
      j.append(RecordKind.write, seq % 4, seq * 512, p.length, [p]);
      process.stdout.write(seq + '\\n');
      if (n % 64 === 0) await new Promise((r) => setImmediate(r));
    }`;
  let acknowledged = 0;
  let seed = 42;
  for (let round = 0; round < 5; round++) {
    const proc = start(process.execPath, ['--input-type=module', '-e', child]);
    t.after(() => proc.stop(0));
    // The last sequence reported (a whole line).
    const last = () => {
      const lines = proc.output().split('\n');
      return Number(lines[lines.length - 2] ?? 0);
    };
    seed = (Math.imul(seed, 1103515245) + 12345) & 0x7fffffff;
    const target = acknowledged + 200 + (seed % 3000);
    const deadline = Date.now() + 20_000;
    while (!(last() >= target)) {
      if (Date.now() > deadline || proc.child.exitCode !== null)
        throw new Error(`the appender stopped: ${proc.output().slice(-2000)}`);
      await new Promise((r) => setTimeout(r, 5));
    }
    proc.child.kill('SIGKILL');
    await proc.exited;
    acknowledged = last();
    const j = ReplicationJournal.open(dir.path, { segmentBytes: 256 * 1024 });
    try {
      assert.ok(
        j.nextSeq > acknowledged,
        `round ${round}: record ${acknowledged} was acknowledged, the journal ends at ${j.nextSeq - 1}`,
      );
      let seq = 1;
      const scratch = Buffer.alloc(256 * 1024);
      for (let batch = j.read(1, scratch); batch.length; batch = j.read(seq, scratch))
        for (const e of batch) {
          assert.equal(e.seq, seq++);
          assert.ok(
            e.payload.equals(Buffer.alloc(3000, e.seq & 0xff)),
            `round ${round}: record ${e.seq} holds what was appended`,
          );
        }
      assert.equal(seq, j.nextSeq);
      acknowledged = j.nextSeq - 1;
    } finally {
      await j.close();
    }
  }
  assert.ok(acknowledged > 1000, `only ${acknowledged} records appended`);
});

test('when the target holds everything, trimming frees the current segment too, and the sequence goes on after a reopening', async (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  let j = ReplicationJournal.open(dir.path, { segmentBytes: 1024 * 1024 });
  for (let n = 0; n < 20; n++) j.append(RecordKind.write, 0, n * 4096, 4096, [payload(n)]);
  assert.ok(j.bytes > 0);
  j.trim(j.nextSeq);
  assert.equal(j.bytes, 0, 'nothing held');
  assert.equal(j.firstSeq, 21);
  await j.close();
  j = ReplicationJournal.open(dir.path, { segmentBytes: 1024 * 1024 });
  t.after(() => j.close());
  assert.equal(j.nextSeq, 21);
  assert.equal(j.append(RecordKind.write, 0, 0, 4096, [payload(1)]), 21);
  assert.deepEqual(
    readAll(j).map((r) => r.seq),
    [21],
  );
});

test('appendEncodedRun copies a batch of another journal across segments, stops whole at the bound, and refuses damage and gaps', async (t) => {
  const tmp = tempDir('haven-journal-run-');
  t.after(tmp.cleanup);
  const dir = tmp.path;
  const src = ReplicationJournal.open(join(dir, 'src'), { segmentBytes: 20_000 });
  for (let n = 1; n <= 40; n++) src.append(RecordKind.write, n % 3, n * 4096, 4096, [payload(n)]);
  // The source's records as one batch, the way the transceiver ships them.
  const scratch = Buffer.alloc(1024 * 1024);
  const batches: Buffer[] = [];
  for (let seq = 1; seq <= 40;) {
    const b = await src.readAsync(seq, scratch, { verify: false });
    const first = b[0]!;
    const last = b[b.length - 1]!;
    const start = first.payload.byteOffset - RECORD_HEADER;
    batches.push(
      Buffer.from(b[0]!.payload.buffer.slice(start, last.payload.byteOffset + last.payloadLength)),
    );
    seq = last.seq + 1;
  }
  const dst = ReplicationJournal.open(join(dir, 'dst'), { segmentBytes: 20_000 });
  for (const b of batches) assert.equal(dst.appendEncodedRun(b), b.length);
  assert.deepEqual(readAll(dst), readAll(src));
  assert.ok(readdirSync(join(dir, 'dst')).length > 3, 'the run was split across segments');
  await dst.close();
  const again = ReplicationJournal.open(join(dir, 'dst'), { segmentBytes: 20_000 });
  assert.deepEqual(readAll(again), readAll(src), 'the same after a reopening');

  // A bound: only whole records are taken, and what follows can be taken after a trim.
  const small = ReplicationJournal.open(join(dir, 'small'), { maxBytes: 30_000, segmentBytes: 10_000 });
  const all = Buffer.concat(batches);
  const took = small.appendEncodedRun(all);
  assert.ok(took > 0 && took < all.length);
  assert.equal(small.bytes, took);
  const held = readAll(small);
  assert.deepEqual(held, readAll(src).slice(0, held.length));
  small.trim(small.nextSeq);
  assert.ok(small.appendEncodedRun(all.subarray(took)) > 0, 'room again after the trim');

  // One flipped bit in the third record: CORRUPT, and nothing of the run is held (all of it fits
  // one segment, written only once every record of it is checked).
  const bad = Buffer.from(batches[0]!);
  const r1 = bad.readUInt32LE(8);
  const r2 = bad.readUInt32LE(r1 + 8);
  bad[r1 + r2 + RECORD_HEADER + 10]! ^= 1;
  const third = ReplicationJournal.open(join(dir, 'bad'));
  assert.throws(
    () => third.appendEncodedRun(bad),
    (e: Error & { code?: string }) => e.code === 'CORRUPT',
  );
  assert.equal(third.nextSeq, 1);
  assert.equal(third.bytes, 0);
  // A batch that does not follow (a gap): CONFLICT, nothing taken.
  assert.throws(
    () => third.appendEncodedRun(batches[1]!),
    (e: Error & { code?: string }) => e.code === 'CONFLICT',
  );
  assert.equal(third.nextSeq, 1);
  assert.equal(third.appendEncodedRun(batches[0]!), batches[0]!.length, 'the intact batch is taken');
  await Promise.all([src.close(), again.close(), small.close(), third.close()]);
});

test('readAsync returns what read returns, and a trim while it reads does not close its file under it', async (t) => {
  const tmp = tempDir('haven-journal-async-');
  t.after(tmp.cleanup);
  const dir = tmp.path;
  const j = ReplicationJournal.open(dir, { segmentBytes: 50_000 });
  for (let n = 1; n <= 60; n++) j.append(RecordKind.write, 0, n * 4096, 4096, [payload(n)]);
  const scratch = Buffer.alloc(40_000);
  const sync = j.read(1, Buffer.alloc(40_000)).map((e) => [e.seq, sha(e.payload)]);
  const reading = j.readAsync(1, scratch);
  // Everything trimmed while the read is on the thread pool: the segment's file goes, its fd stays until the read is done.
  j.trim(j.nextSeq);
  const got = (await reading).map((e) => [e.seq, sha(e.payload)]);
  assert.deepEqual(got, sync);
  await assert.rejects(j.readAsync(1, scratch), (e: Error & { code?: string }) => e.code === 'NOT_FOUND');
  // A record larger than the scratch comes alone, whole.
  const big = Buffer.alloc(45_000, 7);
  const seq = j.append(RecordKind.write, 0, 0, big.length, [big])!;
  const alone = await j.readAsync(seq, scratch);
  assert.deepEqual(
    alone.map((e) => [e.seq, sha(e.payload)]),
    [[seq, sha(big)]],
  );
  await j.close();
});
