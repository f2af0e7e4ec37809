// Garbage collection racing backups: a backup that reuses chunks nothing references any more
// (their snapshot was forgotten, they are older than any grace) while a gc sweeps them. Every
// round must end with the new snapshot whole. Before the claim/sweep protocol of decision 0008
// (docs/decisions/0008-gc-and-writers.md), gc deleted chunks the backup had just found and
// touched: 13 or 14 of 16 rounds lost chunks.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, readFileSync, readdirSync, renameSync, utimesSync, writeFileSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { openRawFile } from '../../src/block/index.js';
import { errorMessage } from '../../src/common/index.js';
import { backupSource, restoreSnapshot } from '../../src/protection/index.js';
import { backup, openChunkPool } from '../../src/protection/index.js';
import { Repository, chunkKey, gc, verify, type SnapshotManifest } from '../../src/repository/index.js';
import { tempDir } from '../support/tmp.js';

const MiB = 1024 * 1024;
const CHUNK = 64 * 1024;

/** Sets every chunk file an hour back: unreferenced, they are past any grace period. */
function ageChunks(repo: string): void {
  const old = Date.now() / 1000 - 3600;
  for (const e of readdirSync(join(repo, 'chunks'), { recursive: true, withFileTypes: true }))
    if (e.isFile()) utimesSync(join(e.parentPath, e.name), old, old);
}

test('backup ‖ gc: a backup reusing unreferenced chunks while gc sweeps them never loses one', async (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  const repo = await Repository.init(join(dir.path, 'repo'), { chunkSize: CHUNK });
  const img = join(dir.path, 'disk.raw');
  const data = randomBytes(24 * MiB);
  // The image with its chunks in the reverse of the order gc sweeps them (the directory order),
  // so that the backup's lookups and the sweep come towards each other and cross in every round.
  const chunks = new Map<string, Buffer>();
  for (let at = 0; at < data.length; at += CHUNK) {
    const c = data.subarray(at, at + CHUNK);
    chunks.set(createHash('sha256').update(c).digest('hex'), c);
  }
  for (const [hex, c] of chunks) {
    const d = Buffer.from(hex, 'hex');
    await repo.putChunk(d, repo.codec().encode(c, d));
  }
  const swept = readdirSync(join(repo.location, 'chunks'), { recursive: true }).map((n) =>
    basename(String(n)),
  );
  writeFileSync(
    img,
    Buffer.concat(
      swept
        .filter((h) => chunks.has(h))
        .reverse()
        .map((h) => chunks.get(h)!),
    ),
  );
  assert.equal(readFileSync(img).length, data.length);
  // The worker threads and the source are ready before the rounds: both sides start at once.
  const pool = openChunkPool(repo, CHUNK);
  t.after(() => pool.close());
  const device = openRawFile(img, { readOnly: true });
  t.after(() => device.close());
  const backupImage = () =>
    backup(repo, { source: { kind: 'image', name: img }, disks: [{ name: 'disk0', device }], pool });
  const rounds = 16;
  const failures: string[] = [];
  let removed = 0;
  let claimed = 0;
  for (let round = 0; round < rounds; round++) {
    // Nothing references the chunks any more, and they are old.
    for (const s of await repo.listSnapshots()) await repo.deleteSnapshot(s.id);
    ageChunks(repo.location);
    // The backup starts as the sweep does (its worker threads and source are ready), and they
    // come towards each other.
    let started: Promise<SnapshotManifest> | undefined;
    const sweep = gc(repo, { graceMs: 0, onSweep: () => void (started ??= backupImage()) });
    const [g] = await Promise.allSettled([sweep]);
    const [b] = await Promise.allSettled([started ?? backupImage()]);
    if (g.status === 'rejected') failures.push(`round ${round}: gc failed: ${errorMessage(g.reason)}`);
    else {
      removed += g.value.removedChunks;
      claimed += g.value.claimedMeanwhile;
    }
    if (b.status === 'rejected') {
      failures.push(`round ${round}: the backup failed: ${errorMessage(b.reason)}`);
      continue;
    }
    let missing = 0;
    for (const c of await (await repo.openIndex(b.value, 0)).chunks())
      if (!existsSync(join(repo.location, chunkKey(c.digest)))) missing++;
    if (missing) failures.push(`round ${round}: snapshot ${b.value.id} names ${missing} chunk(s) gc deleted`);
  }
  t.diagnostic(
    `${rounds} rounds: gc removed ${removed} chunks the backup had not reached yet and kept ${claimed} it claimed during the sweep; ${failures.length} failure(s)`,
  );
  assert.deepEqual(failures, []);
  assert.equal((await verify(repo)).damaged.length, 0);
});

test('a chunk a sweep holds aside (or left aside when it died) is still read by restore and verify', async (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  const repo = join(dir.path, 'repo');
  await Repository.init(repo, { chunkSize: CHUNK });
  const img = join(dir.path, 'disk.raw');
  writeFileSync(img, randomBytes(2 * MiB));
  const m = await backupSource({ repo, source: img });
  const r = await Repository.open(repo);
  const key = chunkKey((await (await r.openIndex(m, 0)).chunks())[5]!.digest);
  renameSync(join(repo, key), join(repo, dirname(key), `.gc-${basename(key)}`));
  const out = join(dir.path, 'out.raw');
  await restoreSnapshot({ repo, snapshot: m.id, to: out });
  assert.ok(readFileSync(out).equals(readFileSync(img)));
  assert.equal((await verify(r)).damaged.length, 0);
  // The next gc puts it back under its name.
  await gc(r, { graceMs: 0 });
  assert.ok(existsSync(join(repo, key)));
});
