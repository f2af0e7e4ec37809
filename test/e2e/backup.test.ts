// Backup and restore end to end: round trips of raw and qcow2 images and of a Haven volume,
// incrementals from changed-block tracking that read only what changed, bit flips found by
// verify and refused by restore, encryption, kill -9 during a backup, and a full target disk.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, execFileSync, spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import {
  closeSync,
  existsSync,
  mkdirSync,
  openSync,
  readFileSync,
  readdirSync,
  statSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { HavenError } from '../../src/common/index.js';
import { withStorage } from '../../src/storage/index.js';
import { backupSource, restoreSnapshot } from '../../src/protection/index.js';
import { Repository, gc, verify } from '../../src/repository/index.js';
import { HAVEN_BIN } from '../support/proc.js';
import { tempDir } from '../support/tmp.js';

const run = promisify(execFile);
const MiB = 1024 * 1024;

/** A disk-like image: zeros, random data and repeated regions, with a recognisable text pattern. */
function makeImage(path: string, size: number, seed = 1): void {
  writeFileSync(path, '');
  const fd = openSync(path, 'r+');
  const repeated = randomBytes(MiB);
  for (let at = 0; at < size; at += MiB) {
    const k = (at / MiB + seed) % 10;
    if (k < 4) continue; // hole
    const block =
      k < 7
        ? randomBytes(MiB)
        : k < 9
          ? repeated
          : Buffer.from(`HAVEN-PLAINTEXT-MARKER-${seed} `.repeat(44000).slice(0, MiB));
    writeSync(fd, block, 0, MiB, at);
  }
  closeSync(fd);
  execFileSync('truncate', ['-s', String(size), path]);
}

function sha(path: string): string {
  return createHash('sha256').update(readFileSync(path)).digest('hex');
}

test('raw and qcow2 images round-trip bit-identically; a second backup of the same image stores nothing new', async (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  const repo = join(dir.path, 'repo');
  await Repository.init(repo);
  const raw = join(dir.path, 'disk.raw');
  makeImage(raw, 48 * MiB);
  const m1 = await backupSource({ repo, source: raw });
  assert.equal(m1.disks[0]!.size, 48 * MiB);
  assert.ok(m1.stats.readBytes < 48 * MiB, 'holes are not read');
  const out = join(dir.path, 'out.raw');
  const r = await restoreSnapshot({ repo, snapshot: m1.id, to: out });
  assert.equal(sha(out), sha(raw));
  assert.ok(r.zeroBytes > 0);
  const m2 = await backupSource({ repo, source: raw });
  assert.equal(m2.stats.newChunks, 0);
  await assert.rejects(
    restoreSnapshot({ repo, snapshot: m1.id, to: out }),
    (e: HavenError) => e.code === 'CONFLICT',
  );

  const qcow = join(dir.path, 'disk.qcow2');
  execFileSync('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', raw, qcow]);
  execFileSync('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x77 5M 100k', qcow]);
  const m3 = await backupSource({ repo, source: qcow });
  const out2 = join(dir.path, 'out2.raw');
  await restoreSnapshot({ repo, snapshot: m3.id, to: out2 });
  execFileSync('qemu-img', ['compare', '-f', 'qcow2', '-F', 'raw', qcow, out2]);
  // The independent check of the repository: every chunk reads back and matches its digest.
  const v = await verify(await Repository.open(repo));
  assert.equal(v.damaged.length, 0);
  assert.equal(v.snapshots.length, 3);
});

