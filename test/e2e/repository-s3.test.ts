// The repository in S3, on a real radosgw (scripts/ceph): backup and restore bit-identically, an
// incremental that stores nothing new, verify finding a flipped byte inside a pack, kill -9 of
// a backup in progress, S3 Object Lock refusing prune, gc and a direct DeleteObject, and bad input
// (wrong endpoint, wrong credentials, a bucket without object lock) failing clearly and quickly;
// pack files (docs/decisions/0024-s3-pack-files.md): deduplication across packs, ranged reads,
// gc of packs nothing uses, and Object Lock retention extended on the old packs a snapshot reuses.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { closeSync, openSync, readFileSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  CreateBucketCommand,
  DeleteObjectCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListObjectVersionsCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
} from '@aws-sdk/client-s3';
import { HavenError } from '../../src/common/index.js';
import { backupSource, copySnapshots, restoreSnapshot } from '../../src/protection/index.js';
import { Repository, chunkKey, gc, prune, verify, type S3Backend } from '../../src/repository/index.js';
import { startCeph, type Ceph } from '../support/ceph.js';
import { HAVEN_BIN } from '../support/proc.js';
import { tempDir } from '../support/tmp.js';

const MiB = 1024 * 1024;
let ceph: Ceph;
let s3: S3Client;
const dir = tempDir('haven-s3-');

before(async () => {
  ceph = await startCeph();
  process.env.HAVEN_S3_CREDENTIALS = join(ceph.dir, 'env');
  process.env.HAVEN_S3_INDEX_CACHE = join(dir.path, 'index-cache');
  s3 = new S3Client({
    endpoint: ceph.s3.endpoint,
    region: ceph.s3.region,
    forcePathStyle: true,
    credentials: { accessKeyId: ceph.s3.accessKeyId, secretAccessKey: ceph.s3.secretAccessKey },
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
  });
});
after(async () => {
  s3?.destroy();
  await ceph?.stop();
  dir.cleanup();
});

const bucket = async (name: string, lock = false) => {
  await s3.send(
    new CreateBucketCommand({ Bucket: name, ...(lock ? { ObjectLockEnabledForBucket: true } : {}) }),
  );
  return `s3://${name}/repo`;
};

function makeImage(path: string, size: number, seed: number): void {
  writeFileSync(path, '');
  const fd = openSync(path, 'r+');
  for (let at = 0; at < size; at += MiB) {
    const k = (at / MiB + seed) % 5;
    if (k === 0) continue; // a hole
    writeSync(fd, k === 1 ? Buffer.alloc(MiB, seed) : randomBytes(MiB), 0, MiB, at);
  }
  closeSync(fd);
}

const sha = (p: string) => createHash('sha256').update(readFileSync(p)).digest('hex');

async function objects(url: string, under: string, passphrase?: string): Promise<number> {
  const r = await Repository.open(url, passphrase !== undefined ? { passphrase } : {});
  let n = 0;
  for await (const o of r.backend.list(under)) if (o) n++;
  r.close();
  return n;
}

