// The repository on its own: chunk encoding (compression, encryption, tampering), indexes,
// retention, snapshots (damaged manifests, forget against readers), verify, prune per source, and
// garbage collection racing writers (claims against sweeps, a sweep that died, dead sessions).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import {
  existsSync,
  mkdirSync,
  readFileSync,
  readdirSync,
  renameSync,
  rmSync,
  utimesSync,
  writeFileSync,
} from 'node:fs';
import { hostname } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { HavenError } from '../common/index.js';
import { tempDir } from '../../test/support/tmp.js';
import {
  ChunkCodec,
  FLAG_ENCRYPTED,
  FLAG_ZSTD,
  Repository,
  ZERO_DIGEST,
  chunkKey,
  gc,
  indexBytes,
  prune,
  verify,
  readIndex,
  selectRetained,
  writeIndexHeader,
} from './index.js';

test('chunks: compressible data is compressed, random is not; encrypted chunks authenticate', async (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  const plain = new ChunkCodec(undefined);
  const text = Buffer.from('a disk block that repeats itself '.repeat(8000));
  const d = plain.digest(text);
  const stored = plain.encode(text, d);
  assert.ok(stored.length < text.length / 10);
  assert.equal(stored[5]! & FLAG_ZSTD, FLAG_ZSTD);
  assert.ok(plain.decode(stored, d).equals(text));
  const noise = randomBytes(256 * 1024);
  const sn = plain.encode(noise, plain.digest(noise));
  assert.equal(sn[5]! & FLAG_ZSTD, 0);

  const repo = await Repository.init(join(dir.path, 'enc'), { passphrase: 'twelve chars' });
  const codec = repo.codec();
  const dk = codec.digest(text);
  assert.ok(!dk.equals(d), 'an encrypted repository keys its digests');
  const enc = codec.encode(text, dk);
  assert.equal(enc[5]! & FLAG_ENCRYPTED, FLAG_ENCRYPTED);
  assert.ok(codec.decode(enc, dk).equals(text));
  // The same payload under another chunk's name fails authentication.
  assert.throws(
    () => codec.decode(enc, codec.digest(noise)),
    (e: HavenError) => e.code === 'CORRUPT' && /authentication failed/.test(e.message),
  );
  const flipped = Buffer.from(enc);
  flipped[flipped.length - 5]! ^= 1;
  assert.throws(
    () => codec.decode(flipped, dk),
    (e: HavenError) => e.code === 'CORRUPT' && /checksum/.test(e.message),
  );
  await assert.rejects(
    Repository.open(join(dir.path, 'enc'), { passphrase: 'not the one!' }),
    /wrong passphrase/,
  );
  assert.ok((await Repository.open(join(dir.path, 'enc'), { passphrase: 'twelve chars' })).encrypted);
  // Opened again in this process (the key derived once is kept in memory): the same keys, and a
  // wrong passphrase is still refused after the right one.
  const again = await Repository.open(join(dir.path, 'enc'), { passphrase: 'twelve chars' });
  assert.ok(again.codec().digest(text).equals(dk));
  await assert.rejects(
    Repository.open(join(dir.path, 'enc'), { passphrase: 'twelve chars ' }),
    /wrong passphrase/,
  );
});

test('deriving a passphrase key (scrypt) leaves the event loop free', async (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  const path = join(dir.path, 'enc');
  await Repository.init(path, { passphrase: 'a fresh passphrase' });
  // A passphrase this process has not derived yet (the one above is remembered): a wrong one
  // costs a whole derivation too, then fails to unwrap.
  let turns = 0;
  let longest = 0;
  let last = performance.now();
  const tick = setInterval(() => {
    const now = performance.now();
    longest = Math.max(longest, now - last);
    last = now;
    turns++;
  }, 2);
  const started = performance.now();
  const opens = [1, 2, 3].map(() => Repository.open(path, { passphrase: 'not derived yet' }));
  for (const o of opens) await assert.rejects(o, /wrong passphrase/);
  const took = performance.now() - started;
  clearInterval(tick);
  // scrypt at N=2^16 takes ~0.2 s of CPU here; the loop kept turning through it (a synchronous
  // derivation gives one turn and a gap as long as the derivation).
  assert.ok(took > 60, `a derivation took ${took.toFixed(0)} ms: was anything derived?`);
  assert.ok(turns >= 10, `the event loop turned ${turns} times in ${took.toFixed(0)} ms`);
  assert.ok(
    longest < took / 2,
    `the longest gap of the event loop was ${longest.toFixed(0)} of ${took.toFixed(0)} ms`,
  );
});

