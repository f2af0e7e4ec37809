// Listing and extraction through debugfs, straight on an ext4 image made by mke2fs -d: names
// with spaces, quotes, UTF-8, newlines, and a newline followed by what looks like debugfs's echo
// of a command (which must not shift one directory's entries into another's).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync, readdirSync, truncateSync, utimesSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { tempDir } from '../../../../test/support/tmp.js';
import { extractFiles, listFiles } from './browse.js';
import { Debugfs } from './debugfs.js';

const odd = ['a b', 'ünï', 'nl\nx', `q"'`, 'z\ndebugfs: ls -p <2>', 'y\ndebugfs: stat <12>'];

test('odd names list and extract as they are, batches or not', async (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  const src = join(dir.path, 'src');
  for (const d of ['one', 'two']) {
    mkdirSync(join(src, d), { recursive: true });
    for (const [i, n] of odd.entries()) writeFileSync(join(src, d, n), `${d}:${i}\n`.repeat(i + 1));
  }
  utimesSync(join(src, 'one', 'a b'), 1_600_000_000, 1_600_000_000);
  const img = join(dir.path, 'fs.img');
  writeFileSync(img, '');
  truncateSync(img, 16 * 1024 * 1024);
  execFileSync('mke2fs', ['-q', '-F', '-t', 'ext4', '-d', src, img]);
  const fs = new Debugfs(img, 0, 'test image');

  const listed = await listFiles(fs, '/one', 'test image');
  assert.deepEqual(listed.map((e) => e.name).sort(), [...odd].sort());
  assert.equal(listed.find((e) => e.name === 'a b')!.mtime, '2020-09-13T12:26:40.000Z');
  for (const e of listed)
    assert.equal(e.size, `one:${odd.indexOf(e.name)}\n`.length * (odd.indexOf(e.name) + 1));

  const to = join(dir.path, 'out');
  const r = await extractFiles(fs, '/', to, 'test image');
  assert.equal(r.files, 2 * odd.length);
  for (const d of ['one', 'two']) {
    assert.deepEqual(readdirSync(join(to, d)).sort(), [...odd].sort());
    for (const [i, n] of odd.entries())
      assert.equal(
        readFileSync(join(to, d, n), 'utf8'),
        `${d}:${i}\n`.repeat(i + 1),
        `${d}/${JSON.stringify(n)}`,
      );
  }
});