test('a Haven volume: restore is its content at the backup; the incremental reads only what changed', async (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  const repo = join(dir.path, 'repo');
  const data = join(dir.path, 'site');
  await Repository.init(repo); // 256 KiB chunks: 64 KiB changes are merged with the parent's chunks
  const size = 64 * MiB;
  const expected = Buffer.alloc(size);
  await withStorage(data, async (s) => {
    s.createPool('default');
    s.createVolume('vol', size, 'default');
    const dev = s.openDevice('vol');
    const first = randomBytes(8 * MiB);
    await dev.write(first, 4 * MiB);
    first.copy(expected, 4 * MiB);
    await dev.flush();
  });
  const full = await backupSource({ repo, source: 'volume:vol', data });
  assert.equal(full.parent, undefined);
  const atFull = Buffer.from(expected);

  // 1% of the disk in scattered 64 KiB writes, through the volume's tap (as a VM's writes are).
  const writes: number[] = [];
  await withStorage(data, async (s) => {
    const dev = s.openDevice('vol');
    for (let i = 0; i < 10; i++) {
      const off = (i * 97 + 13) * 64 * 1024;
      const b = randomBytes(64 * 1024);
      await dev.write(b, off);
      b.copy(expected, off);
      writes.push(off);
    }
    await dev.flush();
  });
  const inc = await backupSource({ repo, source: 'volume:vol', data });
  assert.equal(inc.parent, full.id);
  assert.equal(inc.stats.readBytes, 10 * 64 * 1024, 'exactly the dirty extents were read');

  // Writes after the backup are not in it.
  await withStorage(data, async (s) => {
    const dev = s.openDevice('vol');
    await dev.write(Buffer.alloc(MiB, 0xee), 0);
    await dev.flush();
  });
  const a = join(dir.path, 'full.raw');
  const b = join(dir.path, 'inc.raw');
  await restoreSnapshot({ repo, snapshot: full.id, to: a });
  await restoreSnapshot({ repo, snapshot: inc.id, to: b });
  assert.ok(readFileSync(a).equals(atFull), 'the full backup restores the volume as it was');
  assert.ok(readFileSync(b).equals(expected), 'the incremental restores the volume as it was');
  // Restore into a new volume of the site, then read it back.
  await restoreSnapshot({ repo, snapshot: inc.id, to: 'volume:copy', data });
  await withStorage(data, async (s) => {
    const got = Buffer.alloc(size);
    await s.openDevice('copy', { readOnly: true }).read(got, 0);
    assert.ok(got.equals(expected));
    // Only the newest backup's epoch snapshot is kept on the volume.
    assert.deepEqual(
      s.listSnapshots('vol').map((x) => x.name),
      [inc.bitmap!.epoch],
    );
  });
  const third = await backupSource({ repo, source: 'volume:vol', data });
  assert.equal(third.parent, inc.id);
  assert.equal(third.stats.readBytes, MiB);
});

test('bit flips: verify names exactly the damaged snapshots; restore fails loudly with the offset', async (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  const repo = join(dir.path, 'repo');
  await Repository.init(repo);
  const imgA = join(dir.path, 'a.raw');
  const imgB = join(dir.path, 'b.raw');
  makeImage(imgA, 16 * MiB, 1);
  makeImage(imgB, 16 * MiB, 5);
  const ma = await backupSource({ repo, source: imgA });
  const mb = await backupSource({ repo, source: imgB });
  const r = await Repository.open(repo);
  // A chunk only A uses: flip one byte in the middle of its file.
  const chunksA = await (await r.openIndex(ma, 0)).chunks();
  const inB = new Set((await (await r.openIndex(mb, 0)).chunks()).map((c) => c.digest.toString('hex')));
  const victim = chunksA.find((c) => !inB.has(c.digest.toString('hex')));
  assert.ok(victim);
  const hex = victim.digest.toString('hex');
  const file = join(repo, 'chunks', hex.slice(0, 2), hex);
  const bytes = readFileSync(file);
  bytes[bytes.length >> 1]! ^= 0x40;
  writeFileSync(file, bytes);

  const v = await verify(r);
  assert.equal(v.damagedChunks, 1);
  assert.deepEqual(
    v.damaged.map((d) => [d.snapshot, d.offsets]),
    [[ma.id, [victim.offset]]],
  );
  // A rolling verify in four runs checks every chunk once, and finds the damage in its slice.
  const runs = [];
  for (let i = 0; i < 4; i++) runs.push(await verify(r, undefined, { rolling: 4 }));
  assert.deepEqual(
    runs.map((x) => x.slice?.index),
    [0, 1, 2, 3],
  );
  assert.equal(
    runs.reduce((n, x) => n + x.chunks, 0),
    v.chunks,
  );
  const expectSlice = Math.floor((parseInt(hex.slice(0, 4), 16) * 4) / 65536);
  assert.deepEqual(
    runs.map((x) => x.damagedChunks),
    [0, 1, 2, 3].map((k) => (k === expectSlice ? 1 : 0)),
  );
  assert.equal(runs[expectSlice]!.damaged[0]!.snapshot, ma.id);
  assert.equal((await verify(r, undefined, { rolling: 4 })).slice?.index, 0, 'the fifth run starts over');
  await assert.rejects(
    restoreSnapshot({ repo, snapshot: ma.id, to: join(dir.path, 'out.raw') }),
    (e: HavenError) => e.code === 'CORRUPT' && e.message.includes(`offset ${victim.offset}`),
  );
  await restoreSnapshot({ repo, snapshot: mb.id, to: join(dir.path, 'outb.raw') });
  assert.equal(sha(join(dir.path, 'outb.raw')), sha(imgB));
  // The CLI says it too, with a failing exit status.
  const cli = await run(HAVEN_BIN, ['repo', 'verify', '--repo', repo]).then(
    () => ({ code: 0, stdout: '' }),
    (e: { code: number; stdout: string }) => e,
  );
  assert.equal(cli.code, 1);
  assert.match(cli.stdout, new RegExp(`DAMAGED ${ma.id} disk0: offsets ${victim.offset}:`));
});