test('S3: round trip bit-identical, an incremental stores nothing new, verify finds a flipped byte', async () => {
  const repo = await bucket('roundtrip');
  (await Repository.init(repo)).close();
  const img = join(dir.path, 'a.raw');
  makeImage(img, 64 * MiB, 1);
  const t0 = performance.now();
  const m1 = await backupSource({ repo, source: img });
  const secs = (performance.now() - t0) / 1000;
  const out = join(dir.path, 'a.out');
  await restoreSnapshot({ repo, snapshot: m1.id, to: out });
  assert.equal(sha(out), sha(img));
  const m2 = await backupSource({ repo, source: img });
  assert.equal(m2.stats.newChunks, 0, 'the second backup stores nothing new');
  const chunks = await objects(repo, 'chunks/');
  const packs = await objects(repo, 'packs/');
  console.log(
    `# S3 backup: 64 MiB in ${secs.toFixed(2)} s (${(m1.stats.readBytes / MiB / secs).toFixed(1)} MiB/s read), ${m1.stats.newChunks} new chunks in ${packs} packs`,
  );
  assert.equal(chunks, m1.stats.newChunks, 'every chunk stored is found in a pack');
  assert.ok(
    packs >= 2 && packs <= Math.ceil(m1.stats.storedBytes / (8 * MiB)),
    `chunks are packed (${packs} packs)`,
  );
  // Flip a byte in the middle of one chunk inside its pack, straight in the bucket.
  const r = await Repository.open(repo);
  const victim = (await (await r.openIndex(m1, 0)).chunks())[3]!;
  const at = (await (r.backend as S3Backend).chunkLocation(victim.digest))!;
  assert.ok(at, 'the chunk is in a pack');
  const key = `repo/${at.pack}`;
  const body = Buffer.from(
    await (
      await s3.send(new GetObjectCommand({ Bucket: 'roundtrip', Key: key }))
    ).Body!.transformToByteArray(),
  );
  body[at.offset + (at.length >> 1)]! ^= 0x40;
  await s3.send(new PutObjectCommand({ Bucket: 'roundtrip', Key: key, Body: body }));
  const v = await verify(r);
  assert.equal(v.damagedChunks, 1);
  assert.deepEqual(v.damaged.map((d) => d.snapshot).sort(), [m1.id, m2.id].sort());
  await assert.rejects(
    restoreSnapshot({ repo, snapshot: m1.id, to: join(dir.path, 'bad.out') }),
    (e: HavenError) => e.code === 'CORRUPT',
  );
  r.close();
});

test('S3: kill -9 during a backup: no snapshot appears, the next backup succeeds, gc removes the leftovers', async () => {
  const repo = await bucket('killed');
  (await Repository.init(repo)).close();
  const img = join(dir.path, 'big.raw');
  makeImage(img, 192 * MiB, 3);
  const child = spawn(HAVEN_BIN, ['backup', img, '--repo', repo], { stdio: 'ignore', env: process.env });
  const exited = new Promise((r) => child.once('exit', r));
  for (let i = 0; (await objects(repo, 'packs/')) < 2; i++) {
    assert.ok(i < 600 && child.exitCode === null, 'the backup was still running when killed');
    await sleep(50);
  }
  child.kill('SIGKILL');
  await exited;
  const r = await Repository.open(repo);
  assert.equal((await r.listSnapshots()).length, 0, 'a killed backup leaves no visible snapshot');
  const m = await backupSource({ repo, source: img });
  const out = join(dir.path, 'big.out');
  await restoreSnapshot({ repo, snapshot: m.id, to: out });
  assert.equal(sha(out), sha(img));
  const other = join(dir.path, 'other.raw');
  makeImage(other, 128 * MiB, 9);
  const c2 = spawn(HAVEN_BIN, ['backup', other, '--repo', repo], { stdio: 'ignore', env: process.env });
  const e2 = new Promise((res) => c2.once('exit', res));
  const had = await objects(repo, 'packs/');
  for (let i = 0; (await objects(repo, 'packs/')) < had + 1; i++) {
    assert.ok(i < 600 && c2.exitCode === null, 'the second backup was still running when killed');
    await sleep(50);
  }
  c2.kill('SIGKILL');
  await e2;
  const swept = await gc(r, { graceMs: 0 });
  assert.ok(swept.packs!.removedPacks > 0, 'the dead backup left packs that gc removed');
  const v = await verify(r);
  assert.equal(v.damaged.length, 0);
  assert.equal((await r.stats()).chunks, v.chunks, 'every chunk left is used by a snapshot');
  r.close();
});

