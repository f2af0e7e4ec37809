import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { execFile } from 'node:child_process';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { connectNbd } from '../../src/nbd/index.js';
import { withStorage } from '../../src/storage/index.js';
import { HAVEN_BIN, start, waitForListen, type Running } from '../support/proc.js';
import { tempDir } from '../support/tmp.js';

const run = promisify(execFile);
const KiB = 1024;
const REGION = 64 * KiB;
const SIZE = 64 * 1024 * KiB;
const ROUNDS = 20;

/** Each write fills one region with bytes derived from its number: recognisable after a crash. */
function pattern(n: number, len: number): Buffer {
  const b = Buffer.alloc(len);
  for (let i = 0; i < len; i += 8) {
    b.writeUInt32LE(n, i);
    b.writeUInt32LE(i, i + 4);
  }
  return b;
}

const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

test(`kill -9 of the storage service at random points, ${ROUNDS} times: flushed writes and snapshots survive`, async (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  const data = join(dir.path, 'site');
  const sock = join(dir.path, 'nbd.sock');
  await withStorage(data, (s) => {
    s.createPool('p', {});
    s.createVolume('v', SIZE, 'p');
  });
  let seed = 20261122;
  const rnd = (n: number) => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff), (seed >>> 8) % n);

  let server: Running | undefined;
  const startServer = async () => {
    server = start(process.execPath, [HAVEN_BIN, 'storage', 'serve', '--data', data, '--socket', sock]);
    await waitForListen({ path: sock }, 15000, server);
  };
  t.after(() => server?.stop(0));

  // region -> the write number that must be there (acknowledged before a completed flush)
  const durable = new Map<number, number>();
  // region -> write numbers sent after the last completed flush: each may or may not have landed
  let pending = new Map<number, number[]>();
  let writeNo = 0;
  let snapshotHash: string | undefined;

  for (let round = 0; round < ROUNDS; round++) {
    await startServer();
    const dev = await connectNbd(`nbd+unix:///v?socket=${sock}`);

    // After each restart: the metadata loaded, every durable write is there, pending ones are
    // either there or the region's previous content, never anything else.
    const buf = Buffer.alloc(REGION);
    for (const [region, n] of durable) {
      await dev.read(buf, region * REGION);
      const allowed = [n, ...(pending.get(region) ?? [])];
      assert.ok(
        allowed.some((m) => buf.equals(pattern(m, REGION))),
        `round ${round}: region ${region} holds neither write ${n} nor a later unflushed one`,
      );
    }
    for (const [region, ns] of pending) {
      if (durable.has(region)) continue;
      await dev.read(buf, region * REGION);
      assert.ok(
        buf.equals(Buffer.alloc(REGION)) || ns.some((m) => buf.equals(pattern(m, REGION))),
        `round ${round}: unflushed region ${region} holds garbage`,
      );
    }
    // What was read back is now the truth for those regions.
    for (const [region, ns] of pending) {
      await dev.read(buf, region * REGION);
      const m = ns.find((x) => buf.equals(pattern(x, REGION)));
      if (m !== undefined) durable.set(region, m);
    }
    pending = new Map();
    if (snapshotHash) {
      const snap = await connectNbd(`nbd+unix:///v@before?socket=${sock}`);
      const all = Buffer.alloc(4 * 1024 * KiB);
      await snap.read(all, 0);
      assert.equal(sha(all), snapshotHash, `round ${round}: the snapshot changed`);
      await snap.close();
    }

    // Write and flush until killed at a random moment.
    const killAt = 30 + rnd(300);
    const killer = sleep(killAt).then(() => server!.child.kill('SIGKILL'));
    try {
      for (;;) {
        const batch: [number, number][] = [];
        for (let i = 0; i < 1 + rnd(8); i++) {
          const region = rnd(SIZE / REGION);
          const n = ++writeNo;
          batch.push([region, n]);
          pending.set(region, [...(pending.get(region) ?? []), n]);
        }
        await Promise.all(batch.map(([region, n]) => dev.write(pattern(n, REGION), region * REGION)));
        await dev.flush();
        // Everything sent before the flush is durable now.
        for (const [region, n] of batch) durable.set(region, n);
        pending = new Map();
      }
    } catch {
      // the server died under us: expected
    }
    await killer;
    await server!.stop(0);
    await dev.close().catch(() => undefined);

    if (round === 2 && !snapshotHash) {
      // Take a snapshot offline once, and watch it stay intact through the remaining crashes.
      await withStorage(data, async (s) => {
        s.snapshot('v', 'before');
        const all = Buffer.alloc(4 * 1024 * KiB);
        await s.openDevice('v@before').read(all, 0);
        snapshotHash = sha(all);
      });
    }
  }
  t.diagnostic(`${writeNo} writes, ${durable.size} regions durable`);
  assert.ok(durable.size > 200, `only ${durable.size} regions were written durably; the test did too little`);
});

// QEMU's NBD client (reconnect-delay) outlives a killed storage service: it retries what was in
// flight on the next one, so the guest's FLUSH after an acknowledged WRITE may be answered by a
// service that never saw the write. That flush must cover it: a write the killed service
// acknowledged must survive its death (not a power cut's: the guest dies with that).
test('kill -9 between a write and its flush: the flush on the next service covers the write', async (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  const data = join(dir.path, 'site');
  const sock = join(dir.path, 'nbd.sock');
  await withStorage(data, (s) => {
    s.createPool('p', {});
    s.createVolume('v', 16 * 1024 * KiB, 'p');
  });
  const uri = `nbd+unix:///v?socket=${sock}`;
  const serve = async () => {
    const server = start(process.execPath, [HAVEN_BIN, 'storage', 'serve', '--data', data, '--socket', sock]);
    t.after(() => server.stop(0));
    await waitForListen({ path: sock }, 15000, server);
    return server;
  };
  // Writes that map new clusters (partial and whole) and one in place: acknowledged, then the
  // service is killed before any flush; the client leaves without a word (as a retrying QEMU).
  const writes = [
    { off: 0, len: 64 * KiB },
    { off: 200 * KiB, len: 4 * KiB },
    { off: 1024 * KiB, len: 192 * KiB },
    { off: 8 * 1024 * KiB + 512, len: 512 },
    { off: 4 * KiB, len: 4 * KiB }, // in place, in the cluster the first one mapped
  ];
  const first = await serve();
  const script = [
    'import nbd, os',
    'h = nbd.NBD()',
    `h.connect_uri("${uri}")`,
    ...writes.map((w, i) => `h.pwrite(bytes([${i + 1}]) * ${w.len}, ${w.off})`),
    `os.kill(${first.child.pid}, 9)`,
    'os._exit(0)',
  ].join('\n');
  await run('/usr/bin/python3', ['-c', script]);
  // A killed child has a signalCode, not an exitCode: wait on the exit captured at spawn.
  await first.exited;
  await serve();
  const check = [
    'import nbd',
    'h = nbd.NBD()',
    `h.connect_uri("${uri}")`,
    'h.flush()',
    ...writes.map((w, i) => {
      const later = writes.slice(i + 1).some((x) => x.off < w.off + w.len && w.off < x.off + x.len);
      return later
        ? ''
        : `assert h.pread(${w.len}, ${w.off}) == bytes([${i + 1}]) * ${w.len}, 'write ${i + 1} lost'`;
    }),
  ].join('\n');
  await run('/usr/bin/python3', ['-c', check]);
});