test('encrypted repository: no plaintext in its files; a wrong passphrase is a clear error', async (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  const repo = join(dir.path, 'repo');
  const passphrase = 'correct horse battery staple';
  await Repository.init(repo, { passphrase });
  const img = join(dir.path, 'disk.raw');
  makeImage(img, 24 * MiB, 7);
  assert.ok(readFileSync(img).includes('HAVEN-PLAINTEXT-MARKER-7'));
  const m = await backupSource({ repo, passphrase, source: img });
  const files: string[] = [];
  const walk = (d: string) => {
    for (const e of readdirSync(d, { withFileTypes: true }))
      if (e.isDirectory()) walk(join(d, e.name));
      else files.push(join(d, e.name));
  };
  walk(repo);
  assert.ok(files.length > 10);
  const marker = Buffer.from('HAVEN-PLAINTEXT-MARKER');
  const sample = readFileSync(img).subarray(8 * MiB, 8 * MiB + 64);
  for (const f of files) {
    const content = readFileSync(f);
    assert.ok(!content.includes(marker), `${f} holds plaintext`);
    assert.ok(!content.includes(sample), `${f} holds source bytes`);
  }
  await assert.rejects(
    restoreSnapshot({ repo, passphrase: 'wrong horse', snapshot: m.id, to: join(dir.path, 'x.raw') }),
    (e: HavenError) => e.code === 'UNAUTHENTICATED' && /wrong passphrase/.test(e.message),
  );
  await assert.rejects(
    restoreSnapshot({ repo, snapshot: m.id, to: join(dir.path, 'x.raw') }),
    (e: HavenError) => /is encrypted: give its passphrase/.test(e.message),
  );
  await restoreSnapshot({ repo, passphrase, snapshot: m.id, to: join(dir.path, 'ok.raw') });
  assert.equal(sha(join(dir.path, 'ok.raw')), sha(img));
});

test('kill -9 during a backup: no snapshot appears, the next backup succeeds, gc removes the leftovers', async (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  const repo = join(dir.path, 'repo');
  await Repository.init(repo);
  const img = join(dir.path, 'big.raw');
  makeImage(img, 512 * MiB, 3);
  const chunkCount = () =>
    existsSync(join(repo, 'chunks'))
      ? readdirSync(join(repo, 'chunks'), { recursive: true, withFileTypes: true }).filter(
          (e) => e.isFile() && !e.name.startsWith('.'),
        ).length
      : 0;
  // Killed once it has written `more` chunks of its own: at different points of its run, whatever
  // the machine's speed (a fixed delay kills a slow machine's backup before it wrote anything).
  const killAfterChunks = async (args: string[], more: number) => {
    const had = chunkCount();
    const child = spawn(HAVEN_BIN, args, { stdio: 'ignore' });
    const exited = new Promise((r) => child.once('exit', r));
    for (let i = 0; chunkCount() < had + more; i++) {
      assert.ok(i < 3000 && child.exitCode === null, 'the backup was still running when killed');
      await sleep(10);
    }
    child.kill('SIGKILL');
    await exited;
  };
  for (const more of [1, 40, 120]) await killAfterChunks(['backup', img, '--repo', repo], more);
  const r = await Repository.open(repo);
  const before = await r.listSnapshots();
  assert.equal(before.length, 0, 'a killed backup leaves no visible snapshot');
  const leftover = (await r.stats()).chunks;
  t.diagnostic(`chunks left by killed backups: ${leftover}`);
  // Chunks are flushed together before a manifest, so after a power loss a dead backup's chunk
  // files can be empty or torn. Tear two as that would; the next backup must not reuse them.
  const chunkFiles = readdirSync(join(repo, 'chunks'), { recursive: true, withFileTypes: true })
    .filter((e) => e.isFile() && !e.name.startsWith('.'))
    .map((e) => join(e.parentPath, e.name));
  assert.ok(chunkFiles.length >= 2);
  const [emptied, torn] = chunkFiles as [string, string];
  writeFileSync(emptied, '');
  const half = readFileSync(torn);
  writeFileSync(torn, Buffer.concat([half.subarray(0, half.length >> 1), Buffer.alloc(half.length >> 1)]));
  const m = await backupSource({ repo, source: join(dir.path, 'big.raw') });
  const out = join(dir.path, 'out.raw');
  await restoreSnapshot({ repo, snapshot: m.id, to: out });
  assert.equal(sha(out), sha(img), 'the torn chunks were not reused');
  for (const f of [emptied, torn])
    assert.ok(!existsSync(f) || statSync(f).size > 1000, `${f} was replaced or removed, not reused`);
  // A second image's backup dies; gc then removes exactly what no snapshot uses.
  const other = join(dir.path, 'other.raw');
  makeImage(other, 256 * MiB, 9);
  await killAfterChunks(['backup', other, '--repo', repo], 6);
  const swept = await gc(r, { graceMs: 0 });
  assert.ok(swept.removedChunks > 0, 'the dead backup left chunks that gc removed');
  const v = await verify(r);
  assert.equal(v.damaged.length, 0);
  assert.equal((await r.stats()).chunks, v.chunks, 'every chunk left is used by a snapshot');
  await restoreSnapshot({ repo, snapshot: m.id, to: out, force: true });
  assert.equal(sha(out), sha(img));
});