test('S3 Object Lock: prune, gc and a direct DeleteObject cannot remove a retained snapshot', async () => {
  const repo = await bucket('locked', true);
  (await Repository.init(repo, { objectLock: { mode: 'COMPLIANCE', days: 1 } })).close();
  const img = join(dir.path, 'l.raw');
  makeImage(img, 16 * MiB, 4);
  const m = await backupSource({ repo, source: img });
  const r = await Repository.open(repo);
  const s = await r.snapshot(m.id);
  assert.ok(s.retainUntil && Date.parse(s.retainUntil) > Date.now() + 23 * 3600_000);
  const p = await prune(r, {}, { deleteAll: true });
  assert.deepEqual(
    p.inUse.map((x) => x.id),
    [m.id],
  );
  assert.match(p.inUse[0]!.reason, /retained by S3 Object Lock/);
  await assert.rejects(r.deleteSnapshot(m.id), /retained by S3 Object Lock/);
  // A pack nothing uses, retained: gc does not try to delete it.
  const stray = randomBytes(32);
  await r.backend.write(chunkKey(stray), r.codec().encode(randomBytes(4096), stray));
  await r.backend.sync();
  const strayPack = (await (r.backend as S3Backend).chunkLocation(stray))!.pack;
  const g = await gc(r, { graceMs: 0 });
  assert.equal(g.removedChunks, 0);
  assert.equal(g.packs!.removedPacks, 0);
  assert.ok(g.packs!.retainedPacks >= 1, 'the retained pack nothing uses is kept, not tried');
  await s3.send(new HeadObjectCommand({ Bucket: 'locked', Key: `repo/${strayPack}` }));
  // Straight at the store: every version of the manifest, the disk index and a pack is refused.
  const aPack = (await (r.backend as S3Backend).chunkLocation(
    (await (await r.openIndex(m, 0)).chunks())[0]!.digest,
  ))!.pack;
  for (const key of [
    `repo/snapshots/${m.id}/manifest.json`,
    `repo/${s.disks[0]!.index}`,
    `repo/${aPack}`,
    `repo/${strayPack}`,
  ]) {
    const vs = await s3.send(new ListObjectVersionsCommand({ Bucket: 'locked', Prefix: key }));
    const vid = vs.Versions![0]!.VersionId!;
    await assert.rejects(
      s3.send(new DeleteObjectCommand({ Bucket: 'locked', Key: key, VersionId: vid })),
      (e: Error) => /AccessDenied|forbidden/i.test(`${e.name} ${e.message}`),
    );
  }
  const out = join(dir.path, 'l.out');
  await restoreSnapshot({ repo, snapshot: m.id, to: out });
  assert.equal(sha(out), sha(img));
  r.close();
});

test('S3 bad input: wrong endpoint, wrong credentials, no object lock: clear errors, quickly, nothing written', async () => {
  await bucket('plain');
  const t0 = performance.now();
  await assert.rejects(
    Repository.init('s3://plain/x', { endpoint: 'http://127.0.0.1:9' }),
    (e: HavenError) => ['IO', 'TIMEOUT'].includes(e.code) && /127\.0\.0\.1:9/.test(e.message),
  );
  assert.ok(performance.now() - t0 < 20_000, 'a closed port fails within 20 s');
  const saved = process.env.HAVEN_S3_CREDENTIALS;
  const bad = join(dir.path, 'bad-env');
  writeFileSync(
    bad,
    readFileSync(saved!, 'utf8').replace(/S3_SECRET_ACCESS_KEY=.*/, 'S3_SECRET_ACCESS_KEY=wrong-secret-0000'),
  );
  process.env.HAVEN_S3_CREDENTIALS = bad;
  try {
    await assert.rejects(Repository.init('s3://plain/x'), (e: HavenError) => {
      assert.doesNotMatch(e.message, /wrong-secret/, 'the secret is never in a message');
      return e.code === 'UNAUTHENTICATED' && /credentials|access denied/.test(e.message);
    });
  } finally {
    process.env.HAVEN_S3_CREDENTIALS = saved;
  }
  await assert.rejects(
    Repository.init('s3://plain/x', { objectLock: { mode: 'COMPLIANCE', days: 1 } }),
    (e: HavenError) => e.code === 'UNSUPPORTED' && /bucket plain .* no S3 Object Lock/.test(e.message),
  );
  await assert.rejects(
    Repository.init('s3://nosuchbucket/x'),
    (e: HavenError) => e.code === 'NOT_FOUND' && /no such bucket/.test(e.message),
  );
  await assert.rejects(Repository.open('s3://plain/x'), /not a Haven repository/);
  // The CLI: init with --endpoint, then list.
  const { execFile } = await import('node:child_process');
  const cli = (args: string[]) =>
    new Promise<string>((res, rej) =>
      execFile(
        HAVEN_BIN,
        args,
        {
          env: {
            ...process.env,
            HAVEN_S3_CREDENTIALS: '',
            HAVEN_S3_ACCESS_KEY_ID: ceph.s3.accessKeyId,
            HAVEN_S3_SECRET_ACCESS_KEY: ceph.s3.secretAccessKey,
          },
        },
        (err, out, errOut) => (err ? rej(new Error(errOut)) : res(out)),
      ),
    );
  assert.match(
    await cli(['repo', 'init', '--repo', 's3://plain/cli', '--endpoint', ceph.s3.endpoint]),
    /created a repository at s3:\/\/plain\/cli/,
  );
  await cli(['repo', 'list', '--repo', 's3://plain/cli', '--endpoint', ceph.s3.endpoint]);
});

