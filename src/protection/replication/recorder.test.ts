// The source gateway's receiver on real volumes (a StorageService in a temp dir): writers that
// each wait for one write before the next, on two volumes at once, must land in the journal in
// an order where every write comes after every write that completed before it was issued (the
// A-before-B rule across volumes); replaying the journal gives the volumes' content; a flush
// waits for the journal; a full journal turns to bitmap mode without failing a write.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { DirtyBitmap } from '../../block/index.js';
import { StorageService } from '../../storage/index.js';
import { tempDir } from '../../../test/support/tmp.js';
import { RecordKind } from './journal-format.js';
import { ReplicationJournal, type JournalEntry } from './journal.js';
import { GroupRecorder } from './recorder.js';

const MiB = 1024 * 1024;
const SIZE = 8 * MiB;
const BLOCK = 4096;

function setup(t: { after: (fn: () => unknown) => void }, journalOpts = {}) {
  const dir = tempDir();
  const storage = StorageService.open(join(dir.path, 'site'));
  storage.createPool('p', {});
  for (const v of ['a', 'b']) storage.createVolume(v, SIZE, 'p');
  const journal = ReplicationJournal.open(join(dir.path, 'journal'), journalOpts);
  // after hooks run in the order they were added: one, undoing in reverse.
  t.after(async () => {
    await journal.close();
    storage.close();
    dir.cleanup();
  });
  const overflow = ['a', 'b'].map((v) => new DirtyBitmap(`overflow-${v}`, SIZE, BLOCK));
  const taps = ['a', 'b'].map((v) => storage.tap(v));
  return { storage, journal, overflow, taps };
}

function readAll(j: ReplicationJournal): JournalEntry[] {
  const out: JournalEntry[] = [];
  for (let seq = j.firstSeq; ;) {
    const batch = j.read(seq, Buffer.alloc(MiB));
    if (!batch.length) return out;
    for (const e of batch) out.push({ ...e, payload: Buffer.from(e.payload) });
    seq = batch[batch.length - 1]!.seq + 1;
  }
}

test('writes on two volumes, each issued after others completed, come in the journal after them; a replay equals the volumes', async (t) => {
  const { storage, journal, overflow, taps } = setup(t);
  const recorder = new GroupRecorder(
    journal,
    taps.map((tap, i) => ({ tap, overflow: overflow[i]! })),
    { checkpointMs: 5 },
  );
  recorder.start();
  t.after(() => recorder.stop());

  // Every write carries (writer, number) and, at issue, how many writes had completed.
  const completed: string[] = [];
  const issuedAfter = new Map<string, number>();
  let seed = 7;
  const rnd = (n: number) => ((seed = (Math.imul(seed, 1103515245) + 12345) & 0x7fffffff), (seed >>> 4) % n);
  const writer = async (w: number) => {
    for (let k = 0; k < 150; k++) {
      const id = `${w}:${k}`;
      const vol = rnd(2);
      const block = rnd(SIZE / BLOCK);
      const data = Buffer.alloc(BLOCK, 0);
      data.write(id.padEnd(16, '.'));
      issuedAfter.set(id, completed.length);
      if (rnd(10) === 0) await taps[vol]!.writeZeroes(block * BLOCK, BLOCK);
      else await taps[vol]!.write(data, block * BLOCK);
      completed.push(id);
      // Give other writers and the checkpoint timer their turns.
      if (rnd(4) === 0) await new Promise((r) => setTimeout(r, 1));
      else await new Promise((r) => setImmediate(r));
    }
  };
  await Promise.all([0, 1, 2].map(writer));
  recorder.checkpoint('end');
  recorder.stop();

  const records = readAll(journal);
  const checkpoints = records.filter((r) => r.kind === RecordKind.checkpoint);
  assert.ok(checkpoints.length >= 3, `${checkpoints.length} checkpoints in ${records.length} records`);
  assert.equal(JSON.parse(checkpoints[checkpoints.length - 1]!.payload.toString()).name, 'end');

  // The order: completions in the order they happened; each record after all it was issued after.
  const position = new Map<string, number>();
  records.forEach((r, i) => {
    if (r.kind === RecordKind.write)
      position.set(r.payload.subarray(0, 16).toString().replace(/\.+$/, ''), i);
  });
  // A zero carries no id: count writes only, against the completions that were writes.
  let checked = 0;
  for (const [id, n] of issuedAfter) {
    const at = position.get(id);
    if (at === undefined) continue; // a zero
    for (const before of completed.slice(0, n)) {
      const b = position.get(before);
      if (b !== undefined)
        assert.ok(b < at, `${before} completed before ${id} was issued, yet comes after it`);
    }
    checked++;
  }
  assert.ok(checked > 300, `only ${checked} writes checked`);

  // Replaying everything onto zeroed images gives what the volumes hold.
  const images = [Buffer.alloc(SIZE), Buffer.alloc(SIZE)];
  for (const r of records) {
    if (r.kind === RecordKind.write) r.payload.copy(images[r.volume]!, r.offset);
    else if (r.kind === RecordKind.zero) images[r.volume]!.fill(0, r.offset, r.offset + r.length);
  }
  for (const [i, v] of ['a', 'b'].entries()) {
    const now = Buffer.alloc(SIZE);
    await storage.openDevice(v, { readOnly: true }).read(now, 0);
    assert.ok(now.equals(images[i]!), `volume ${v} equals the replay of the journal`);
  }
});