test('indexes check their shape; repositories refuse bad chunk sizes, re-init and foreign folders', async (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  const h = { chunkSize: 65536, size: 65536 * 3 + 5, count: 4 };
  const idx = Buffer.alloc(indexBytes(h));
  writeIndexHeader(idx, h);
  assert.equal(readIndex(idx, 'x').count, 4);
  assert.throws(() => readIndex(idx.subarray(0, idx.length - 1), 'x'), /does not match its header/);
  await assert.rejects(Repository.init(join(dir.path, 'a'), { chunkSize: 100_000 }), /power of two/);
  await Repository.init(join(dir.path, 'b'));
  await assert.rejects(Repository.init(join(dir.path, 'b')), /already a Haven repository/);
  writeFileSync(join(dir.path, 'stuff'), 'x');
  await assert.rejects(Repository.init(dir.path), /not empty and not a Haven repository/);
  await assert.rejects(Repository.open(join(dir.path, 'nothing')), /not a Haven repository/);
  assert.equal(chunkKey(ZERO_DIGEST), `chunks/00/${'00'.repeat(32)}`);
});

test('retention keeps the newest per period and what is protected', () => {
  const snaps = [
    '2026-01-01T10:00:00Z',
    '2026-01-01T12:00:00Z',
    '2026-01-02T09:00:00Z',
    '2026-01-09T09:00:00Z',
    '2026-02-15T09:00:00Z',
    '2026-03-01T08:00:00Z',
    '2026-03-01T09:00:00Z',
  ].map((createdAt, i) => ({ id: `s${i}`, createdAt, protected: i === 0 }));
  const keep = selectRetained(snaps, { last: 1, daily: 3, monthly: 2 });
  assert.deepEqual([...keep.keys()].sort(), ['s0', 's3', 's4', 's6']);
  assert.deepEqual(keep.get('s6'), ['last', 'daily', 'monthly']);
  assert.deepEqual(keep.get('s0'), ['protected']);
  assert.equal(selectRetained(snaps, {}).size, 1);
});

test('gc keeps chunks a running backup touched and removes what nothing uses', async (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  const repo = await Repository.init(join(dir.path, 'r'));
  const codec = repo.codec();
  const put = async (b: Buffer) => {
    const d = codec.digest(b);
    await repo.putChunk(d, codec.encode(b, d));
    return d;
  };
  const old = Date.now() / 1000 - 3600;
  const age = (d: Buffer) => utimesSync(join(repo.location, chunkKey(d)), old, old);
  const orphan = await put(randomBytes(1000));
  const reused = await put(randomBytes(1000));
  age(orphan);
  age(reused);
  // A backup running now finds `reused` already stored: it touches it.
  const session = await repo.beginSession();
  assert.equal(await repo.putChunk(reused, Buffer.alloc(0)), false);
  const r = await gc(repo, { graceMs: 1000 });
  assert.equal(r.removedChunks, 1);
  assert.equal(await repo.hasChunk(orphan), false);
  assert.equal(await repo.hasChunk(reused), true);
  await session.end();
  await assert.rejects(repo.snapshot('nope'), (e: HavenError) => e.code === 'NOT_FOUND');
  // An empty id (e.g. `haven restore ''`) names what is wrong rather than "no snapshot ".
  await assert.rejects(
    repo.snapshot(''),
    (e: HavenError) => e.code === 'INVALID_ARGUMENT' && /no snapshot id given/.test(e.message),
  );
  await assert.rejects(
    repo.snapshot('../x'),
    (e: HavenError) => e.code === 'NOT_FOUND' && e.message.includes('"../x"'),
  );
  // A GC lock left by a dead process is taken over; one held by a live process is respected.
  writeFileSync(join(repo.location, 'locks', 'gc'), JSON.stringify({ pid: 999999, host: hostname() }));
  await gc(repo);
  writeFileSync(
    join(repo.location, 'locks', 'gc'),
    JSON.stringify({ pid: process.pid, host: 'another-host' }),
  );
  await assert.rejects(gc(repo), /already running/);
  assert.ok(readFileSync(join(repo.location, 'config.json'), 'utf8').includes('haven-repository'));
});

