// The scan that does the initial sync and resyncs (decision 0012, 5), on real volumes: it reads
// only allocated data; while a writer keeps writing, the replica built from the scan and the
// writes in journal order equals the source at the next checkpoint, also when the reads are
// asynchronous and writes race them; an interrupted scan resumes where it stopped.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { PassThroughDevice, type BlockDevice } from '../../block/index.js';
import { StorageService } from '../../storage/index.js';
import { MiB, SourceGroup, ship, snapshotHashes } from '../../../test/support/replication.js';
import { tempDir } from '../../../test/support/tmp.js';
import { ReplicaApplier } from './applier.js';
import { checksumReplica, decodeChecksums } from './checksums.js';
import { ReplicationJournal } from './journal.js';
import { scanGroup, type ScanOptions } from './scan.js';

const SIZE = 16 * MiB;

/**
 * Reads answered on a later turn of the event loop, as an NBD client's are; the first `races`
 * reads each see a guest write land inside their range while they are under way.
 */
class LaterReads extends PassThroughDevice {
  constructor(
    inner: BlockDevice,
    private races: number,
    private readonly guestWrite: (offset: number) => Promise<void>,
  ) {
    super(inner);
  }

  override async read(buf: Uint8Array, offset: number): Promise<void> {
    await new Promise((r) => setImmediate(r));
    if (this.races > 0) {
      this.races--;
      await this.guestWrite(offset);
    }
    await this.inner.read(buf, offset);
  }
}

/** The target's storage with replicas of the source's volumes (fresh, all zero). */
function replicas(dir: string, src: SourceGroup): StorageService {
  const storage = StorageService.open(join(dir, 'target'));
  storage.createPool('p', {});
  for (const v of src.names) storage.createVolume(`r${v}`, SIZE, 'p');
  return storage;
}

/** Ships the source journal to a target's and applies it to the replicas there (fresh ones by default). */
async function replicate(dir: string, src: SourceGroup, storage = replicas(dir, src)) {
  const journal = ReplicationJournal.open(join(dir, 'target-journal'), { firstSeq: src.journal.firstSeq });
  ship(src.journal, journal);
  const applier = new ReplicaApplier(
    storage,
    journal,
    src.names.map((v) => `r${v}`),
    dir,
  );
  await applier.apply();
  return {
    storage,
    applier,
    async close() {
      await journal.close();
      storage.close();
    },
  };
}

/** A group with data written before replication began, then recording, a writer and a scan. */
async function syncWhileWriting(
  t: { after: (fn: () => unknown) => void },
  reads: 'synchronous' | 'asynchronous',
  scan: (src: SourceGroup, sources: Parameters<typeof scanGroup>[1]) => Promise<void>,
  /** Replicas already holding an older copy of the source (a compare sync), made before recording. */
  seeded?: (dir: string, src: SourceGroup) => Promise<StorageService>,
) {
  const dir = tempDir();
  const src = new SourceGroup(dir.path, ['a', 'b'], SIZE, { segmentBytes: 4 * MiB, recording: false });
  await src.write(100);
  const target = await seeded?.(dir.path, src);
  src.startRecording();
  const sources = src.taps.map((tap, i) => ({
    tap,
    ...(reads === 'asynchronous'
      ? { device: new LaterReads(tap, 3, (offset) => src.writeAt(i, offset)) as BlockDevice }
      : {}),
  }));
  let writing = true;
  const writer = (async () => {
    while (writing) {
      await src.write(1);
      await new Promise((r) => setImmediate(r));
    }
  })();
  try {
    await scan(src, sources);
  } finally {
    writing = false;
    await writer;
  }
  const seq = src.checkpoint('synced');
  const dst = await replicate(dir.path, src, target);
  t.after(async () => {
    await dst.close();
    await src.close();
    dir.cleanup();
  });
  assert.equal(dst.applier.newest?.seq, seq);
  assert.deepEqual(
    await snapshotHashes(dst.storage, ['ra', 'rb'], `cp-${seq}`, SIZE),
    src.expected.get(seq),
    'the replica at the checkpoint equals the source',
  );
}

for (const reads of ['synchronous', 'asynchronous'] as const)
  test(`an initial sync beside a writer (${reads} reads): only data is read, the replica equals the source at the next checkpoint`, async (t) => {
    await syncWhileWriting(t, reads, async (src, sources) => {
      const r = await scanGroup(src.journal, sources, { stepBytes: 256 * 1024 });
      t.diagnostic(`read ${r.readBytes} bytes, skipped ${r.zeroBytes}, read ${r.rereads} steps again`);
      assert.ok(r.zeroBytes > SIZE, 'holes and zeroes were not read');
      assert.ok(r.readBytes < SIZE, 'less than one volume read for two');
      if (reads === 'asynchronous') assert.equal(r.rereads, 6, 'the reads a write raced were read again');
    });
  });

test('an interrupted scan resumes where it stopped; the replica equals the source', async (t) => {
  await syncWhileWriting(t, 'synchronous', async (src, sources) => {
    let last: ScanOptions['from'];
    const stop = new AbortController();
    let steps = 0;
    await assert.rejects(
      scanGroup(src.journal, sources, {
        stepBytes: 256 * 1024,
        signal: stop.signal,
        onProgress: (at) => {
          last = { volume: at.volume, offset: at.offset };
          if (++steps === 70) stop.abort();
        },
      }),
      (e: Error) => e.name === 'AbortError',
    );
    assert.equal(last!.volume, 1, 'stopped in the second volume');
    const rest = await scanGroup(src.journal, sources, { stepBytes: 256 * 1024, from: last! });
    assert.ok(rest.readBytes + rest.zeroBytes < SIZE, 'the resumed scan did not start over');
  });
});

test('a compare sync beside a writer (asynchronous reads, raced): only differing extents are sent, the seeded replica equals the source at the next checkpoint', async (t) => {
  const EXTENT = 64 * 1024;
  let compare: ScanOptions['compare'];
  await syncWhileWriting(
    t,
    'asynchronous',
    async (src, sources) => {
      const r = await scanGroup(src.journal, sources, { compare: compare! });
      t.diagnostic(
        `sent ${r.readBytes} data and ${r.zeroBytes} zero bytes, ${r.sameBytes} equal, ${r.rereads} read again`,
      );
      // (The writer beside the scan changes extents too, one write per extent scanned.)
      assert.ok(r.rereads >= 6, 'the reads a write raced were read again');
      assert.ok(r.sameBytes >= SIZE / 4, 'extents the replica holds were not sent');
      assert.equal(r.readBytes + r.zeroBytes + r.sameBytes, 2 * SIZE, 'every extent was compared');
    },
    async (dir, src) => {
      // A copy of the source, which then moves on (unrecorded: the copy is older than the journal).
      const storage = replicas(dir, src);
      const b = Buffer.alloc(SIZE);
      for (const v of src.names) {
        await src.storage.openDevice(v, { readOnly: true }).read(b, 0);
        await storage.openDevice(`r${v}`).write(b, 0);
      }
      await src.write(20);
      const list = await checksumReplica(
        storage,
        src.names.map((v) => `r${v}`),
        undefined,
        EXTENT,
      );
      compare = { extentBytes: EXTENT, sums: decodeChecksums(list, [SIZE, SIZE], EXTENT) };
      return storage;
    },
  );
});
