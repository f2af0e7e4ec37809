// backup() against a temp repository: the workers hash and store a chunk in one hand-off, and
// what they remember having stored stays within one backup (each backup claims every chunk it
// reuses, so a garbage collection running beside it keeps them).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readdirSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { openRawFile } from '../../block/index.js';
import { Repository } from '../../repository/index.js';
import { tempDir } from '../../../test/support/tmp.js';
import { backup, openChunkPool } from './engine.js';

const K64 = 64 * 1024;

function chunkFiles(dir: string): string[] {
  return readdirSync(dir).flatMap((n) => {
    const p = join(dir, n);
    return statSync(p).isDirectory() ? chunkFiles(p) : /^[0-9a-f]{64}$/.test(n) ? [p] : [];
  });
}

test('chunks seen many times in a backup are stored once and counted right; a second backup on the same pool claims every chunk again', async (t) => {
  const tmp = tempDir();
  t.after(tmp.cleanup);
  const repeated = randomBytes(K64);
  // 16 copies of one chunk, 4 distinct ones, 4 zero chunks.
  const parts = [
    ...Array.from({ length: 16 }, () => repeated),
    ...Array.from({ length: 4 }, () => randomBytes(K64)),
    Buffer.alloc(4 * K64),
  ];
  const src = join(tmp.path, 'src.img');
  writeFileSync(src, Buffer.concat(parts));
  const repo = await Repository.init(join(tmp.path, 'repo'), { chunkSize: K64 });
  const pool = openChunkPool(repo, K64, 2);
  t.after(() => pool.close());
  const device = openRawFile(src, { readOnly: true });
  t.after(() => device.close());
  const run = () =>
    backup(repo, { source: { kind: 'volume', name: 'v' }, disks: [{ name: 'd0', device }], pool });

  const first = await run();
  const files = chunkFiles(join(tmp.path, 'repo'));
  // 5 data chunks and the disk's index page (24 granules: one page), stored as a chunk too.
  assert.equal(files.length, 6);
  assert.equal(first.stats.newChunks, 6);
  assert.equal(first.stats.reusedChunks, 15);
  assert.equal(
    first.stats.storedBytes,
    files.reduce((n, f) => n + statSync(f).size, 0),
  );

  // As if long ago: a backup that reuses them must claim them (set their time to now).
  const past = new Date('2001-01-01T00:00:00Z');
  for (const f of files) utimesSync(f, past, past);
  const second = await run();
  assert.equal(second.stats.newChunks, 0);
  assert.equal(second.stats.reusedChunks, 20);
  for (const f of files)
    assert.ok(statSync(f).mtimeMs > past.getTime() + 1000, `${f} was claimed by the second backup`);
});