test('S3 exclusive create in a versioned (object-locked) bucket: racing writers never both win; gc waits for writers', async () => {
  const repo = await bucket('racing', true);
  const r = await Repository.init(repo);
  for (let round = 0; round < 3; round++) {
    const results = await Promise.allSettled(
      Array.from({ length: 6 }, (_, i) =>
        r.backend.write('locks/race', Buffer.from(`w${i}`), { exclusive: true }),
      ),
    );
    const won = results.filter((x) => x.status === 'fulfilled').length;
    assert.ok(won <= 1, `round ${round}: ${won} writers hold the lock`);
    for (const x of results)
      if (x.status === 'rejected') assert.equal((x.reason as HavenError).code, 'CONFLICT');
    if (won === 1)
      await assert.rejects(
        r.backend.write('locks/race', Buffer.from('late'), { exclusive: true }),
        /already exists/,
      );
    await r.backend.delete('locks/race');
  }
  const session = await r.beginSession();
  await assert.rejects(gc(r, { graceMs: 0 }), /waits for the backups writing/);
  await session.end();
  r.close();
});

test('repo copy local → S3 (re-encrypted) → local: incremental, verified, restores bit-identically', async () => {
  const local = join(dir.path, 'local');
  const src = await Repository.init(local);
  const img = join(dir.path, 'c.raw');
  makeImage(img, 32 * MiB, 7);
  const shas: string[] = [];
  for (let i = 0; i < 3; i++) {
    if (i) {
      // 1% of the image: five 64 KiB writes.
      const fd = openSync(img, 'r+');
      for (let k = 0; k < 5; k++)
        writeSync(fd, randomBytes(64 * 1024), 0, 64 * 1024, (i * 37 + k * 101) * 64 * 1024);
      closeSync(fd);
    }
    await backupSource({ repo: local, source: img });
    shas.push(sha(img));
  }
  const remote = await bucket('copies');
  const dst = await Repository.init(remote, { passphrase: 'other keys' });
  const first = await copySnapshots(src, dst);
  assert.equal(first.copied.length, 3);
  const chunksThere = await objects(remote, 'chunks/', 'other keys');
  assert.equal(first.newChunks, chunksThere, 'every chunk sent once');
  const [full, inc1, inc2] = first.copied as [
    (typeof first.copied)[0],
    (typeof first.copied)[0],
    (typeof first.copied)[0],
  ];
  console.log(
    `# copy: full ${full.newChunks} chunks (${full.readBytes} B read), incrementals ${inc1.newChunks} and ${inc2.newChunks} chunks (${inc1.readBytes} and ${inc2.readBytes} B read), ${first.seconds.toFixed(2)} s`,
  );
  for (const c of [inc1, inc2]) {
    // Only the chunks (256 KiB) that the five 64 KiB changes fall in are read.
    assert.ok(
      c.readBytes <= 5 * 256 * 1024,
      `an incremental copy reads only what changed (${c.readBytes} B)`,
    );
    assert.ok(c.newChunks <= 5 * 2 + 2, `and sends only the chunks the target lacks (${c.newChunks})`);
  }
  const again = await copySnapshots(src, dst);
  assert.equal(again.copied.length, 0);
  assert.equal(again.skipped.length, 3);
  assert.equal(again.newChunks, 0);
  assert.equal(await objects(remote, 'chunks/', 'other keys'), chunksThere, 'nothing new in the bucket');
  // The bucket's pack index objects are sealed (docs/decisions/0024): none of the chunks' digests
  // is in them in the clear; a new process (no local cache) reads them back with the passphrase.
  const digests: Buffer[] = [];
  for await (const o of dst.backend.list('chunks/'))
    digests.push(Buffer.from(o.key.slice(o.key.lastIndexOf('/') + 1), 'hex'));
  assert.equal(digests.length, chunksThere);
  let sealed = 0;
  for await (const o of dst.backend.list('index/')) {
    const body = Buffer.from(
      await (
        await s3.send(new GetObjectCommand({ Bucket: 'copies', Key: `repo/${o.key}` }))
      ).Body!.transformToByteArray(),
    );
    assert.equal(body.subarray(0, 4).toString(), 'HVPE', `${o.key} is sealed`);
    for (const d of digests) assert.equal(body.indexOf(d), -1, `${o.key} names no digest in the clear`);
    sealed++;
  }
  assert.ok(sealed > 0, 'the bucket has index objects');
  const cache = process.env.HAVEN_S3_INDEX_CACHE;
  process.env.HAVEN_S3_INDEX_CACHE = 'off';
  try {
    const fresh = await Repository.open(remote, { passphrase: 'other keys' });
    const v = await verify(fresh);
    assert.equal(v.damagedChunks, 0);
    assert.equal(v.chunks, chunksThere, 'every chunk found through the sealed index');
    fresh.close();
  } finally {
    process.env.HAVEN_S3_INDEX_CACHE = cache;
  }
  // And back, to a local repository under a third set of keys.
  const back = join(dir.path, 'back');
  const ret = await Repository.init(back, { passphrase: 'third keys' });
  const home = await copySnapshots(dst, ret);
  assert.equal(home.copied.length, 3);
  const snaps = await ret.listSnapshots();
  for (let i = 0; i < 3; i++) {
    const out = join(dir.path, `c${i}.out`);
    await restoreSnapshot({ repo: back, passphrase: 'third keys', snapshot: snaps[i]!.id, to: out });
    assert.equal(sha(out), shas[i], `snapshot ${i} restores bit-identically after two copies`);
  }
  dst.close();
});