test('claims racing a gc sweep: a chunk a writer found stays, one gc took first is written again', async (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  const repo = await Repository.init(join(dir.path, 'r'));
  const codec = repo.codec();
  const chunks = Array.from({ length: 300 }, () => {
    const b = randomBytes(512);
    const d = codec.digest(b);
    return { d, stored: codec.encode(b, d), path: join(repo.location, chunkKey(d)) };
  });
  const failures: string[] = [];
  for (let round = 0; round < 20; round++) {
    for (const c of chunks) await repo.putChunk(c.d, c.stored);
    const old = Date.now() / 1000 - 3600;
    for (const c of chunks) utimesSync(c.path, old, old);
    // The writer goes through the chunks in the reverse of the order the sweep lists them, so
    // that the two cross once per round wherever they meet.
    const byName = new Map(chunks.map((c) => [c.d.toString('hex'), c]));
    const order = readdirSync(join(repo.location, 'chunks'), { recursive: true })
      .map((n) => byName.get(String(n).slice(-64)))
      .filter((c) => c !== undefined)
      .reverse();
    const session = await repo.beginSession();
    const writer = (async () => {
      for (const c of order) await repo.putChunk(c.d, c.stored);
    })();
    const [w, g] = await Promise.allSettled([writer, gc(repo, { graceMs: 0 })]);
    await session.end();
    if (w.status === 'rejected') failures.push(`round ${round}: the writer failed: ${String(w.reason)}`);
    if (g.status === 'rejected') failures.push(`round ${round}: gc failed: ${String(g.reason)}`);
    const missing = chunks.filter((c) => !existsSync(c.path)).length;
    if (missing) failures.push(`round ${round}: ${missing} chunk(s) the writer holds were deleted`);
  }
  assert.deepEqual(failures, []);
});

test('a sweep that died with a chunk moved aside: the next gc puts it back first', async (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  const repo = await Repository.init(join(dir.path, 'r'));
  const codec = repo.codec();
  const b = randomBytes(1000);
  const d = codec.digest(b);
  await repo.putChunk(d, codec.encode(b, d));
  const path = join(repo.location, chunkKey(d));
  renameSync(path, join(dirname(path), `.gc-${basename(path)}`));
  // Readers find it meanwhile.
  assert.ok(codec.decode(await repo.getChunk(d), d).equals(b));
  // A session claims it (younger than any cutoff), so the gc keeps it even unreferenced.
  const s = await repo.beginSession();
  assert.equal(await repo.hasChunk(d), false, 'not under its name while it is aside');
  await repo.putChunk(d, codec.encode(b, d));
  const r = await gc(repo, { graceMs: 0 });
  await s.end();
  assert.equal(r.removedChunks, 0);
  assert.ok(existsSync(path));
  assert.deepEqual(readdirSync(dirname(path)), [basename(path)]);
});

/** A snapshot of `blocks` (a null block is zeroes) from `source`, made as a backup makes one. */
async function makeSnapshot(
  repo: Repository,
  source: string,
  blocks: (Buffer | null)[],
  createdAt = new Date().toISOString(),
) {
  const codec = repo.codec();
  const cs = repo.config.chunkSize;
  const count = blocks.length;
  const idx = Buffer.alloc(indexBytes({ chunkSize: cs, size: count * cs, count }));
  writeIndexHeader(idx, { chunkSize: cs, size: count * cs, count });
  const session = await repo.beginSession();
  blocks.forEach((b, i) => {
    if (b) codec.digest(b).copy(idx, 32 + i * 32);
  });
  for (const b of blocks) if (b) await repo.putChunk(codec.digest(b), codec.encode(b, codec.digest(b)));
  const id = `${createdAt.replace(/[-:.]/g, '')}-${randomBytes(3).toString('hex')}`;
  const { key, sha256 } = await repo.writeIndex(id, 0, idx);
  const [kind, name] = source.split(':') as [string, string];
  const manifest = {
    id,
    version: 1,
    createdAt,
    source: { kind, name },
    disks: [
      {
        name: 'disk0',
        size: count * cs,
        chunkSize: cs,
        index: key,
        indexSha256: sha256,
        dataChunks: blocks.filter((b) => b).length,
        zeroChunks: blocks.filter((b) => !b).length,
      },
    ],
    stats: { readBytes: 0, newChunks: 0, storedBytes: 0, reusedChunks: 0, seconds: 0 },
    consistency: 'crash' as const,
    tags: [],
  };
  await repo.commitSnapshot(manifest);
  await session.end();
  return manifest;
}

