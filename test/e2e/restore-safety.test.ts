// Restore and every other command that writes a file never destroys what it cannot replace:
// a snapshot with a damaged index or a missing chunk is refused before the target is touched
// (a file, an NBD export); a restore or copy that fails midway (a damaged chunk, a full disk)
// leaves no partial file and the old target as it was; and an existing file is written over only
// with --force (restore, volume export offline and through the daemon's API, nbd copy).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { HavenError } from '../../src/common/index.js';
import { nbdCopy } from '../../src/orchestration/index.js';
import { exportVolume, withStorage } from '../../src/storage/index.js';
import { backupSource, restoreSnapshot } from '../../src/protection/index.js';
import { Repository, type SnapshotManifest } from '../../src/repository/index.js';
import { HAVEN_BIN, start, waitForListen } from '../support/proc.js';
import { site } from '../support/site.js';
import { tempDir } from '../support/tmp.js';

const run = promisify(execFile);
const MiB = 1024 * 1024;

const sha = (path: string) => createHash('sha256').update(readFileSync(path)).digest('hex');

/** Random data with holes: every third MiB is left sparse. */
function makeImage(path: string, size: number): void {
  const buf = randomBytes(size);
  for (let at = 0; at < size; at += 3 * MiB) buf.fill(0, at, Math.min(size, at + MiB));
  writeFileSync(path, buf);
}

/** Files a failed write may have left beside `dir`'s targets. */
const leftovers = (dir: string) => readdirSync(dir).filter((f) => f.endsWith('.part'));

/** The file of the first data chunk of a snapshot's disk (a local repository). */
async function aChunkFile(repo: string, m: SnapshotManifest): Promise<{ file: string; offset: number }> {
  const r = await Repository.open(repo);
  const first = (await (await r.openIndex(m, 0)).chunks())[0];
  if (!first) throw new Error('no data chunk');
  const hex = first.digest.toString('hex');
  return { file: join(repo, 'chunks', hex.slice(0, 2), hex), offset: first.offset };
}

test(
  'restore --force: a damaged index, a missing or a damaged chunk leave the existing target as it was',
  { timeout: 180_000 },
  async (t) => {
    const dir = tempDir();
    t.after(dir.cleanup);
    const repo = join(dir.path, 'repo');
    await Repository.init(repo);
    const img = join(dir.path, 'disk.raw');
    makeImage(img, 8 * MiB);
    const good = await backupSource({ repo, source: img });
    const target = join(dir.path, 'target.raw');
    await restoreSnapshot({ repo, snapshot: good.id, to: target });
    const before = sha(target);
    assert.equal(before, sha(img));

    // A restore onto an existing file needs --force, and says so.
    await assert.rejects(
      restoreSnapshot({ repo, snapshot: good.id, to: target }),
      (e: HavenError) => e.code === 'CONFLICT' && /exists; give --force/.test(e.message),
    );

    // A second snapshot, to be damaged in three ways; the target keeps its content each time.
    makeImage(img, 8 * MiB);
    const m = await backupSource({ repo, source: img });
    const indexFile = join(repo, m.disks[0]!.index);
    const index = readFileSync(indexFile);
    const flipped = Buffer.from(index);
    flipped[flipped.length - 5]! ^= 0x01;
    writeFileSync(indexFile, flipped);
    await assert.rejects(
      restoreSnapshot({ repo, snapshot: m.id, to: target, force: true }),
      (e: HavenError) => e.code === 'CORRUPT' && /does not match its manifest/.test(e.message),
    );
    assert.equal(sha(target), before, 'a damaged index did not touch the target');
    writeFileSync(indexFile, index);

    const chunk = await aChunkFile(repo, m);
    const stored = readFileSync(chunk.file);
    rmSync(chunk.file);
    await assert.rejects(
      restoreSnapshot({ repo, snapshot: m.id, to: target, force: true }),
      (e: HavenError) =>
        e.code === 'CORRUPT' && /missing/.test(e.message) && e.message.includes(`offset(s) ${chunk.offset}`),
    );
    assert.equal(sha(target), before, 'a missing chunk did not touch the target');

    const damaged = Buffer.from(stored);
    damaged[damaged.length >> 1]! ^= 0x40;
    writeFileSync(chunk.file, damaged);
    await assert.rejects(
      restoreSnapshot({ repo, snapshot: m.id, to: target, force: true }),
      (e: HavenError) => e.code === 'CORRUPT' && e.message.includes(`offset ${chunk.offset}`),
    );
    assert.equal(sha(target), before, 'a damaged chunk did not touch the target');
    // A restore to a new file that fails leaves no file at all.
    const fresh = join(dir.path, 'fresh.raw');
    await assert.rejects(restoreSnapshot({ repo, snapshot: m.id, to: fresh }));
    assert.throws(() => statSync(fresh), /ENOENT/);
    assert.deepEqual(leftovers(dir.path), []);

    // Repaired: --force replaces the target, whole.
    writeFileSync(chunk.file, stored);
    await restoreSnapshot({ repo, snapshot: m.id, to: target, force: true });
    assert.equal(sha(target), sha(img));
    assert.deepEqual(leftovers(dir.path), []);
  },
);