/** An image of `mib` MiB of random data, the first `shared` MiB taken from `from` (or random). */
function randomImage(path: string, mib: number, from?: string, shared = 0): void {
  const base = from ? readFileSync(from) : undefined;
  const fd = openSync(path, 'w');
  for (let i = 0; i < mib; i++)
    writeSync(
      fd,
      i < shared && base ? base.subarray(i * MiB, (i + 1) * MiB) : randomBytes(MiB),
      0,
      MiB,
      i * MiB,
    );
  closeSync(fd);
}

test('S3 packs: deduplication across packs, coalesced ranged reads, gc deletes only the packs nothing uses', async () => {
  const repo = await bucket('packs');
  (await Repository.init(repo)).close();
  const a = join(dir.path, 'pa.raw');
  const b = join(dir.path, 'pb.raw');
  randomImage(a, 48);
  randomImage(b, 48, a, 24); // its first half is a's first half
  const ma = await backupSource({ repo, source: a });
  const packsA = await objects(repo, 'packs/');
  const mb = await backupSource({ repo, source: b });
  // b's first half is in a's packs: not stored again (its new half and its index pages are).
  assert.ok(mb.stats.reusedChunks >= (24 * MiB) / (256 * 1024), `reused ${mb.stats.reusedChunks}`);
  assert.ok(mb.stats.newChunks <= (24 * MiB) / (256 * 1024) + 4, `new ${mb.stats.newChunks}`);
  const r = await Repository.open(repo);
  const backend = r.backend as S3Backend;
  // Every chunk is read once, in order: adjacent chunks of a pack come in one ranged GET.
  const before = backend.counters.rangeGets;
  const v = await verify(r);
  assert.equal(v.damaged.length, 0);
  const gets = backend.counters.rangeGets - before;
  console.log(`# verify: ${v.chunks} chunks in ${gets} ranged GETs`);
  assert.ok(gets * 4 <= v.chunks, `chunks are read a run at a time (${gets} GETs for ${v.chunks} chunks)`);
  // Forget a: the packs holding only a's second half go, those b shares stay.
  await r.deleteSnapshot(ma.id);
  const packsBefore = await objects(repo, 'packs/');
  const g = await gc(r, { graceMs: 0 });
  console.log(`# gc: ${JSON.stringify(g.packs)}`);
  assert.ok(g.packs!.removedPacks >= 1, 'a pack only a used is deleted');
  assert.ok(g.packs!.keptPacks >= 1, 'the packs b uses are kept');
  assert.equal(await objects(repo, 'packs/'), packsBefore - g.packs!.removedPacks);
  assert.ok(packsA >= 2);
  const out = join(dir.path, 'pb.out');
  await restoreSnapshot({ repo, snapshot: mb.id, to: out });
  assert.equal(sha(out), sha(b));
  assert.equal((await verify(r)).damaged.length, 0);
  // A new backup of a deduplicates against what is left, and stores its second half again.
  const ma2 = await backupSource({ repo, source: a });
  assert.ok(ma2.stats.reusedChunks >= (24 * MiB) / (256 * 1024));
  const out2 = join(dir.path, 'pa.out');
  await restoreSnapshot({ repo, snapshot: ma2.id, to: out2 });
  assert.equal(sha(out2), sha(a));
  // A chunk object of the one-object-per-chunk layout (a bucket written before packs) still reads,
  // and such a bucket's config is marked packed (format 2) by the first backup that writes packs.
  const plain = randomBytes(10_000);
  const legacy = r.codec().digest(plain);
  await s3.send(
    new PutObjectCommand({
      Bucket: 'packs',
      Key: `repo/${chunkKey(legacy)}`,
      Body: r.codec().encode(plain, legacy),
    }),
  );
  assert.ok(
    r
      .codec()
      .decode(await r.getChunk(legacy), legacy)
      .equals(plain),
  );
  const configOf = async () =>
    JSON.parse(
      Buffer.from(
        await (
          await s3.send(new GetObjectCommand({ Bucket: 'packs', Key: 'repo/config.json' }))
        ).Body!.transformToByteArray(),
      ).toString('utf8'),
    ) as { version: number; layout?: string };
  assert.equal((await configOf()).version, 2, 'a packed repository is format 2');
  assert.equal((await configOf()).layout, 'packed', 'a bucket created packed says so');
  // Created packed: a session does not list chunks/ (there are no chunk objects to find).
  {
    const x = await Repository.open(repo);
    const s = await x.beginSession();
    await x.hasChunk(legacy);
    await s.end();
    assert.equal(
      (x.backend as S3Backend).counters.chunkLists,
      0,
      'no LIST of chunks/ in a bucket created packed',
    );
    x.close();
  }
  // An old bucket (format 1, no layout mark) with a chunk object, converted by its first backup
  // with packs: it never gets the mark, and its chunk objects are still found (deduplicated against).
  const { layout: _layout, ...old } = await configOf();
  await s3.send(
    new PutObjectCommand({
      Bucket: 'packs',
      Key: 'repo/config.json',
      Body: JSON.stringify({ ...old, version: 1 }),
    }),
  );
  await backupSource({ repo, source: b });
  assert.equal((await configOf()).version, 2, 'the first backup with packs marks an old bucket');
  assert.equal((await configOf()).layout, undefined, 'a converted bucket is never marked created packed');
  {
    const x = await Repository.open(repo);
    const s = await x.beginSession();
    assert.ok(await x.hasChunk(legacy), 'a converted bucket finds its chunk objects');
    await s.end();
    assert.equal((x.backend as S3Backend).counters.chunkLists, 1, 'its chunks/ is listed once a session');
    x.close();
  }
  // A new process reads the index objects it has seen before from its local cache: only new ones
  // are asked of the store.
  const fresh = async () => {
    const x = await Repository.open(repo);
    const n = (await x.stats()).chunks;
    const gets = (x.backend as S3Backend).counters.indexGets;
    x.close();
    return { n, gets };
  };
  const first = await fresh();
  const second = await fresh();
  assert.equal(second.n, first.n);
  assert.equal(second.gets, 0, `index objects come from the cache (${first.gets} GETs the first time)`);
  const off = process.env.HAVEN_S3_INDEX_CACHE;
  process.env.HAVEN_S3_INDEX_CACHE = 'off';
  try {
    const uncached = await fresh();
    assert.equal(uncached.n, first.n);
    assert.ok(uncached.gets >= 1);
  } finally {
    process.env.HAVEN_S3_INDEX_CACHE = off;
  }
  r.close();
});

