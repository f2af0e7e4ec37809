// Incrementals proportional to the change (docs/decisions/0011-repository-incremental-index.md): after
// scattered 64 KiB changes the repository grows by about the changed bytes (not a chunk per
// change), the incremental restores byte for byte, its parent still does, and an incremental over
// a snapshot of index version 1 (an older Haven's) works. And the repository's seam: the same
// backups through a second, in-memory backend that counts its calls (nothing reaches a disk).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import {
  closeSync,
  copyFileSync,
  ftruncateSync,
  openSync,
  readdirSync,
  readFileSync,
  statSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { join } from 'node:path';
import { openRawFile } from '../../block/index.js';
import {
  Repository,
  gc,
  indexBytes,
  verify,
  writeIndexHeader,
  type RepositoryBackend,
  type SnapshotManifest,
} from '../../repository/index.js';
import { MemoryBackend } from '../../../test/support/memory-backend.js';
import { tempDir } from '../../../test/support/tmp.js';
import { backup, type Range } from './engine.js';
import { restore } from './restore.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const sha = (p: string) => createHash('sha256').update(readFileSync(p)).digest('hex');

function du(dir: string): number {
  return readdirSync(dir).reduce((n, f) => {
    const p = join(dir, f);
    const s = statSync(p);
    return n + (s.isDirectory() ? du(p) : s.size);
  }, 0);
}

/** A disk image: random data in its first three quarters, a hole after. */
function makeDisk(path: string, size: number): void {
  const fd = openSync(path, 'w');
  ftruncateSync(fd, size);
  for (let at = 0; at < (size * 3) / 4; at += MiB) writeSync(fd, randomBytes(MiB), 0, MiB, at);
  closeSync(fd);
}

/** Writes fresh random data over each range of the image; returns the ranges (what a bitmap marks). */
function change(path: string, ranges: Range[]): Range[] {
  const fd = openSync(path, 'r+');
  for (const r of ranges) writeSync(fd, randomBytes(r.length), 0, r.length, r.offset);
  closeSync(fd);
  return ranges;
}

async function backUp(repo: Repository, image: string, parent?: SnapshotManifest, changed?: Range[]) {
  const device = openRawFile(image, { readOnly: true });
  try {
    return await backup(repo, {
      source: { kind: 'image', name: 'disk' },
      disks: [{ name: 'disk0', device, ...(changed ? { changed } : {}) }],
      ...(parent ? { parent } : {}),
      workers: 2,
    });
  } finally {
    await device.close();
  }
}

async function restoredHash(repo: Repository, snap: SnapshotManifest, dir: string): Promise<string> {
  const out = join(dir, `restored-${snap.id}.img`);
  const fd = openSync(out, 'w');
  ftruncateSync(fd, snap.disks[0]!.size);
  closeSync(fd);
  const dev = openRawFile(out);
  try {
    await restore(repo, snap, 0, dev, { fresh: true, workers: 2 });
  } finally {
    await dev.close();
  }
  return sha(out);
}

test('scattered 64 KiB changes grow the repository by at most 1.5× the changed bytes; the incremental restores byte-exact', async (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  const image = join(dir.path, 'disk.img');
  makeDisk(image, 64 * MiB);
  const repoDir = join(dir.path, 'repo');
  const repo = await Repository.init(repoDir); // 256 KiB chunks
  const full = await backUp(repo, image);
  const original = join(dir.path, 'original.img');
  copyFileSync(image, original);
  const before = du(repoDir);
  // 1.5% of the disk: 16 blocks of 64 KiB, one every 3 MiB + 192 KiB (never two in a chunk).
  const ranges = change(
    image,
    Array.from({ length: 16 }, (_, i) => ({ offset: i * (3 * MiB + 192 * KiB), length: 64 * KiB })),
  );
  const inc = await backUp(repo, image, full, ranges);
  const changed = ranges.length * 64 * KiB;
  const growth = du(repoDir) - before;
  t.diagnostic(
    `changed ${changed} bytes, the repository grew by ${growth} (${(growth / changed).toFixed(2)}×)`,
  );
  assert.equal(inc.parent, full.id);
  assert.equal(inc.stats.readBytes, changed, 'only the changed blocks were read');
  assert.ok(growth <= 1.5 * changed, `growth ${growth} is more than 1.5× the ${changed} changed bytes`);
  assert.equal(await restoredHash(repo, inc, dir.path), sha(image), 'the incremental restores byte for byte');
  assert.equal(await restoredHash(repo, full, dir.path), sha(original), 'its parent still does');
  assert.deepEqual((await verify(repo)).damaged, []);
  // The parent gone, gc keeps all the incremental needs (its pages and the parent's chunks).
  await repo.deleteSnapshot(full.id);
  await gc(repo, { graceMs: 0 });
  assert.equal(await restoredHash(repo, inc, dir.path), sha(image));
});

test('a change smaller than a granule, unaligned, or spanning chunks restores byte-exact; a resized disk too', async (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  const image = join(dir.path, 'disk.img');
  makeDisk(image, 16 * MiB);
  const repo = await Repository.init(join(dir.path, 'repo'));
  const full = await backUp(repo, image);
  const ranges = change(image, [
    { offset: MiB + 1000, length: 4 * KiB },
    { offset: 5 * MiB - 100 * KiB, length: 700 * KiB }, // across chunk boundaries
    { offset: 15 * MiB + 3, length: 5 }, // in the hole
  ]);
  const inc = await backUp(repo, image, full, ranges);
  assert.equal(await restoredHash(repo, inc, dir.path), sha(image));
  // Grown by 5 MiB and some (not a granule multiple), with data in the new space.
  const fd = openSync(image, 'r+');
  ftruncateSync(fd, 21 * MiB + 12345);
  writeSync(fd, randomBytes(100 * KiB), 0, 100 * KiB, 18 * MiB);
  closeSync(fd);
  const grown = await backUp(repo, image, inc, change(image, [{ offset: 2 * MiB, length: 64 * KiB }]));
  assert.equal(grown.disks[0]!.size, 21 * MiB + 12345);
  assert.equal(await restoredHash(repo, grown, dir.path), sha(image));
});

