// The transceiver over real mutual TLS, through a proxy that cuts the link: source recorder →
// journal → sender ⇄ receiver → target journal → applier. After cuts and reconnects every
// checkpoint the target applied equals the source at it and the last equals the source; nothing
// is skipped or applied twice (the target journal refuses a gap); compression and the bandwidth
// limit do what they say; a wrong group or a certificate of another CA is refused.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { StorageService } from '../../storage/index.js';
import { FaultProxy } from '../../../test/support/fault-proxy.js';
import { MiB, SourceGroup, snapshotHashes } from '../../../test/support/replication.js';
import { dialMutualTls, listenMutualTls, makeTestPki, type TestPki } from '../../../test/support/tls.js';
import { until } from '../../../test/support/proc.js';
import { tempDir } from '../../../test/support/tmp.js';
import { ReplicaApplier } from './applier.js';
import { ReplicationJournal } from './journal.js';
import { JournalReceiver, JournalSender, TokenBucket } from './transceiver.js';

const SIZE = 4 * MiB;

/** The target site: replica volumes, its journal and applier, a mutual-TLS listener of receivers. */
async function targetSite(dir: string, pki: TestPki, firstSeq: number, group = 'g') {
  const storage = StorageService.open(join(dir, 'target'));
  storage.createPool('p', {});
  for (const v of ['ra', 'rb']) storage.createVolume(v, SIZE, 'p');
  const journal = ReplicationJournal.open(join(dir, 'target-journal'), { firstSeq });
  const applier = new ReplicaApplier(storage, journal, ['ra', 'rb'], dir);
  const errors: Error[] = [];
  const listener = await listenMutualTls(
    pki,
    (socket) =>
      void new JournalReceiver(journal, socket, { group, onRecords: () => void applier.apply() })
        .run()
        .catch((e: Error) => errors.push(e)),
  );
  return {
    storage,
    journal,
    applier,
    errors,
    port: listener.port,
    async close() {
      await listener.close();
      await applier.apply();
      await journal.close();
      storage.close();
    },
  };
}

const dial = dialMutualTls;

test('through cuts of the link and reconnects, every applied checkpoint equals the source at it; the last equals the source', async (t) => {
  const dir = tempDir();
  const pki = makeTestPki(dir.path);
  const src = new SourceGroup(dir.path, ['a', 'b'], SIZE, { segmentBytes: 256 * 1024 });
  const dst = await targetSite(dir.path, pki, src.journal.firstSeq);
  const proxy = await FaultProxy.start({ port: dst.port });
  t.after(async () => {
    await proxy.close();
    await dst.close();
    await src.close();
    dir.cleanup();
  });
  let sender: JournalSender | undefined;
  let link: Promise<unknown> = Promise.resolve();
  const reconnect = async () => {
    const socket = await dial(proxy.port, pki);
    sender = new JournalSender(src.journal, socket, { group: 'g', compress: true, batchBytes: 64 * 1024 });
    link = sender.run().catch((e: Error) => e);
  };
  await reconnect();
  for (let round = 0; round < 4; round++) {
    for (let i = 0; i < 8; i++) {
      await src.write(20);
      src.checkpoint();
      sender?.wake();
    }
    // The link cut while records are in flight; writes go on meanwhile; then back.
    proxy.cut();
    await link;
    await src.write(30);
    src.checkpoint();
    proxy.heal();
    await reconnect();
  }
  const last = src.checkpoint('last');
  sender!.wake();
  await until('the last checkpoint at the target', () => dst.applier.newest?.seq === last);
  assert.deepEqual(dst.errors, []);
  assert.ok(dst.applier.history.length >= 10);
  for (const cp of dst.applier.history)
    assert.deepEqual(
      await snapshotHashes(dst.storage, ['ra', 'rb'], cp.snapshot, SIZE),
      src.expected.get(cp.seq),
      `checkpoint ${cp.seq}`,
    );
  // The source let go of what the target holds.
  await until('the acknowledgement', () => sender!.acknowledged === dst.journal.nextSeq - 1);
  assert.ok(src.journal.firstSeq > 1, 'the source journal was trimmed');
  sender!.stop();
  await link;
});

test('a wake that comes while the sender reads an empty journal is not lost: the record goes', async (t) => {
  const dir = tempDir();
  const pki = makeTestPki(dir.path);
  const src = new SourceGroup(dir.path, ['a', 'b'], SIZE);
  const dst = await targetSite(dir.path, pki, src.journal.firstSeq);
  t.after(async () => {
    await dst.close();
    await src.close();
    dir.cleanup();
  });
  const sender = new JournalSender(src.journal, await dial(dst.port, pki), { group: 'g' });
  // Once, when a read finds nothing: a checkpoint is journaled and the sender woken after the
  // read looked and before the sender waits — the moment a wake could fall between the two.
  const readAsync = src.journal.readAsync.bind(src.journal);
  let cp: number | undefined;
  src.journal.readAsync = async (...args) => {
    const got = await readAsync(...args);
    if (!got.length && cp === undefined) {
      cp = src.checkpoint('woken');
      sender.wake();
    }
    return got;
  };
  const link = sender.run().catch((e: Error) => e);
  await until('the checkpoint at the target', () => cp !== undefined && dst.applier.newest?.seq === cp);
  sender.stop();
  await link;
});

