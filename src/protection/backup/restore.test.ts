// restore() against a temp repository and temp raw files: a round trip reproduces the disk, and
// a restore that cannot finish for a reason known in advance (a target too small, a chunk gone
// from the repository) fails before it writes anything to the target.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  closeSync,
  ftruncateSync,
  openSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { openRawFile } from '../../block/index.js';
import { Repository } from '../../repository/index.js';
import { chunkDigest } from '../../repository/keys.js';
import { tempDir } from '../../../test/support/tmp.js';
import { backup } from './engine.js';
import { restore } from './restore.js';

const MiB = 1024 * 1024;

function files(dir: string): string[] {
  return readdirSync(dir).flatMap((n) => {
    const p = join(dir, n);
    return statSync(p).isDirectory() ? files(p) : [p];
  });
}

async function backedUp(t: { after: (fn: () => unknown) => void }) {
  const tmp = tempDir();
  t.after(tmp.cleanup);
  const src = join(tmp.path, 'src.img');
  const fd = openSync(src, 'w');
  ftruncateSync(fd, 4 * MiB);
  for (let i = 0; i < 3; i++) writeSync(fd, Buffer.alloc(MiB, 0x10 + i), 0, MiB, i * MiB); // the last MiB a hole
  closeSync(fd);
  const repo = await Repository.init(join(tmp.path, 'repo'), { chunkSize: MiB });
  const device = openRawFile(src, { readOnly: true });
  const snap = await backup(repo, {
    source: { kind: 'volume', name: 'v' },
    disks: [{ name: 'd0', device }],
    workers: 1,
  });
  await device.close();
  const target = (size: number) => {
    const p = join(tmp.path, `t${size}.img`);
    writeFileSync(p, Buffer.alloc(size, 0x77));
    return p;
  };
  return { tmp: tmp.path, src, repo, snap, target };
}

test('a restore to a fresh-size target reproduces the disk, holes written as zeroes', async (t) => {
  const { src, repo, snap, target } = await backedUp(t);
  const p = target(4 * MiB);
  const dev = openRawFile(p);
  const r = await restore(repo, snap, 0, dev, { workers: 1 });
  await dev.close();
  assert.equal(r.size, 4 * MiB);
  assert.equal(r.dataBytes, 3 * MiB);
  assert.equal(r.zeroBytes, MiB);
  assert.ok(readFileSync(p).equals(readFileSync(src)));
});

test('a target smaller than the disk is refused, naming both sizes, and left as it was', async (t) => {
  const { repo, snap, target } = await backedUp(t);
  const p = target(2 * MiB);
  const dev = openRawFile(p);
  await assert.rejects(restore(repo, snap, 0, dev, { workers: 1 }), (e: Error & { code?: string }) => {
    assert.equal(e.code, 'INVALID_ARGUMENT');
    assert.match(
      e.message,
      /the target \(2097152 bytes\) is smaller than d0 of snapshot .* \(4194304 bytes\)/,
    );
    return true;
  });
  await dev.close();
  assert.ok(readFileSync(p).equals(Buffer.alloc(2 * MiB, 0x77)));
});