test('forget and readers: a snapshot being read is refused, one being forgotten is refused to readers', async (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  const repo = await Repository.init(join(dir.path, 'r'), { chunkSize: 65536 });
  const a = await makeSnapshot(repo, 'vm:a', [randomBytes(65536)]);
  const use = await repo.useSnapshot(a.id);
  await assert.rejects(repo.deleteSnapshot(a.id), /in use: read by a restore or mount running now/);
  await use.end();
  // A backup that takes it as its parent holds it too.
  const s = await repo.beginSession(a.id);
  await assert.rejects(repo.deleteSnapshot(a.id), /in use: the base of a backup/);
  await s.end();
  // A forget that was interrupted after its marker: users refuse the snapshot; forget again ends it.
  writeFileSync(join(repo.location, 'snapshots', a.id, 'forgetting'), '{}');
  await assert.rejects(repo.useSnapshot(a.id), /is being forgotten/);
  await assert.rejects(repo.beginSession(a.id), /is being forgotten/);
  assert.deepEqual(
    readdirSync(join(repo.location, 'sessions')),
    [],
    'a refused user leaves no session behind',
  );
  await repo.deleteSnapshot(a.id);
  assert.deepEqual(readdirSync(join(repo.location, 'snapshots', a.id)), [], 'the forget finished');
  await assert.rejects(repo.useSnapshot(a.id), (e: HavenError) => e.code === 'NOT_FOUND');
});

test('a damaged manifest is reported and forgettable; the other snapshots go on working', async (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  const repo = await Repository.init(join(dir.path, 'r'), { chunkSize: 65536 });
  const shared = randomBytes(65536);
  const good = await makeSnapshot(
    repo,
    'vm:a',
    [shared, randomBytes(65536), null],
    '2026-01-01T00:00:00.000Z',
  );
  const bad = await makeSnapshot(repo, 'vm:a', [shared, randomBytes(65536)], '2026-01-02T00:00:00.000Z');
  const other = await makeSnapshot(repo, 'vm:b', [randomBytes(65536)], '2026-01-03T00:00:00.000Z');
  writeFileSync(join(repo.location, 'snapshots', bad.id, 'manifest.json'), '{"id": "trunc');
  const scan = await repo.scanSnapshots();
  assert.deepEqual(
    scan.snapshots.map((s) => s.id),
    [good.id, other.id],
  );
  assert.equal(scan.damaged.length, 1);
  assert.match(
    scan.damaged[0]!.reason,
    new RegExp(`snapshot ${bad.id}: its manifest is damaged.*haven repo forget ${bad.id}`),
  );
  const st = await repo.stats();
  assert.equal(st.snapshots, 2);
  assert.equal(st.damagedSnapshots[0]!.id, bad.id);
  // Verify checks the rest and names the damaged manifest.
  const v = await verify(repo);
  assert.deepEqual(v.snapshots, [good.id, other.id]);
  assert.deepEqual(
    v.damaged.map((d) => [d.snapshot, d.disk]),
    [[bad.id, '(manifest)']],
  );
  assert.equal((await verify(repo, [bad.id])).damaged[0]!.disk, '(manifest)');
  // gc deletes nothing while a snapshot's chunks are unknown.
  await assert.rejects(
    gc(repo, { graceMs: 0 }),
    new RegExp(`gc deletes nothing while a snapshot cannot be read.*${bad.id}`),
  );
  // Prune leaves it alone (its date and source are unknown) and says so; forget removes it.
  const p = await prune(repo, { last: 1 });
  assert.deepEqual(
    p.damaged.map((d) => d.id),
    [bad.id],
  );
  await repo.deleteSnapshot(bad.id);
  assert.equal((await repo.scanSnapshots()).damaged.length, 0);
  const g = await gc(repo, { graceMs: 0 });
  assert.equal(g.removedChunks, 1, "the forgotten snapshot's own chunk");
  assert.equal((await verify(repo)).damaged.length, 0);
});

