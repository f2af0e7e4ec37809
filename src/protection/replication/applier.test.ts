// Source recorder → journal → (shipped in-process) → target journal → applier, on two real
// StorageServices: every checkpoint snapshot of the replica equals the source's state at that
// checkpoint (the replay of the journal's prefix), on both volumes at once; the newest equals the
// source; a kill -9 of the applying process at random moments loses no checkpoint and leaves none
// torn; expired checkpoints go, the newest stays.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { StorageService } from '../../storage/index.js';
import { SourceGroup, ship, snapshotHashes } from '../../../test/support/replication.js';
import { start } from '../../../test/support/proc.js';
import { tempDir } from '../../../test/support/tmp.js';
import { ReplicaApplier } from './applier.js';
import { RecordKind } from './journal-format.js';
import { ReplicationJournal } from './journal.js';

const MiB = 1024 * 1024;
const SIZE = 4 * MiB;
const BLOCK = 4096;
const VOLUMES = ['a', 'b'];
const REPLICAS = ['ra', 'rb'];

/** The source: two volumes written by a seeded random writer, a checkpoint every 25 writes. */
async function source(t: { after: (fn: () => unknown) => void }, dir: string, writes: number) {
  const src = new SourceGroup(dir, VOLUMES, SIZE);
  t.after(() => src.close());
  for (let k = 25; k <= writes; k += 25) {
    await src.write(25);
    src.checkpoint(k + 25 > writes ? 'last' : undefined);
  }
  return src;
}

function target(dir: string) {
  const storage = StorageService.open(join(dir, 'target'));
  if (!storage.listPools().length) {
    storage.createPool('p', {});
    for (const v of VOLUMES) storage.createVolume(`r${v}`, SIZE, 'p');
  }
  return storage;
}

/** A target and its journal in small segments (trims show), closed and removed after the test. */
function targetWithJournal(t: { after: (fn: () => Promise<void>) => void }) {
  const dir = tempDir();
  const storage = target(dir.path);
  const journal = ReplicationJournal.open(join(dir.path, 'target-journal'), { segmentBytes: 8 * 1024 });
  t.after(async () => {
    await journal.close();
    storage.close();
    dir.cleanup();
  });
  return { dir, storage, journal };
}

test('every checkpoint of the replica equals the source at that checkpoint, both volumes; the newest is the source', async (t) => {
  const dir = tempDir();
  const src = await source(t, dir.path, 400);
  const storage = target(dir.path);
  const journal = ReplicationJournal.open(join(dir.path, 'target-journal'), {
    firstSeq: src.journal.firstSeq,
  });
  t.after(async () => {
    await journal.close();
    storage.close();
    dir.cleanup();
  });
  const applied: number[] = [];
  const applier = new ReplicaApplier(storage, journal, ['ra', 'rb'], dir.path, {
    onCheckpoint: (c) => applied.push(c.seq),
    batchBytes: 64 * 1024,
  });
  ship(src.journal, journal);
  await applier.apply();
  assert.deepEqual(applied, [...src.expected.keys()]);
  for (const cp of applier.history)
    assert.deepEqual(
      await snapshotHashes(storage, REPLICAS, cp.snapshot, SIZE),
      src.expected.get(cp.seq),
      `checkpoint ${cp.seq}`,
    );
  assert.equal(applier.newest!.name, 'last');
  for (const v of VOLUMES) {
    const a = Buffer.alloc(SIZE);
    const b = Buffer.alloc(SIZE);
    await src.storage.openDevice(v, { readOnly: true }).read(a, 0);
    await storage.openDevice(`r${v}@${applier.newest!.snapshot}`).read(b, 0);
    assert.ok(a.equals(b), `replica of ${v} at the last checkpoint equals the source`);
  }
});