/** A snapshot with a version-1 index (flat: one digest per chunk), as an older Haven wrote it. */
async function v1Snapshot(repo: Repository, image: string): Promise<SnapshotManifest> {
  const data = readFileSync(image);
  const cs = repo.config.chunkSize;
  const count = Math.ceil(data.length / cs);
  const idx = Buffer.alloc(indexBytes({ chunkSize: cs, size: data.length, count }));
  writeIndexHeader(idx, { chunkSize: cs, size: data.length, count });
  const codec = repo.codec();
  const session = await repo.beginSession();
  for (let c = 0; c < count; c++) {
    const chunk = data.subarray(c * cs, (c + 1) * cs);
    if (chunk.equals(Buffer.alloc(chunk.length))) continue;
    const d = codec.digest(chunk);
    d.copy(idx, 32 + c * 32);
    await repo.putChunk(d, codec.encode(chunk, d));
  }
  const id = repo.newSnapshotId();
  const { key, sha256 } = await repo.writeIndex(id, 0, idx);
  const m: SnapshotManifest = {
    id,
    version: 1,
    createdAt: new Date().toISOString(),
    source: { kind: 'image', name: 'disk' },
    disks: [
      {
        name: 'disk0',
        size: data.length,
        chunkSize: cs,
        index: key,
        indexSha256: sha256,
        dataChunks: 0,
        zeroChunks: 0,
      },
    ],
    consistency: 'crash',
    stats: { readBytes: 0, newChunks: 0, storedBytes: 0, reusedChunks: 0, seconds: 0 },
    tags: [],
  };
  await repo.commitSnapshot(m);
  await session.end();
  return m;
}

test('old repositories: a version-1 snapshot restores, and an incremental over it is byte-exact', async (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  const image = join(dir.path, 'disk.img');
  makeDisk(image, 8 * MiB + 64 * KiB);
  const repo = await Repository.init(join(dir.path, 'repo'));
  const old = await v1Snapshot(repo, image);
  assert.equal(await restoredHash(repo, old, dir.path), sha(image));
  const inc = await backUp(
    repo,
    image,
    old,
    change(image, [{ offset: 3 * MiB + 64 * KiB, length: 64 * KiB }]),
  );
  assert.equal(await restoredHash(repo, inc, dir.path), sha(image));
  assert.deepEqual((await verify(repo)).damaged, []);
});

test('the repository runs on a second backend: every byte through it (in memory, counted), none on a disk', async (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  const image = join(dir.path, 'disk.img');
  makeDisk(image, 8 * MiB);
  const mem = new MemoryBackend();
  const backend: RepositoryBackend = mem;
  await Repository.init(backend, { passphrase: 'a passphrase of some length' });
  const repo = await Repository.open(backend, { passphrase: 'a passphrase of some length' });
  assert.ok(repo.encrypted);
  const full = await backUp(repo, image);
  const first = join(dir.path, 'first.img');
  copyFileSync(image, first);
  const ranges = change(image, [
    { offset: 2 * MiB, length: 64 * KiB },
    { offset: 5 * MiB + 7, length: 3 },
  ]);
  const inc = await backUp(repo, image, full, ranges);
  assert.ok((mem.written.chunks ?? 0) > 6 * MiB, 'the chunks were written through the backend');
  assert.ok(mem.calls.claim! > 0 && mem.calls.sync! >= 2, 'claims and syncs went through it');
  assert.equal(await restoredHash(repo, inc, dir.path), sha(image));
  assert.equal(await restoredHash(repo, full, dir.path), sha(first));
  assert.deepEqual((await verify(repo)).damaged, []);
  await repo.deleteSnapshot(full.id);
  const swept = await gc(repo, { graceMs: 0 });
  assert.ok(swept.removedChunks > 0, 'the chunks only the forgotten snapshot used were collected');
  assert.equal(await restoredHash(repo, inc, dir.path), sha(image));
  assert.equal((await repo.stats()).snapshots, 1);
});

test('a damaged index page is named by verify like a damaged chunk, and a restore refuses it', async (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  const image = join(dir.path, 'disk.img');
  makeDisk(image, 4 * MiB);
  const repoDir = join(dir.path, 'repo');
  const repo = await Repository.init(repoDir);
  const snap = await backUp(repo, image);
  const page = (await repo.openIndex(snap, 0)).pageDigest(0)!.toString('hex');
  writeFileSync(join(repoDir, 'chunks', page.slice(0, 2), page), 'torn');
  const v = await verify(repo);
  assert.deepEqual(
    v.chunkDamage.map((c) => c.key),
    [`chunks/${page.slice(0, 2)}/${page}`],
  );
  assert.deepEqual(
    v.damaged.map((d) => [d.snapshot, d.disk, d.offsets]),
    [[snap.id, 'disk0', [0]]],
  );
  await assert.rejects(restoredHash(repo, snap, dir.path), /index page 0 .*cannot be read/);
});