test('a full target disk fails the backup cleanly and leaves the repository unharmed', async (t) => {
  const dir = tempDir();
  const mnt = join(dir.path, 'small');
  mkdirSync(mnt);
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=24m', 'tmpfs', mnt]);
  t.after(() => {
    execFileSync('umount', ['-l', mnt]);
    dir.cleanup();
  });
  const repo = join(mnt, 'repo');
  await Repository.init(repo);
  const small = join(dir.path, 'small.raw');
  makeImage(small, 8 * MiB, 2);
  const ok = await backupSource({ repo, source: small });
  const big = join(dir.path, 'big.raw');
  makeImage(big, 96 * MiB, 4);
  await assert.rejects(backupSource({ repo, source: big }), (e: HavenError) => e.code === 'NO_SPACE');
  const r = await Repository.open(repo);
  assert.deepEqual(
    (await r.listSnapshots()).map((s) => s.id),
    [ok.id],
  );
  assert.equal((await verify(r)).damaged.length, 0);
  await gc(r, { graceMs: 0 });
  assert.ok(statSync(mnt).isDirectory());
  const out = join(dir.path, 'out.raw');
  await restoreSnapshot({ repo, snapshot: ok.id, to: out });
  assert.equal(sha(out), sha(small));
  // With space again, a backup works.
  const again = await backupSource({ repo, source: small });
  assert.equal(again.stats.newChunks, 0);
});

test('quick rollback rewrites only what changed since the newest backup, and refuses older ones', async (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  const repo = join(dir.path, 'repo');
  const data = join(dir.path, 'site');
  await Repository.init(repo);
  const size = 64 * MiB;
  const content = async () =>
    withStorage(data, async (s) => {
      const out = Buffer.alloc(size);
      await s.openDevice('vol').read(out, 0);
      return createHash('sha256').update(out).digest('hex');
    });
  await withStorage(data, async (s) => {
    s.createPool('default');
    s.createVolume('vol', size, 'default');
    const dev = s.openDevice('vol');
    await dev.write(randomBytes(16 * MiB), 8 * MiB);
    await dev.flush();
  });
  const snap = await backupSource({ repo, source: 'volume:vol', data });
  const atBackup = await content();
  // Damage after the backup: scattered writes, and a megabyte zeroed in the data.
  await withStorage(data, async (s) => {
    const dev = s.openDevice('vol');
    for (let i = 0; i < 10; i++) await dev.write(randomBytes(64 * 1024), (i * 101 + 7) * 64 * 1024);
    await dev.writeZeroes(12 * MiB, MiB);
    await dev.flush();
  });
  assert.notEqual(await content(), atBackup);
  const { stdout } = await run(process.execPath, [
    HAVEN_BIN,
    'restore',
    snap.id,
    '--to',
    'volume:vol',
    '--rollback',
    '--data',
    data,
    '--repo',
    repo,
    '--json',
  ]);
  const r = (JSON.parse(stdout) as { result: { changedBytes: number; dataBytes: number; zeroBytes: number } })
    .result;
  assert.equal(await content(), atBackup, 'the volume is its content at the backup again');
  assert.ok(
    r.changedBytes >= 10 * 64 * 1024 + MiB && r.changedBytes <= 2 * MiB,
    `changed: ${r.changedBytes}`,
  );
  const rewritten = r.dataBytes + r.zeroBytes;
  assert.ok(
    rewritten <= 11 * 256 * 1024 + MiB,
    `only the changed chunks were rewritten (${rewritten} bytes)`,
  );
  // A newer backup exists: the old one can only be restored in full.
  await backupSource({ repo, source: 'volume:vol', data });
  await assert.rejects(
    run(process.execPath, [
      HAVEN_BIN,
      'restore',
      snap.id,
      '--to',
      'volume:vol',
      '--rollback',
      '--data',
      data,
      '--repo',
      repo,
    ]),
    (e: { stderr: string }) => /newest backup of volume vol/.test(e.stderr),
  );
});