test('verify names every damaged chunk file with its own reason', async (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  const repo = await Repository.init(join(dir.path, 'r'), { chunkSize: 65536 });
  const blocks = [randomBytes(65536), randomBytes(65536), randomBytes(65536)];
  const m = await makeSnapshot(repo, 'vm:a', blocks);
  const codec = repo.codec();
  const paths = blocks.map((b) => join(repo.location, chunkKey(codec.digest(b))));
  writeFileSync(paths[0]!, readFileSync(paths[0]!).subarray(0, 100)); // truncated
  const flipped = readFileSync(paths[1]!);
  flipped[flipped.length - 1]! ^= 1;
  writeFileSync(paths[1]!, flipped); // content does not match
  const v = await verify(repo);
  assert.equal(v.damagedChunks, 2);
  assert.deepEqual(
    v.damaged.map((d) => [d.snapshot, d.offsets]),
    [[m.id, [0, 65536]]],
  );
  assert.equal(v.chunkDamage.length, 2);
  const reasons = new Map(v.chunkDamage.map((c) => [c.key, c.reason]));
  assert.match(reasons.get(chunkKey(codec.digest(blocks[0]!)))!, /truncated/);
  assert.match(
    reasons.get(chunkKey(codec.digest(blocks[1]!)))!,
    /checksum mismatch|does not match its digest/,
  );
});

test('prune applies retention per source, names sources as repo list does, refuses to empty a source', async (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  const repo = await Repository.init(join(dir.path, 'r'), { chunkSize: 65536 });
  const block = randomBytes(65536);
  const a1 = await makeSnapshot(repo, 'vm:demo', [block], '2026-01-01T00:00:00.000Z');
  const a2 = await makeSnapshot(repo, 'vm:demo', [block], '2026-01-02T00:00:00.000Z');
  const b1 = await makeSnapshot(repo, 'volume:data', [block], '2026-01-01T12:00:00.000Z');
  // One of each source is kept, not one in all.
  const dry = await prune(repo, { last: 1 }, { dryRun: true });
  assert.deepEqual(
    dry.sources.map((s) => [s.source, s.kept.map((k) => k.id), s.removed]),
    [
      ['vm:demo', [a2.id], [a1.id]],
      ['volume:data', [b1.id], []],
    ],
  );
  assert.deepEqual(
    (await prune(repo, { last: 1 }, { dryRun: true, source: 'vm:demo' })).sources.map((s) => s.source),
    ['vm:demo'],
  );
  assert.deepEqual(
    (await prune(repo, { last: 1 }, { dryRun: true, source: 'demo' })).sources.map((s) => s.source),
    ['vm:demo'],
  );
  await assert.rejects(
    prune(repo, { last: 1 }, { source: 'vm:nothing' }),
    (e: HavenError) => e.code === 'NOT_FOUND' && /sources are: vm:demo, volume:data/.test(e.message),
  );
  await assert.rejects(
    prune(repo, { last: 0 }),
    (e: HavenError) =>
      e.code === 'INVALID_ARGUMENT' && /keeps no snapshot of vm:demo.*--delete-all/.test(e.message),
  );
  assert.equal((await repo.listSnapshots()).length, 3, 'a refused prune deletes nothing');
  const all = await prune(repo, { last: 0 }, { source: 'volume:data', deleteAll: true });
  assert.deepEqual(all.sources[0]!.removed, [b1.id]);
  // A snapshot in use is kept this time, and named.
  const use = await repo.useSnapshot(a1.id);
  const p = await prune(repo, { last: 1 });
  await use.end();
  assert.deepEqual(
    p.inUse.map((x) => x.id),
    [a1.id],
  );
  assert.deepEqual(
    (await repo.listSnapshots()).map((s) => s.id),
    [a1.id, a2.id],
  );
});