test('S3 Object Lock with packs: a snapshot reusing old packs extends their retention, and only theirs', async () => {
  const repo = await bucket('extend', true);
  (await Repository.init(repo, { objectLock: { mode: 'GOVERNANCE', days: 1 } })).close();
  const a = join(dir.path, 'ea.raw');
  const b = join(dir.path, 'eb.raw');
  randomImage(a, 48);
  randomImage(b, 8, a, 8); // the first 8 MiB of a, nothing else
  const ma = await backupSource({ repo, source: a });
  const retainOf = async (key: string) =>
    (
      await s3.send(new HeadObjectCommand({ Bucket: 'extend', Key: `repo/${key}` }))
    ).ObjectLockRetainUntilDate!.getTime();
  const r0 = await Repository.open(repo);
  const idx = await r0.openIndex(ma, 0);
  const all = await idx.chunks();
  const packOf = async (d: Buffer) => (await (r0.backend as S3Backend).chunkLocation(d))!.pack;
  const firstPack = await packOf(all[0]!.digest);
  const lastPack = await packOf(all[all.length - 1]!.digest);
  assert.notEqual(firstPack, lastPack);
  const before = { first: await retainOf(firstPack), last: await retainOf(lastPack) };
  r0.close();
  // The retention asked for grows to 3 days (as an operator would change it): b's commit must hold
  // the old pack it reuses for 3 days from now.
  const config = JSON.parse(
    Buffer.from(
      await (
        await s3.send(new GetObjectCommand({ Bucket: 'extend', Key: 'repo/config.json' }))
      ).Body!.transformToByteArray(),
    ).toString('utf8'),
  ) as { objectLock: { days: number } };
  config.objectLock.days = 3;
  await s3.send(
    new PutObjectCommand({ Bucket: 'extend', Key: 'repo/config.json', Body: JSON.stringify(config) }),
  );
  const mb = await backupSource({ repo, source: b });
  assert.ok(mb.stats.reusedChunks >= 30, 'b reuses a chunks');
  const until = Date.parse(mb.retainUntil!);
  assert.ok(until > before.first, 'b is retained longer than a');
  const after = { first: await retainOf(firstPack), last: await retainOf(lastPack) };
  assert.ok(
    after.first >= until,
    `the reused pack is retained until b's date (${new Date(after.first).toISOString()} vs ${mb.retainUntil})`,
  );
  assert.equal(after.last, before.last, 'a pack b does not use keeps its date');
  // The index objects naming the extended pack are extended too (else the pack could not be found).
  const r = await Repository.open(repo);
  let named = 0;
  for await (const o of r.backend.list('index/')) {
    const body = await r.backend.read(o.key);
    if (body.includes(Buffer.from(firstPack.slice(firstPack.lastIndexOf('/') + 1), 'hex'))) {
      named++;
      assert.ok((await retainOf(o.key)) >= until, `index ${o.key} is retained as long as its pack`);
    }
  }
  assert.ok(named >= 1);
  // Forget and a direct delete of the extended pack are refused.
  await assert.rejects(r.deleteSnapshot(mb.id), /retained by S3 Object Lock/);
  const vs = await s3.send(new ListObjectVersionsCommand({ Bucket: 'extend', Prefix: `repo/${firstPack}` }));
  await assert.rejects(
    s3.send(
      new DeleteObjectCommand({
        Bucket: 'extend',
        Key: `repo/${firstPack}`,
        VersionId: vs.Versions![0]!.VersionId!,
      }),
    ),
    (e: Error) => /AccessDenied|forbidden/i.test(`${e.name} ${e.message}`),
  );
  r.close();
});

