// `haven backup files`: file-level restore from a backup, without restoring the disk. A real guest
// writes files into ext4 on a GPT partition and on a bare disk; both disks are backed up; the
// listing shows the files with their sizes, extraction gives exactly the bytes the guest wrote
// (fileBytes()), with modes and times, refusing to overwrite and never writing through a symlink;
// missing paths and unformatted disks give clear errors; no mount or process outlives a command,
// not even one stopped by Ctrl-C.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import {
  existsSync,
  lstatSync,
  mkdirSync,
  readFileSync,
  readdirSync,
  readlinkSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { join } from 'node:path';
import { Repository } from '../../src/orchestration/index.js';
import { backupSource } from '../../src/protection/index.js';
import { tempDir } from '../support/tmp.js';
import { HAVEN_BIN, run } from '../support/proc.js';
import { ensureGuest, fileBytes, launchGuest, makeBlankDisk, makeExt4Disk } from '../support/guest.js';

const MiB = 1024 * 1024;

describe('haven backup files', () => {
  const tmp = tempDir();
  const repo = join(tmp.path, 'repo');
  // The command's work directories (FUSE mount, NBD socket) land in TMPDIR: here, where the test sees them.
  const work = join(tmp.path, 'work');
  const env = { ...process.env, TMPDIR: work };
  const files = (...args: string[]) => run(HAVEN_BIN, ['backup', 'files', ...args, '--repo', repo], { env });
  const json = async <T>(...args: string[]) => JSON.parse((await files(...args, '--json')).stdout) as T;
  const fails = async (args: string[], pattern: RegExp) =>
    assert.rejects(files(...args), (e: Error) => (assert.match(e.message, pattern), true));
  const leftovers = () => {
    const mounted = readFileSync('/proc/self/mountinfo', 'utf8')
      .split('\n')
      .filter((l) => l.includes(work));
    return [...mounted, ...readdirSync(work)];
  };
  let gptSnap = '';
  let bareSnap = '';
  let blankSnap = '';
  let dataStart = 0;
  const seedA = 21;
  const seedB = 22;
  const written: [string, number][] = [
    ['notes.txt', 5000],
    ['dir/b.bin', 300_000],
    ['dir/sub/c.txt', 12_345],
    ['dir/sub/empty', 0],
  ];

  before(async () => {
    ensureGuest();
    mkdirSync(work);
    await Repository.init(repo);
    // Disk A: GPT, partition 1 left unformatted, partition 2 ext4 (made by mke2fs at the partition's offset).
    const gpt = join(tmp.path, 'gpt.img');
    await makeBlankDisk(gpt, 64 * MiB);
    execFileSync('sfdisk', ['-q', gpt], {
      input: 'label: gpt\nsize=8MiB, name=raw\nname=data, type=linux\n',
    });
    const p2 = (
      JSON.parse(execFileSync('sfdisk', ['--json', gpt]).toString()) as {
        partitiontable: { partitions: { start: number; size: number }[] };
      }
    ).partitiontable.partitions[1]!;
    dataStart = p2.start * 512;
    execFileSync('mke2fs', [
      '-q',
      '-F',
      '-t',
      'ext4',
      '-E',
      `offset=${dataStart}`,
      gpt,
      `${(p2.size * 512) / 1024}k`,
    ]);
    // Disk B: ext4 on the whole disk.
    const bare = join(tmp.path, 'bare.img');
    await makeExt4Disk(bare, 32 * MiB, { 'hello.txt': 'hello from the host\n' });
    const g = launchGuest({
      drives: [{ path: gpt }, { path: bare }],
      command: [
        `fs disk=vda2 seed=${seedA} write=${written.map(([p, n]) => `${p}:${n}`).join(',')}`,
        `fs disk=vdb seed=${seedB} write=top.bin:70000`,
        'poweroff',
      ],
    });
    await g.ready();
    const exit = await g.exit;
    assert.equal(exit.code, 0, g.console());
    assert.equal(g.results.filter((r) => r.event === 'done' && r.cmd === 'fs').length, 2, g.console());
    gptSnap = (await backupSource({ repo, source: gpt })).id;
    bareSnap = (await backupSource({ repo, source: bare })).id;
    const blank = join(tmp.path, 'blank.img');
    await makeBlankDisk(blank, 16 * MiB);
    blankSnap = (await backupSource({ repo, source: blank })).id;
  });
  after(() => tmp.cleanup());

  it('lists the partitions and filesystems of a disk', async () => {
    const a = await json<{
      scheme: string;
      filesystems: { partition: number; start: number; type: string | null; readable: boolean }[];
    }>(gptSnap);
    assert.equal(a.scheme, 'gpt');
    assert.deepEqual(
      a.filesystems.map((f) => [f.partition, f.type, f.readable]),
      [
        [1, null, false],
        [2, 'ext4', true],
      ],
    );
    assert.equal(a.filesystems[1]!.start, dataStart);
    const b = await json<{ scheme: string; filesystems: { partition: null; type: string }[] }>(bareSnap);
    assert.deepEqual([b.scheme, b.filesystems[0]!.partition, b.filesystems[0]!.type], ['none', null, 'ext4']);
    const text = (await files(gptSnap)).stdout;
    assert.match(text, /GPT partition table/);
    assert.match(text, /^2\s+\d+\s+[\d.]+ MiB\s+ext4\s+readable$/m);
    assert.deepEqual(leftovers(), []);
  });

  it('lists directories with names, types, sizes, modes and times', async () => {
    type Listing = {
      partition: number | null;
      path: string;
      entries: { name: string; type: string; size: number; mode: string; mtime: string }[];
    };
    const dir = await json<Listing>(gptSnap, '/dir'); // the only readable partition is chosen
    assert.equal(dir.partition, 2);
    assert.deepEqual(
      dir.entries.map((e) => [e.name, e.type, e.type === 'file' ? e.size : null, e.mode]),
      [
        ['b.bin', 'file', 300_000, '0644'],
        ['sub', 'directory', null, '0755'],
      ],
    );
    for (const e of dir.entries) assert.ok(Math.abs(Date.parse(e.mtime) - Date.now()) < 86400_000, e.mtime);
    const sub = await json<Listing>(gptSnap, 'dir/sub/', '--partition', '2');
    assert.deepEqual(
      sub.entries.map((e) => [e.name, e.size]),
      [
        ['c.txt', 12_345],
        ['empty', 0],
      ],
    );
    const root = await json<Listing>(bareSnap, '/');
    assert.deepEqual(
      root.entries.map((e) => e.name),
      ['hello.txt', 'lost+found', 'top.bin'],
    );
    assert.equal(root.entries.find((e) => e.name === 'top.bin')!.size, 70_000);
    const one = await json<Listing>(gptSnap, '/notes.txt');
    assert.deepEqual(
      one.entries.map((e) => [e.name, e.size]),
      [['notes.txt', 5000]],
    );
    assert.match((await files(gptSnap, '/dir')).stdout, /^-0644\s+300000\s+\S+Z\s+b\.bin$/m);
  });

  it('extracts a tree with exactly the bytes the guest wrote, its modes and times', async () => {
    const to = join(tmp.path, 'out');
    const r = await json<{ to: string; files: number; directories: number; bytes: number }>(
      gptSnap,
      '--extract',
      '/dir',
      '--to',
      to,
    );
    assert.deepEqual([r.to, r.files, r.directories, r.bytes], [join(to, 'dir'), 3, 2, 300_000 + 12_345]);
    for (const [p, n] of written.filter(([p]) => p.startsWith('dir/')))
      assert.ok(
        readFileSync(join(to, p)).equals(fileBytes(seedA, p, n)),
        `${p} has the bytes the guest wrote`,
      );
    const listed = await json<{ entries: { name: string; mtime: string }[] }>(gptSnap, '/dir');
    const b = statSync(join(to, 'dir/b.bin'));
    assert.equal((b.mode & 0o7777).toString(8), '644');
    assert.equal(
      Math.floor(b.mtimeMs / 1000),
      Math.floor(Date.parse(listed.entries[0]!.mtime) / 1000),
      'mtime kept',
    );
    assert.equal((statSync(join(to, 'dir/sub')).mode & 0o7777).toString(8), '755');
    // One file, from the bare disk.
    await files(bareSnap, '--extract', 'top.bin', '--to', to);
    assert.ok(readFileSync(join(to, 'top.bin')).equals(fileBytes(seedB, 'top.bin', 70_000)));
    assert.deepEqual(leftovers(), []);
  });

  it('refuses to overwrite without --force, and never writes through a symlink in the target', async () => {
    const to = join(tmp.path, 'clash');
    mkdirSync(to);
    await files(gptSnap, '--extract', '/dir', '--to', to);
    await fails([gptSnap, '--extract', '/dir', '--to', to], /already exist.*--force/s);
    writeFileSync(join(to, 'dir/b.bin'), 'changed locally');
    await files(gptSnap, '--extract', '/dir', '--to', to, '--force');
    assert.ok(readFileSync(join(to, 'dir/b.bin')).equals(fileBytes(seedA, 'dir/b.bin', 300_000)));
    // dir is a symlink to somewhere outside: refused, then (with --force) replaced, not followed.
    const outside = join(tmp.path, 'outside');
    mkdirSync(outside);
    const trap = join(tmp.path, 'trap');
    mkdirSync(trap);
    writeFileSync(join(outside, 'b.bin'), 'not to be touched');
    symlinkSync(outside, join(trap, 'dir'));
    await fails(
      [gptSnap, '--extract', '/dir', '--to', trap],
      /: 1 file\(s\) already exist, e\.g\. \S*trap\/dir: give --force/,
    );
    await files(gptSnap, '--extract', '/dir', '--to', trap, '--force');
    assert.ok(lstatSync(join(trap, 'dir')).isDirectory());
    assert.deepEqual(readdirSync(outside), ['b.bin'], 'nothing was written through the symlink');
    assert.equal(readFileSync(join(outside, 'b.bin'), 'utf8'), 'not to be touched');
    assert.deepEqual(leftovers(), []);
  });

  it('symlinks in the backup are recreated as symlinks, pointing where they pointed', async () => {
    const src = join(tmp.path, 'links-src');
    mkdirSync(join(src, 'd'), { recursive: true });
    writeFileSync(join(src, 'd/f'), 'x');
    symlinkSync('/etc', join(src, 'd/escape'));
    symlinkSync('f', join(src, 'd/rel'));
    const long = `/${'long-target/'.repeat(10)}end`; // beyond the 60 bytes an inode holds: a slow symlink
    symlinkSync(long, join(src, 'd/long'));
    const img = join(tmp.path, 'links.img');
    await makeBlankDisk(img, 16 * MiB);
    execFileSync('mke2fs', ['-q', '-F', '-t', 'ext4', '-d', src, img]);
    const snap = (await backupSource({ repo, source: img })).id;
    const l = await json<{ entries: { name: string; type: string; target?: string }[] }>(snap, '/d');
    assert.deepEqual(
      l.entries.map((e) => [e.name, e.type, e.target]),
      [
        ['escape', 'symlink', '/etc'],
        ['f', 'file', undefined],
        ['long', 'symlink', long],
        ['rel', 'symlink', 'f'],
      ],
    );
    const to = join(tmp.path, 'links-out');
    const r = await json<{ symlinks: number; files: number }>(snap, '--extract', '/d', '--to', to);
    assert.deepEqual([r.files, r.symlinks], [1, 3]);
    assert.equal(readlinkSync(join(to, 'd/escape')), '/etc');
    assert.equal(readlinkSync(join(to, 'd/long')), long);
    assert.equal(readFileSync(join(to, 'd/rel'), 'utf8'), 'x');
  });

  it('a missing path, an unformatted disk, a wrong partition or disk: clear errors', async () => {
    await fails([gptSnap, '/dir/nope'], /has no \/dir\/nope/);
    await fails([gptSnap, '/notes.txt/x'], /\/notes\.txt is a file, not a directory/);
    await fails([gptSnap, '--extract', '/nope', '--to', join(tmp.path, 'x')], /has no \/nope/);
    assert.equal(existsSync(join(tmp.path, 'x')), false);
    await fails([blankSnap, '/'], /holds no filesystem Haven recognises: is it unformatted/);
    assert.match((await files(blankSnap)).stdout, /no partition table[\s\S]*\(none recognised\)/);
    await fails([gptSnap, '/', '--partition', '1'], /partition 1: nothing recognised/);
    await fails([gptSnap, '/', '--partition', '7'], /has no partition 7; it has 1, 2/);
    await fails([gptSnap, '/', '--disk', '1'], /has 1 disk\(s\); there is no disk 1/);
    await fails([gptSnap, '/', '--extract', '/dir', '--to', tmp.path], /not both/);
    assert.deepEqual(leftovers(), []);
  });

  it('Ctrl-C during an extraction unmounts and stops everything', async () => {
    const src = join(tmp.path, 'big-src');
    mkdirSync(src);
    writeFileSync(join(src, 'big.bin'), randomBytes(48 * MiB));
    const img = join(tmp.path, 'big.img');
    await makeBlankDisk(img, 96 * MiB);
    execFileSync('mke2fs', ['-q', '-F', '-t', 'ext4', '-d', src, img]);
    const snap = (await backupSource({ repo, source: img })).id;
    const child = spawn(
      HAVEN_BIN,
      ['backup', 'files', snap, '--repo', repo, '--extract', '/', '--to', join(tmp.path, 'big-out')],
      {
        env,
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    );
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const exited = new Promise<number | null>((res) => child.once('exit', (code) => res(code)));
    const deadline = Date.now() + 30_000;
    while (!readFileSync('/proc/self/mountinfo', 'utf8').includes(work)) {
      assert.ok(Date.now() < deadline, 'the disk was never mounted');
      await new Promise((r) => setTimeout(r, 10));
    }
    child.kill('SIGINT');
    const code = await exited;
    assert.notEqual(code, 0, 'an interrupted extraction fails');
    assert.match(stderr, /interrupted|aborted/i);
    assert.deepEqual(leftovers(), []);
    const partial = join(tmp.path, 'big-out', 'big.bin');
    assert.ok(!existsSync(partial) || statSync(partial).size === 48 * MiB, 'no file is left cut short');
  });
});