test('compression shrinks compressible batches; the bandwidth limit holds within 10%', async (t) => {
  const dir = tempDir();
  const pki = makeTestPki(dir.path);
  const src = new SourceGroup(dir.path, ['a', 'b'], SIZE);
  t.after(async () => {
    await src.close();
    dir.cleanup();
  });
  await src.write(300, { compressible: true });
  src.checkpoint();
  const bytes = src.journal.bytes;
  const sent = async (
    sub: string,
    opts: { compress?: boolean; limit?: TokenBucket; batchBytes?: number },
  ) => {
    const dst = await targetSite(join(dir.path, sub), pki, src.journal.firstSeq);
    try {
      // Not trimmed: the same records go to each target.
      const sender = new JournalSender(src.journal, await dial(dst.port, pki), {
        group: 'g',
        trim: false,
        ...opts,
      });
      const started = performance.now();
      const link = sender.run();
      await until('everything at the target', () => dst.journal.nextSeq === src.journal.nextSeq);
      const seconds = (performance.now() - started) / 1000;
      sender.stop();
      await link;
      return { bytes: sender.sentBytes, seconds };
    } finally {
      await dst.close();
    }
  };
  const { mkdirSync } = await import('node:fs');
  for (const d of ['plain', 'packed', 'limited']) mkdirSync(join(dir.path, d));
  const plain = await sent('plain', {});
  const packed = await sent('packed', { compress: true });
  t.diagnostic(`journal ${bytes} bytes: sent ${plain.bytes} plain, ${packed.bytes} compressed`);
  assert.ok(plain.bytes >= bytes * 0.99, 'plain sends the records as they are');
  assert.ok(packed.bytes < plain.bytes / 4, `compressed ${packed.bytes} of ${plain.bytes}`);
  // Limited to a rate that makes the transfer take ~1.5 s.
  const rate = Math.round(plain.bytes / 1.5);
  const limited = await sent('limited', { limit: new TokenBucket(rate), batchBytes: 8 * 1024 });
  const achieved = limited.bytes / limited.seconds;
  t.diagnostic(`limit ${rate} B/s, achieved ${Math.round(achieved)} B/s`);
  assert.ok(
    achieved <= rate * 1.1 && achieved >= rate * 0.9,
    `achieved ${achieved} B/s for a limit of ${rate}`,
  );
});

test('a source asking for another group, and a client certificate of another CA, are refused', async (t) => {
  const dir = tempDir();
  const pki = makeTestPki(dir.path);
  const { mkdirSync } = await import('node:fs');
  mkdirSync(join(dir.path, 'other'));
  const stranger = makeTestPki(join(dir.path, 'other'));
  const src = new SourceGroup(dir.path, ['a', 'b'], SIZE);
  const dst = await targetSite(dir.path, pki, 1, 'payroll');
  t.after(async () => {
    await dst.close();
    await src.close();
    dir.cleanup();
  });
  await src.write(5);
  const wrong = new JournalSender(src.journal, await dial(dst.port, pki), { group: 'web' });
  await assert.rejects(
    wrong.run(),
    /refused: the replication source asked for group web .*this link is for payroll/,
  );
  await assert.rejects(
    (async () => {
      const s = await dial(dst.port, pki, { key: stranger.clientKey, cert: stranger.clientCert });
      await new JournalSender(src.journal, s, { group: 'payroll' }).run();
    })(),
  );
  assert.equal(dst.journal.nextSeq, 1, 'nothing was taken');
});

test(
  "a target whose journal is full refuses the batch: the sender fails with the target's reason",
  { timeout: 30_000 },
  async (t) => {
    const dir = tempDir();
    const pki = makeTestPki(dir.path);
    const src = new SourceGroup(dir.path, ['a', 'b'], SIZE);
    // Nothing applies or trims this journal: it fills.
    const journal = ReplicationJournal.open(join(dir.path, 'small'), {
      maxBytes: 256 * 1024,
      segmentBytes: 64 * 1024,
    });
    const received: Promise<unknown>[] = [];
    const listener = await listenMutualTls(pki, (socket) => {
      received.push(new JournalReceiver(journal, socket, { group: 'g' }).run().catch((e: Error) => e));
    });
    t.after(async () => {
      await listener.close();
      await journal.close();
      await src.close();
      dir.cleanup();
    });
    // One batch, more than the journal holds (the sender then waits for more records).
    await src.write(40);
    const sender = new JournalSender(src.journal, await dial(listener.port, pki), {
      group: 'g',
      batchBytes: 4 * MiB,
    });
    await assert.rejects(
      sender.run(),
      /refused: the target's replication journal \(262144 bytes\) has no room/,
    );
    const [why] = await Promise.all(received);
    assert.match(String(why), /has no room/);
  },
);