test(
  'restore to an NBD export: a missing chunk is found before anything is written',
  { timeout: 180_000 },
  async (t) => {
    const dir = tempDir();
    const repo = join(dir.path, 'repo');
    await Repository.init(repo);
    const img = join(dir.path, 'disk.raw');
    makeImage(img, 8 * MiB);
    const m = await backupSource({ repo, source: img });
    const target = join(dir.path, 'export.raw');
    writeFileSync(target, Buffer.alloc(8 * MiB, 0x5a));
    const before = sha(target);
    const sock = join(dir.path, 'nbd.sock');
    const q = start('qemu-nbd', ['-f', 'raw', '-t', '-x', 'disk', `--socket=${sock}`, target]);
    t.after(async () => {
      await q.stop();
      dir.cleanup();
    });
    await waitForListen({ path: sock }, 10_000, q);
    const chunk = await aChunkFile(repo, m);
    const stored = readFileSync(chunk.file);
    rmSync(chunk.file);
    const uri = `nbd+unix:///disk?socket=${sock}`;
    await assert.rejects(
      restoreSnapshot({ repo, snapshot: m.id, to: uri }),
      (e: HavenError) => e.code === 'CORRUPT' && /nothing was restored/.test(e.message),
    );
    assert.equal(sha(target), before, 'the export was not written');
    writeFileSync(chunk.file, stored);
    await restoreSnapshot({ repo, snapshot: m.id, to: uri });
    assert.equal(sha(target), sha(img));
  },
);

test(
  'a full filesystem: restore --force and nbd copy --force fail with NO_SPACE, leave the old file and no partial one',
  { timeout: 180_000 },
  async (t) => {
    const dir = tempDir();
    const fsImage = join(dir.path, 'fs.img');
    const mnt = join(dir.path, 'mnt');
    mkdirSync(mnt);
    execFileSync('truncate', ['-s', '24M', fsImage]);
    execFileSync('mkfs.ext4', ['-q', fsImage]);
    execFileSync('mount', ['-o', 'loop', fsImage, mnt]);
    t.after(() => {
      try {
        execFileSync('umount', [mnt]);
      } finally {
        // mount -o loop detaches on umount; a device left attached (a failed umount) is detached here.
        const loops = execFileSync('losetup', ['-j', fsImage], { encoding: 'utf8' });
        for (const line of loops.split('\n').filter(Boolean))
          execFileSync('losetup', ['-d', line.slice(0, line.indexOf(':'))]);
        dir.cleanup();
      }
    });
    const repo = join(dir.path, 'repo');
    await Repository.init(repo);
    const small = join(dir.path, 'small.raw');
    makeImage(small, 4 * MiB);
    const ms = await backupSource({ repo, source: small });
    const big = join(dir.path, 'big.raw');
    makeImage(big, 48 * MiB);
    const mb = await backupSource({ repo, source: big });

    const target = join(mnt, 'target.raw');
    await restoreSnapshot({ repo, snapshot: ms.id, to: target });
    const free = () => Number(execFileSync('stat', ['-f', '-c', '%a', mnt], { encoding: 'utf8' }));
    const freeBefore = free();
    await assert.rejects(
      restoreSnapshot({ repo, snapshot: mb.id, to: target, force: true }),
      (e: HavenError) => e.code === 'NO_SPACE',
    );
    assert.equal(sha(target), sha(small), 'the old target is intact');
    assert.deepEqual(leftovers(mnt), []);
    assert.equal(free(), freeBefore, 'the partial restore was removed');

    await assert.rejects(nbdCopy(big, target, { force: true }), (e: HavenError) => e.code === 'NO_SPACE');
    assert.equal(sha(target), sha(small));
    assert.deepEqual(leftovers(mnt), []);
    const copy = join(mnt, 'copy.raw');
    await assert.rejects(nbdCopy(big, copy), (e: HavenError) => e.code === 'NO_SPACE');
    assert.throws(() => statSync(copy), /ENOENT/);
    assert.deepEqual(leftovers(mnt), []);
  },
);