test('kill -9 of the applying process, 6 times at random moments: no applied checkpoint lost, none torn, the end equals the source', async (t) => {
  const dir = tempDir();
  const src = await source(t, dir.path, 1500);
  // The target journal, shipped whole before the first run: the applier is what gets killed.
  const tj = ReplicationJournal.open(join(dir.path, 'target-journal'), { firstSeq: src.journal.firstSeq });
  ship(src.journal, tj);
  await tj.sync();
  await tj.close();
  target(dir.path).close();
  t.after(dir.cleanup);

  const applierJs = fileURLToPath(new URL('./applier.js', import.meta.url));
  const journalJs = fileURLToPath(new URL('./journal.js', import.meta.url));
  const storageJs = fileURLToPath(new URL('../../storage/index.js', import.meta.url));
  const child = `
    import { ReplicaApplier } from ${JSON.stringify(applierJs)};
    import { ReplicationJournal } from ${JSON.stringify(journalJs)};
    import { StorageService } from ${JSON.stringify(storageJs)};
    const storage = StorageService.open(${JSON.stringify(join(dir.path, 'target'))});
    const journal = ReplicationJournal.open(${JSON.stringify(join(dir.path, 'target-journal'))});
    const applier = new ReplicaApplier(storage, journal, ['ra', 'rb'], ${JSON.stringify(dir.path)}, {
      batchBytes: 16 * 1024,
      onCheckpoint: (c) => process.stdout.write(c.seq + '\\n'),
    });
    await applier.apply();
    process.stdout.write('done\\n');`;
  let seed = 5;
  let told = 0;
  let finished = false;
  for (let round = 0; round < 6 && !finished; round++) {
    const proc = start(process.execPath, ['--input-type=module', '-e', child]);
    t.after(() => proc.stop(0));
    const reports = () =>
      proc
        .output()
        .split('\n')
        .filter((l) => /^\d+$/.test(l));
    seed = (Math.imul(seed, 1103515245) + 12345) & 0x7fffffff;
    // Killed after one to three more checkpoints were reported, a few ms past the report.
    const more = 1 + (seed % 3);
    const deadline = Date.now() + 30_000;
    while (reports().length < more && !proc.output().includes('done')) {
      if (Date.now() > deadline || proc.child.exitCode !== null) break;
      await new Promise((r) => setTimeout(r, 2));
    }
    await new Promise((r) => setTimeout(r, seed % 7));
    proc.child.kill('SIGKILL');
    await proc.exited;
    if (proc.child.exitCode !== null && proc.child.exitCode !== 0 && !proc.output().includes('done'))
      throw new Error(`the applier failed: ${proc.output()}`);
    finished = proc.output().includes('done');
    const reported = reports().map(Number);
    if (reported.length) told = reported[reported.length - 1]!;
    // What a restarted applier holds: every checkpoint it reported, each equal to the source's.
    const storage = StorageService.open(join(dir.path, 'target'));
    const journal = ReplicationJournal.open(join(dir.path, 'target-journal'));
    try {
      const applier = new ReplicaApplier(storage, journal, ['ra', 'rb'], dir.path);
      assert.ok(
        (applier.newest?.seq ?? 0) >= told,
        `round ${round}: checkpoint ${told} was applied, the newest is ${applier.newest?.seq}`,
      );
      const cp = applier.newest;
      if (cp)
        assert.deepEqual(
          await snapshotHashes(storage, REPLICAS, cp.snapshot, SIZE),
          src.expected.get(cp.seq),
          `round ${round}: checkpoint ${cp.seq} is whole`,
        );
    } finally {
      await journal.close();
      storage.close();
    }
  }
  // Then to the end, in-process.
  const storage = StorageService.open(join(dir.path, 'target'));
  const journal = ReplicationJournal.open(join(dir.path, 'target-journal'));
  try {
    const applier = new ReplicaApplier(storage, journal, ['ra', 'rb'], dir.path);
    await applier.apply();
    const last = [...src.expected.keys()].pop()!;
    assert.equal(applier.newest!.seq, last);
    assert.deepEqual(
      await snapshotHashes(storage, REPLICAS, applier.newest!.snapshot, SIZE),
      src.expected.get(last),
    );
    assert.ok(
      told > 0 && told < last,
      `the applier was killed after reporting checkpoints (up to ${told} of ${last})`,
    );
    t.diagnostic(`killed while applying, last reported checkpoint ${told} of ${last}`);
  } finally {
    await journal.close();
    storage.close();
  }
});