test('a chunk gone from the repository fails the restore before the first write', async (t) => {
  const { tmp, repo, snap, target } = await backedUp(t);
  // Remove one data chunk (the three data MiB are three distinct chunks).
  const chunks = files(join(tmp, 'repo')).filter((f) => /chunks?\//.test(f));
  assert.ok(chunks.length >= 3, `chunk files found: ${chunks.length}`);
  rmSync(chunks[chunks.length - 1]!);
  const p = target(4 * MiB);
  const dev = openRawFile(p);
  await assert.rejects(
    restore(repo, snap, 0, dev, { workers: 1 }),
    /d0: 1 chunk\(s\) are missing from repository .* \(at offset\(s\) \d+\): nothing was restored/,
  );
  await dev.close();
  assert.ok(readFileSync(p).equals(Buffer.alloc(4 * MiB, 0x77)), 'the target is untouched');
});

/**
 * A disk of 64 KiB chunks stored every way there is: raw (random), compressed (a pattern),
 * the same random chunk many times over (stored once), and holes.
 */
function mixedDisk(path: string): Buffer {
  const K64 = 64 * 1024;
  const repeated = randomBytes(K64);
  const parts: Buffer[] = [];
  for (let i = 0; i < 48; i++) {
    if (i % 4 === 0) parts.push(repeated);
    else if (i % 4 === 1) parts.push(randomBytes(K64));
    else if (i % 4 === 2) parts.push(Buffer.alloc(K64, `block ${i} `));
    else parts.push(Buffer.alloc(K64));
  }
  const disk = Buffer.concat(parts);
  writeFileSync(path, disk);
  return disk;
}

for (const encrypted of [false, true])
  for (const cache of [undefined, 64 * 1024])
    test(`a restore reproduces raw, compressed and repeated chunks${encrypted ? ', encrypted' : ''}${cache ? ', the repeated-chunk memory full' : ''}`, async (t) => {
      const tmp = tempDir();
      t.after(tmp.cleanup);
      const disk = mixedDisk(join(tmp.path, 'src.img'));
      const repo = await Repository.init(join(tmp.path, 'repo'), {
        chunkSize: 64 * 1024,
        ...(encrypted ? { passphrase: 'restore-test' } : {}),
      });
      const device = openRawFile(join(tmp.path, 'src.img'), { readOnly: true });
      const snap = await backup(repo, {
        source: { kind: 'volume', name: 'v' },
        disks: [{ name: 'd0', device }],
      });
      await device.close();
      // Not fresh: every chunk is written, the holes as zeroes, over a target full of 0x77.
      const p = join(tmp.path, 'target.img');
      writeFileSync(p, Buffer.alloc(disk.length, 0x77));
      const dev = openRawFile(p);
      const r = await restore(repo, snap, 0, dev, cache ? { repeatCacheBytes: cache } : {});
      await dev.close();
      assert.equal(r.dataBytes, 36 * 64 * 1024);
      assert.ok(readFileSync(p).equals(disk), 'the restored disk equals the source');
    });

test('a damaged chunk the disk holds many times fails the restore: no copy is written from memory unchecked', async (t) => {
  const tmp = tempDir();
  t.after(tmp.cleanup);
  const K64 = 64 * 1024;
  const repeated = randomBytes(K64);
  writeFileSync(join(tmp.path, 'src.img'), Buffer.concat(Array.from({ length: 16 }, () => repeated)));
  const repo = await Repository.init(join(tmp.path, 'repo'), { chunkSize: K64 });
  const device = openRawFile(join(tmp.path, 'src.img'), { readOnly: true });
  const snap = await backup(repo, { source: { kind: 'volume', name: 'v' }, disks: [{ name: 'd0', device }] });
  await device.close();
  // One data chunk for the 16 copies (beside the index page, also stored as a chunk), by its digest.
  const id = chunkDigest(repeated, undefined).toString('hex');
  const chunks = files(join(tmp.path, 'repo')).filter((f) => f.endsWith(`/${id}`));
  assert.equal(chunks.length, 1, 'one chunk stored for 16 copies');
  assert.equal(snap.stats.newChunks, 2, 'the data chunk and the index page');
  const fd = openSync(chunks[0]!, 'r+');
  writeSync(fd, Buffer.from([0xff ^ readFileSync(chunks[0]!)[100]!]), 0, 1, 100); // a payload byte
  closeSync(fd);
  const p = join(tmp.path, 'target.img');
  writeFileSync(p, Buffer.alloc(16 * K64));
  const dev = openRawFile(p);
  await assert.rejects(restore(repo, snap, 0, dev, { fresh: true }), (e: Error & { code?: string }) => {
    assert.equal(e.code, 'CORRUPT');
    assert.match(e.message, /the data at offset \d+ \(65536 bytes\) is damaged: .*does not match its digest/);
    return true;
  });
  await dev.close();
  assert.ok(readFileSync(p).equals(Buffer.alloc(16 * K64)), 'nothing of the damaged chunk was written');
});