test(
  'nbd copy and offline volume export refuse to overwrite a file without --force, and never write over a directory',
  { timeout: 180_000 },
  async (t) => {
    const dir = tempDir();
    t.after(dir.cleanup);
    const src = join(dir.path, 'src.raw');
    makeImage(src, 4 * MiB);
    const victim = join(dir.path, 'precious.txt');
    writeFileSync(victim, 'a host file\n');
    const cli = (...args: string[]) =>
      run(HAVEN_BIN, args).then(
        () => '',
        (e: { stderr: string }) => e.stderr,
      );
    assert.match(await cli('nbd', 'copy', src, victim), /precious.txt exists; give --force to overwrite it/);
    assert.equal(readFileSync(victim, 'utf8'), 'a host file\n');
    // Something that is not a file is refused even with --force.
    assert.match(await cli('nbd', 'copy', src, dir.path, '--force'), /is a directory/);
    assert.equal(await cli('nbd', 'copy', src, victim, '--force'), '');
    assert.equal(sha(victim), sha(src));
    // A server's --socket path removes only a stale socket, never a file.
    writeFileSync(victim, 'a host file\n');
    assert.match(
      await cli('nbd', 'serve', src, '--socket', victim),
      /precious.txt exists and is not a socket/,
    );
    assert.equal(readFileSync(victim, 'utf8'), 'a host file\n');

    // Offline volume export, raw and qcow2.
    const data = join(dir.path, 'data');
    await withStorage(data, (s) => {
      s.createPool('default', { path: join(dir.path, 'pool') });
      s.createVolume('v', 4 * MiB, 'default');
    });
    for (const format of ['raw', 'qcow2'])
      await withStorage(data, async (s) => {
        await assert.rejects(
          exportVolume(s, { source: 'v', image: victim, format }),
          (e: HavenError) => e.code === 'CONFLICT' && /give --force/.test(e.message),
        );
        assert.equal(readFileSync(victim, 'utf8'), 'a host file\n');
      });
    await withStorage(data, (s) =>
      exportVolume(s, { source: 'v', image: victim, format: 'qcow2', force: true }),
    );
    assert.equal(
      JSON.parse(execFileSync('qemu-img', ['info', '--output=json', victim], { encoding: 'utf8' })).format,
      'qcow2',
    );
    assert.deepEqual(leftovers(dir.path), []);
  },
);

test(
  'through the site daemon: volume export refuses an existing file without --force, replaces it with it',
  { timeout: 180_000 },
  async (t) => {
    const s = await site(t);
    await s.haven('volume', 'create', 'v', '--size', '4M');
    const victim = join(s.dir, '..', 'precious.txt');
    writeFileSync(victim, 'a host file\n');
    const err = await s.havenFails('volume', 'export', 'v', victim);
    assert.match(err, /precious.txt exists; give --force to overwrite it/);
    assert.equal(readFileSync(victim, 'utf8'), 'a host file\n');
    await s.haven('volume', 'export', 'v', victim, '--force');
    assert.equal(statSync(victim).size, 4 * MiB);
  },
);