test('checkpoints past the window are deleted with their snapshots; the newest always stays; the journal is trimmed', async (t) => {
  const { dir, storage, journal } = targetWithJournal(t);
  const applier = new ReplicaApplier(storage, journal, ['ra', 'rb'], dir.path, { keepMs: 10_000 });
  // Checkpoints 5 s apart (their recorded times), a write before each.
  for (let i = 0; i < 6; i++) {
    journal.append(RecordKind.write, i % 2, i * BLOCK, BLOCK, [Buffer.alloc(BLOCK, i + 1)]);
    journal.append(RecordKind.checkpoint, 0, 0, 0, [
      Buffer.from(JSON.stringify({ time: 1_000_000 + i * 5000 })),
    ]);
  }
  await applier.apply();
  // The newest at 1 025 000: those before 1 015 000 are gone.
  assert.deepEqual(
    applier.history.map((c) => c.time),
    [1_015_000, 1_020_000, 1_025_000],
  );
  const snaps = storage
    .listSnapshots('ra')
    .map((s) => s.name.replace(/^.*@/, ''))
    .sort();
  assert.deepEqual(snaps, applier.history.map((c) => c.snapshot).sort());
  assert.ok(journal.firstSeq > 1, `the journal was trimmed (first ${journal.firstSeq})`);
  // A long gap (nothing written: the newest holds through it): only the newest stays.
  journal.append(RecordKind.checkpoint, 0, 0, 0, [Buffer.from(JSON.stringify({ time: 9_000_000 }))]);
  await applier.apply();
  assert.deepEqual(
    applier.history.map((c) => [c.time, c.through?.time]),
    [[1_025_000, 9_000_000]],
  );
  // Reopened: the same history.
  assert.deepEqual(new ReplicaApplier(storage, journal, ['ra', 'rb'], dir.path).history, applier.history);
});

test('a checkpoint with a clone stays past the window (no failed apply) and goes once the clone is deleted; a restart keeps it too', async (t) => {
  const { dir, storage, journal } = targetWithJournal(t);
  const applier = new ReplicaApplier(storage, journal, ['ra', 'rb'], dir.path, { keepMs: 10_000 });
  const checkpointAt = (time: number) =>
    journal.append(RecordKind.checkpoint, 0, 0, 0, [Buffer.from(JSON.stringify({ time }))]);
  journal.append(RecordKind.write, 0, 0, BLOCK, [Buffer.alloc(BLOCK, 7)]);
  checkpointAt(1_000_000);
  await applier.apply();
  const first = applier.history[0]!;
  // Someone reads the first checkpoint through a clone (checkReplica, a rehearsal, a recovery).
  storage.clone('ra', first.snapshot, 'reader');
  // (A write first: a checkpoint right after another would only advance it.)
  journal.append(RecordKind.write, 1, 0, BLOCK, [Buffer.alloc(BLOCK, 8)]);
  checkpointAt(2_000_000);
  await applier.apply(); // past the window: without the pin, deleting cp-1 of ra throws here
  assert.deepEqual(
    applier.history.map((c) => c.seq),
    [first.seq, applier.history.at(-1)!.seq],
  );
  assert.deepEqual(new ReplicaApplier(storage, journal, ['ra', 'rb'], dir.path).history, applier.history);
  storage.deleteVolume('reader');
  checkpointAt(3_000_000);
  await applier.apply();
  assert.equal(applier.history.length, 1);
  assert.ok(!storage.listSnapshots('ra').some((s) => s.name.endsWith(first.snapshot)), 'its snapshot went');
});