test('S3 packs: gc writes the used chunks of mostly unused packs into new packs, then deletes the old', async () => {
  const repo = await bucket('repack');
  (await Repository.init(repo)).close();
  const c = join(dir.path, 'rc.raw');
  const d = join(dir.path, 'rd.raw');
  randomImage(c, 40);
  randomImage(d, 8, c, 4); // 4 MiB of c's first pack, 4 MiB new
  const mc = await backupSource({ repo, source: c });
  const md = await backupSource({ repo, source: d });
  const r = await Repository.open(repo);
  await r.deleteSnapshot(mc.id);
  const g = await gc(r, { graceMs: 0 });
  console.log(`# gc: ${JSON.stringify(g.packs)}`);
  assert.ok((g.packs!.repackedPacks ?? 0) >= 1, 'the pack d uses a quarter of is repacked');
  assert.ok(g.packs!.removedPacks >= 2, 'it and the packs only c used are deleted');
  assert.ok(g.packs!.garbageBytes < 4 * MiB, `little unused is left (${g.packs!.garbageBytes} B)`);
  const v = await verify(r);
  assert.equal(v.damaged.length, 0);
  assert.equal((await r.stats()).chunks, v.chunks, 'every chunk left is used');
  const out = join(dir.path, 'rd.out');
  await restoreSnapshot({ repo, snapshot: md.id, to: out });
  assert.equal(sha(out), sha(d));
  const again = await gc(r, { graceMs: 0 });
  assert.equal(again.packs!.removedPacks, 0, 'a second gc has nothing to do');
  assert.equal(again.packs!.repackedPacks ?? 0, 0);
  r.close();
});

