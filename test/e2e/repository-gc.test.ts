// Garbage collection racing backups: a backup that reuses chunks nothing references any more
// (their snapshot was forgotten, they are older than any grace) while a gc sweeps them. Every
// round must end with the new snapshot whole; before the claim/sweep protocol of decision 0005,
// gc deleted chunks the backup had just found and touched (docs/decisions/0005-gc-and-writers.md).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, readFileSync, readdirSync, utimesSync, writeFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { errorMessage } from '../../src/common/index.js';
import { backupSource } from '../../src/orchestration/index.js';
import { Repository, chunkKey } from '../../src/repository/index.js';
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
  const repo = join(dir.path, 'repo');
  await Repository.init(repo, { chunkSize: CHUNK });
  const img = join(dir.path, 'disk.raw');
  writeFileSync(img, randomBytes(24 * MiB));
  const r = await Repository.open(repo);
  await r.deleteSnapshot((await backupSource({ repo, source: img })).id);
  // The image again with its chunks in the reverse of the order gc sweeps them (the directory
  // order), so that the backup's lookups and the sweep cross each other in every round.
  const chunks = new Map<string, Buffer>();
  const data = readFileSync(img);
  for (let at = 0; at < data.length; at += CHUNK) {
    const c = data.subarray(at, at + CHUNK);
    chunks.set(createHash('sha256').update(c).digest('hex'), c);
  }
  const swept = readdirSync(join(repo, 'chunks'), { recursive: true }).map((n) => basename(String(n)));
  writeFileSync(
    img,
    Buffer.concat(
      swept
        .filter((h) => chunks.has(h))
        .reverse()
        .map((h) => chunks.get(h)!),
    ),
  );
  let previous = (await backupSource({ repo, source: img })).id;
  const rounds = 16;
  const failures: string[] = [];
  let removed = 0;
  let claimed = 0;
  for (let round = 0; round < rounds; round++) {
    await r.deleteSnapshot(previous);
    ageChunks(repo);
    // Both start at once: the backup's lookups (after its worker threads boot) meet gc's sweep
    // (after its lock and mark phase).
    const backup = backupSource({ repo, source: img });
    const gc = r.gc({ graceMs: 0 });
    const [b] = await Promise.allSettled([backup]);
    const [g] = await Promise.allSettled([gc]);
    if (g.status === 'rejected') failures.push(`round ${round}: gc failed: ${errorMessage(g.reason)}`);
    else {
      removed += g.value.removedChunks;
      claimed += g.value.claimedMeanwhile ?? 0;
    }
    if (b.status === 'rejected') {
      failures.push(`round ${round}: the backup failed: ${errorMessage(b.reason)}`);
      continue;
    }
    previous = b.value.id;
    const m = await r.snapshot(previous);
    const idx = await r.readIndex(m, 0);
    let missing = 0;
    for (let i = 0; i < idx.count; i++)
      if (!existsSync(join(repo, chunkKey(idx.digests.subarray(i * 32, i * 32 + 32))))) missing++;
    if (missing) failures.push(`round ${round}: snapshot ${m.id} names ${missing} chunk(s) gc deleted`);
  }
  t.diagnostic(
    `${rounds} rounds, gc removed ${removed} chunks in all and found ${claimed} claimed while it swept; ${failures.length} failure(s)`,
  );
  assert.deepEqual(failures, []);
  assert.equal((await r.verify()).damaged.length, 0);
});