test('a stretch without a checkpoint larger than the target journal: release lets go of what the replicas hold; a restart re-applies from the oldest record held; the next checkpoint equals the source', async (t) => {
  const dir = tempDir();
  const src = new SourceGroup(dir.path, VOLUMES, SIZE);
  t.after(() => src.close());
  await src.write(25);
  const c1 = src.checkpoint('c1');
  // ~5 MiB of writes and no checkpoint (as during an initial sync), into a target journal of 1 MiB.
  await src.write(300);
  const c2 = src.checkpoint('c2');
  const storage = target(dir.path);
  const open = () =>
    ReplicationJournal.open(join(dir.path, 'target-journal'), {
      firstSeq: src.journal.firstSeq,
      maxBytes: MiB,
      segmentBytes: 128 * 1024,
    });
  let journal = open();
  let applier = new ReplicaApplier(storage, journal, REPLICAS, dir.path, { batchBytes: 64 * 1024 });
  t.after(async () => {
    await journal.close();
    storage.close();
    dir.cleanup();
  });
  const scratch = Buffer.alloc(MiB);
  let restarted = false;
  for (let round = 0; journal.nextSeq < src.journal.nextSeq; round++) {
    assert.ok(
      round < 1000,
      `stuck at ${journal.nextSeq}: the target journal is full and nothing lets go of it`,
    );
    let full = false;
    for (const r of src.journal.read(journal.nextSeq, scratch))
      if (journal.append(r.kind, r.volume, r.offset, r.length, [r.payload]) === undefined) {
        full = true;
        break;
      }
    // Full: what the target gateway does before taking more.
    if (full) await applier.release();
    else await applier.apply();
    assert.ok(journal.bytes <= MiB);
    if (!restarted && applier.appliedSeq > c1 + 150) {
      // A restart past c1 with c1's records trimmed: it goes on from what the journal holds.
      restarted = true;
      assert.ok(journal.firstSeq > c1 + 1, 'records after the newest checkpoint were trimmed');
      await journal.close();
      journal = open();
      applier = new ReplicaApplier(storage, journal, REPLICAS, dir.path, { batchBytes: 64 * 1024 });
      assert.equal(applier.newest?.seq, c1);
      assert.equal(applier.appliedSeq, journal.firstSeq - 1);
    }
  }
  assert.ok(restarted);
  assert.deepEqual(
    applier.history.map((c) => c.seq),
    [c1, c2],
  );
  for (const seq of [c1, c2])
    assert.deepEqual(
      await snapshotHashes(storage, REPLICAS, `cp-${seq}`, SIZE),
      src.expected.get(seq),
      `cp-${seq}`,
    );
});

test('a checkpoint with nothing written since the newest is held through it (no new snapshot); a write or a name makes a new one', async (t) => {
  const { dir, storage, journal } = targetWithJournal(t);
  const applier = new ReplicaApplier(storage, journal, ['ra', 'rb'], dir.path);
  const checkpointAt = (time: number, name?: string) =>
    journal.append(RecordKind.checkpoint, 0, 0, 0, [
      Buffer.from(JSON.stringify({ time, ...(name ? { name } : {}) })),
    ]);
  journal.append(RecordKind.write, 0, 0, BLOCK, [Buffer.alloc(BLOCK, 7)]);
  checkpointAt(Date.now() - 3000);
  await applier.apply();
  const first = applier.history[0]!;
  // An idle group: three more checkpoints, nothing written between.
  let last = 0;
  for (let i = 2; i >= 0; i--) last = checkpointAt(Date.now() - i * 500)!;
  await applier.apply();
  assert.equal(applier.history.length, 1);
  assert.equal(applier.newest!.seq, first.seq, 'the first keeps its sequence');
  assert.equal(applier.newest!.through?.seq, last, 'and holds through the last checkpoint');
  assert.deepEqual(
    storage.listSnapshots('ra').map((s) => s.name),
    [first.snapshot],
    'no snapshot was taken for them',
  );
  // A named one is always its own; so is one after a write.
  const named = checkpointAt(Date.now(), 'before-upgrade')!;
  journal.append(RecordKind.write, 1, 0, BLOCK, [Buffer.alloc(BLOCK, 9)]);
  const busy = checkpointAt(Date.now())!;
  await applier.apply();
  assert.deepEqual(
    applier.history.map((c) => [c.seq, c.snapshot]),
    [
      [first.seq, first.snapshot],
      [named, `cp-${named}`],
      [busy, `cp-${busy}`],
    ],
  );
  // Reopened after the list was saved: the same history.
  assert.deepEqual(new ReplicaApplier(storage, journal, ['ra', 'rb'], dir.path).history, applier.history);
});