test('S3 packs: gc merges the many small index objects of many backups into one, which a new process reads', async () => {
  const repo = await bucket('merge');
  (await Repository.init(repo, { passphrase: 'merge keys' })).close();
  const img = join(dir.path, 'm.raw');
  const made: { id: string; sha: string }[] = [];
  // Each backup of new data writes its own index object (decision 0024).
  for (let i = 0; i < 20; i++) {
    randomImage(img, 1);
    made.push({
      id: (await backupSource({ repo, source: img, passphrase: 'merge keys' })).id,
      sha: sha(img),
    });
  }
  const count = async () => {
    let n = 0;
    for await (const o of s3ListKeys('merge', 'repo/index/')) if (o) n++;
    return n;
  };
  const before = await count();
  assert.ok(before >= 20, `one index object per backup at least (${before})`);
  const r = await Repository.open(repo, { passphrase: 'merge keys' });
  const g = await gc(r, { graceMs: 0 });
  console.log(`# gc: ${JSON.stringify(g.packs)}`);
  assert.equal(g.packs!.removedPacks, 0, 'every pack is used');
  assert.equal(g.packs!.mergedIndexes, before);
  assert.equal(await count(), 1, 'twenty packs, one index object');
  const again = await gc(r, { graceMs: 0 });
  assert.equal(again.packs!.mergedIndexes ?? 0, 0, 'one index object is not merged again');
  r.close();
  // A new process, without the local cache, finds every chunk through the merged index.
  const cache = process.env.HAVEN_S3_INDEX_CACHE;
  process.env.HAVEN_S3_INDEX_CACHE = 'off';
  try {
    const fresh = await Repository.open(repo, { passphrase: 'merge keys' });
    assert.equal((await verify(fresh)).damagedChunks, 0);
    fresh.close();
    for (const k of [0, 9, 19]) {
      const out = join(dir.path, `m${k}.out`);
      await restoreSnapshot({ repo, passphrase: 'merge keys', snapshot: made[k]!.id, to: out });
      assert.equal(sha(out), made[k]!.sha, `snapshot ${k} restores bit-identically`);
    }
  } finally {
    process.env.HAVEN_S3_INDEX_CACHE = cache;
  }
});

/** The keys under a prefix of a bucket, straight from the store. */
async function* s3ListKeys(bucketName: string, prefix: string): AsyncIterable<string> {
  let token: string | undefined;
  do {
    const page = await s3.send(
      new ListObjectsV2Command({
        Bucket: bucketName,
        Prefix: prefix,
        ...(token ? { ContinuationToken: token } : {}),
      }),
    );
    for (const o of page.Contents ?? []) yield o.Key!;
    token = page.IsTruncated ? page.NextContinuationToken : undefined;
  } while (token);
}
