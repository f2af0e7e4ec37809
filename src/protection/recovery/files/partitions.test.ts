// The partition tables and filesystems of a disk, as Haven reads them, against util-linux's own
// reading (sfdisk --json) of tables sfdisk wrote, and filesystems made by mke2fs and mkswap.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { openRawFile } from '../../../block/index.js';
import { tempDir } from '../../../../test/support/tmp.js';
import { diskLayout, pickFilesystem } from './disk.js';
import { probeFilesystem } from './fs-probe.js';
import { readPartitionTable } from './partitions.js';

const MiB = 1024 * 1024;

function disk(path: string, size: number, script?: string): void {
  writeFileSync(path, '');
  truncateSync(path, size);
  if (script) execFileSync('sfdisk', ['-q', path], { input: script, stdio: ['pipe', 'ignore', 'pipe'] });
}

/** What sfdisk reads back: number, byte start, byte size, type; the extended container left out. */
function sfdiskView(path: string) {
  const t = JSON.parse(execFileSync('sfdisk', ['--json', path]).toString()) as {
    partitiontable: {
      partitions: { node: string; start: number; size: number; type: string; name?: string }[];
    };
  };
  return t.partitiontable.partitions
    .filter((p) => !['5', 'f', '85'].includes(p.type))
    .map((p) => ({
      number: Number(/(\d+)$/.exec(p.node)![1]),
      start: p.start * 512,
      size: p.size * 512,
      type: p.type.length === 36 ? p.type.toLowerCase() : p.type.padStart(2, '0'),
      ...(p.name ? { name: p.name } : {}),
    }));
}

test('GPT and MBR (with logical partitions) read as sfdisk reads them', async (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  const gpt = join(dir.path, 'gpt.img');
  disk(
    gpt,
    64 * MiB,
    'label: gpt\nsize=8MiB, name=raw\nsize=4MiB, name=swap, type=swap\nname=data, type=linux\n',
  );
  const mbr = join(dir.path, 'mbr.img');
  disk(
    mbr,
    64 * MiB,
    'label: dos\n,8MiB,83\n,32MiB,5\nstart=20480,size=4MiB,type=83\nstart=30720,size=4MiB,type=82\n,4MiB,c\n',
  );
  for (const [path, scheme] of [
    [gpt, 'gpt'],
    [mbr, 'mbr'],
  ] as const) {
    const dev = openRawFile(path, { readOnly: true });
    const table = await readPartitionTable(dev);
    await dev.close();
    assert.equal(table.scheme, scheme);
    assert.deepEqual(table.partitions, sfdiskView(path), `${scheme} partitions`);
  }
});

test('filesystems are recognised on the whole disk and in partitions; the choice errs clearly', async (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  const kinds: [string, string[]][] = [
    ['ext2', ['mke2fs', '-q', '-F', '-t', 'ext2']],
    ['ext3', ['mke2fs', '-q', '-F', '-t', 'ext3']],
    ['ext4', ['mke2fs', '-q', '-F', '-t', 'ext4']],
    ['swap', ['mkswap', '-q']],
  ];
  for (const [kind, cmd] of kinds) {
    const img = join(dir.path, `${kind}.img`);
    disk(img, 16 * MiB);
    execFileSync(cmd[0]!, [...cmd.slice(1), img], { stdio: 'ignore' });
    const dev = openRawFile(img, { readOnly: true });
    assert.equal(await probeFilesystem(dev, 0, dev.size), kind);
    const layout = await diskLayout(dev);
    await dev.close();
    assert.equal(layout.scheme, 'none', `${kind}: a bare filesystem is not a partition table`);
    if (kind.startsWith('ext')) assert.equal(pickFilesystem(layout, kind).partition, null);
    else assert.throws(() => pickFilesystem(layout, kind), /reads ext2, ext3 and ext4 only/);
  }
  const blank = join(dir.path, 'blank.img');
  disk(blank, 16 * MiB);
  const bdev = openRawFile(blank, { readOnly: true });
  const blayout = await diskLayout(bdev);
  await bdev.close();
  assert.deepEqual(
    blayout.filesystems.map((f) => f.type),
    [null],
  );
  assert.throws(() => pickFilesystem(blayout, 'blank'), /holds no filesystem Haven recognises/);
  assert.throws(() => pickFilesystem(blayout, 'blank', 1), /no partition table.*leave out --partition/);

  // Two ext4 partitions: which one must be said; an unformatted one is refused by name.
  const two = join(dir.path, 'two.img');
  disk(two, 64 * MiB, 'label: gpt\nsize=8MiB\nsize=16MiB\nsize=16MiB\n');
  const parts = sfdiskView(two);
  for (const p of parts.slice(1))
    execFileSync('mke2fs', ['-q', '-F', '-t', 'ext4', '-E', `offset=${p.start}`, two, `${p.size / 1024}k`], {
      stdio: 'ignore',
    });
  const dev = openRawFile(two, { readOnly: true });
  const layout = await diskLayout(dev);
  await dev.close();
  assert.deepEqual(
    layout.filesystems.map((f) => [f.partition, f.type, f.readable]),
    [
      [1, null, false],
      [2, 'ext4', true],
      [3, 'ext4', true],
    ],
  );
  assert.throws(() => pickFilesystem(layout, 'two'), /2 readable partitions.*--partition N/);
  assert.equal(pickFilesystem(layout, 'two', 3).start, parts[2]!.start);
  assert.throws(() => pickFilesystem(layout, 'two', 1), /partition 1: nothing recognised.*unformatted/);
  assert.throws(() => pickFilesystem(layout, 'two', 4), /has no partition 4; it has 1, 2, 3/);
});