test('stats: the ratio is of the data stored, not of zeroes; a failed encrypted init leaves nothing behind', async (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  const repo = await Repository.init(join(dir.path, 'r'), { chunkSize: 65536 });
  const block = randomBytes(65536);
  // Two snapshots of one mostly empty disk with the same random block: data 2 × 64 KiB, stored once.
  await makeSnapshot(repo, 'vm:a', [block, ...Array<null>(99).fill(null)]);
  await makeSnapshot(repo, 'vm:a', [block, ...Array<null>(99).fill(null)]);
  const s = await repo.stats();
  assert.equal(s.dataBytes, 2 * 65536);
  assert.equal(s.logicalBytes, 200 * 65536);
  assert.ok(s.ratio > 1.9 && s.ratio < 2.1, `ratio ${s.ratio}`);
  const enc = join(dir.path, 'enc');
  await assert.rejects(Repository.init(enc, { passphrase: 'short' }), /at least 8 characters/);
  assert.equal(existsSync(enc), false, 'nothing was created');
  // What an older Haven left after that failure (empty folders) does not block the retry.
  for (const d of ['', 'tmp', 'chunks', 'snapshots', 'sessions', 'locks'])
    mkdirSync(join(enc, d), { recursive: true });
  assert.ok((await Repository.init(enc, { passphrase: 'long enough now' })).encrypted);
});

test('a writer killed with -9 does not hold gc back: its session (even under a reused pid) is recognised as dead', async (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  const repo = await Repository.init(join(dir.path, 'r'));
  const codec = repo.codec();
  const b = randomBytes(1000);
  const d = codec.digest(b);
  await repo.putChunk(d, codec.encode(b, d));
  const old = Date.now() / 1000 - 3600;
  utimesSync(join(repo.location, chunkKey(d)), old, old);
  // A session of a process that is gone, begun before the chunk was last used.
  const dead = { id: 'x', pid: 999999, host: hostname(), startedAt: (old - 60) * 1000 };
  writeFileSync(join(repo.location, 'sessions', 'x.json'), JSON.stringify(dead));
  // And one whose pid was reused since (by this process): its start time tells them apart.
  const reused = { ...dead, id: 'y', pid: process.pid, start: '1' };
  writeFileSync(join(repo.location, 'sessions', 'y.json'), JSON.stringify(reused));
  const r = await gc(repo, { graceMs: 0 });
  assert.equal(r.removedChunks, 1, 'the cutoff was not held back by the dead session');
  assert.deepEqual(readdirSync(join(repo.location, 'sessions')), []);
});

test('verify beside prune and gc: a snapshot forgotten (and its chunks collected) while it runs is no damage', async (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  const repo = await Repository.init(join(dir.path, 'r'), { chunkSize: 65536 });
  const codec = repo.codec();
  const keep = await makeSnapshot(repo, 'vm:a', [randomBytes(65536)], '2026-01-01T00:00:00.000Z');
  const blocks = Array.from({ length: 8 }, () => randomBytes(65536));
  const goes = await makeSnapshot(repo, 'vm:a', blocks, '2026-01-02T00:00:00.000Z');
  let forgotten = false;
  const v = await verify(repo, undefined, {
    concurrency: 1,
    onProgress: () => {
      if (forgotten) return;
      forgotten = true;
      // What a forget and a gc running now do, between two chunk reads of this verify.
      rmSync(join(repo.location, 'snapshots', goes.id), { recursive: true });
      for (const b of blocks) rmSync(join(repo.location, chunkKey(codec.digest(b))), { force: true });
    },
  });
  assert.ok(forgotten);
  assert.deepEqual(v.damaged, []);
  assert.deepEqual(v.chunkDamage, []);
  assert.equal(v.damagedChunks, 0);
  assert.deepEqual(v.snapshots, [keep.id, goes.id]);
});

test('gc beside prune: a snapshot forgotten between gc listing it and reading its index is no damage', async (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  const repo = await Repository.init(join(dir.path, 'r'), { chunkSize: 65536 });
  const keep = await makeSnapshot(repo, 'vm:a', [randomBytes(65536)], '2026-01-01T00:00:00.000Z');
  const goes = await makeSnapshot(
    repo,
    'vm:a',
    [randomBytes(65536), randomBytes(65536)],
    '2026-01-02T00:00:00.000Z',
  );
  // Found by scripts/chaos: gc refused as "corrupt" when a prune removed a snapshot it had listed.
  const openIndex = repo.openIndex.bind(repo);
  repo.openIndex = async (s, d) => {
    if (s.id === goes.id) await repo.deleteSnapshot(goes.id); // what a concurrent prune does now
    return openIndex(s, d);
  };
  const r = await gc(repo, { graceMs: 0 });
  assert.equal(r.removedChunks, 2, "the forgotten snapshot's chunks were collected");
  assert.deepEqual(
    (await repo.listSnapshots()).map((s) => s.id),
    [keep.id],
  );
  assert.deepEqual((await verify(repo)).damaged, []);
});