test('a flush of a group volume and a FUA write wait until the journal is durable', async (t) => {
  const { journal, overflow, taps } = setup(t);
  const recorder = new GroupRecorder(
    journal,
    taps.map((tap, i) => ({ tap, overflow: overflow[i]! })),
  );
  recorder.start();
  t.after(() => recorder.stop());
  await taps[0]!.write(Buffer.alloc(BLOCK, 1), 0);
  assert.equal(journal.durable, false);
  await taps[1]!.flush();
  assert.equal(journal.durable, true, 'a flush of either volume covers the journal');
  await taps[0]!.write(Buffer.alloc(BLOCK, 2), BLOCK, { fua: true });
  assert.equal(journal.durable, true, 'a FUA write is durable in the journal when acknowledged');
  // Without a recorder, a flush does not touch the journal.
  recorder.stop();
  journal.append(RecordKind.mark, 0, 0, 0, [Buffer.from('{}')]);
  await taps[0]!.flush();
  assert.equal(journal.durable, false);
});

test('a full journal: bitmap mode, every write still succeeds, and the bitmaps hold what the journal missed', async (t) => {
  const { journal, overflow, taps } = setup(t, { maxBytes: 64 * 1024 });
  const reasons: string[] = [];
  const recorder = new GroupRecorder(
    journal,
    taps.map((tap, i) => ({ tap, overflow: overflow[i]! })),
    { onOverflow: (r) => reasons.push(r) },
  );
  recorder.start();
  t.after(() => recorder.stop());
  for (let k = 0; k < 40; k++) await taps[k % 2]!.write(Buffer.alloc(BLOCK, k + 1), k * BLOCK);
  assert.equal(recorder.state.mode, 'bitmap');
  assert.deepEqual(reasons, [`the journal is full (${64 * 1024} bytes)`]);
  assert.equal(recorder.checkpoint(), undefined, 'no consistent point to mark');
  const journaled = readAll(journal).map((r) => r.offset / BLOCK);
  assert.ok(journaled.length > 5 && journaled.length < 40);
  // Each write is in the journal or in its volume's bitmap; the ones after the first miss all in the bitmaps.
  for (let k = 0; k < 40; k++) {
    const inJournal = journaled.includes(k);
    const inBitmap = overflow[k % 2]!.isDirty(k * BLOCK);
    assert.ok(inJournal !== inBitmap, `write ${k}: journal ${inJournal}, bitmap ${inBitmap}`);
    if (k >= journaled.length) assert.ok(inBitmap);
  }
});
