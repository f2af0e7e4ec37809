// The repository on its own: chunk encoding (compression, encryption, tampering), indexes,
// retention, and garbage collection that keeps what running backups use.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFileSync, utimesSync, writeFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { HavenError } from '../common/index.js';
import { tempDir } from '../../test/support/tmp.js';
import {
  ChunkCodec,
  FLAG_ENCRYPTED,
  FLAG_ZSTD,
  Repository,
  ZERO_DIGEST,
  chunkKey,
  indexBytes,
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
  const r = await repo.gc({ graceMs: 1000 });
  assert.equal(r.removedChunks, 1);
  assert.equal(await repo.hasChunk(orphan), false);
  assert.equal(await repo.hasChunk(reused), true);
  await session.end();
  await assert.rejects(repo.snapshot('nope'), (e: HavenError) => e.code === 'NOT_FOUND');
  // A GC lock left by a dead process is taken over; one held by a live process is respected.
  writeFileSync(join(repo.location, 'locks', 'gc'), JSON.stringify({ pid: 999999, host: hostname() }));
  await repo.gc();
  writeFileSync(
    join(repo.location, 'locks', 'gc'),
    JSON.stringify({ pid: process.pid, host: 'another-host' }),
  );
  await assert.rejects(repo.gc(), /already running/);
  assert.ok(readFileSync(join(repo.location, 'config.json'), 'utf8').includes('haven-repository'));
});
