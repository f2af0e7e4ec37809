// Images whose content a guest may have written never make Haven read a host file: a raw disk
// whose first sector is a qcow2 header with backing_file=<host file> (or a VMDK descriptor naming
// a host file as its extent) is refused when its format would be probed, and read as the bytes it
// holds with --format raw, as a backup source file, as an import source, as a volume read by the
// san and nbd transports and as the disk of a running QEMU VM read through QMP. Damaged images
// (a truncated qcow2) and FIFOs are refused with a message naming the file.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, execFileSync, spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { copyFileSync, existsSync, readFileSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { HavenError } from '../../src/common/index.js';
import { nbdCopy } from '../../src/orchestration/index.js';
import { importVolume, serveStorage, withStorage } from '../../src/storage/index.js';
import { backupSource, restoreSnapshot } from '../../src/protection/index.js';
import { Repository } from '../../src/repository/index.js';
import { HAVEN_BIN } from '../support/proc.js';
import { tempDir } from '../support/tmp.js';

const run = promisify(execFile);
const MiB = 1024 * 1024;
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

/** A host file with a recognisable secret, and guest disks crafted to name it. */
function craft(dir: string) {
  const secret = `HOST-SECRET-${randomBytes(8).toString('hex')}`;
  const host = join(dir, 'host-secret.txt');
  writeFileSync(host, Buffer.from(`${secret}\n`.repeat(40000)).subarray(0, MiB));
  const header = join(dir, 'header.qcow2');
  execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', host, '-F', 'raw', header, '1M']);
  // The raw disk of a guest that wrote that qcow2 header at its start.
  const qcow2Disk = join(dir, 'guest-qcow2.raw');
  copyFileSync(header, qcow2Disk);
  truncateSync(qcow2Disk, 4 * MiB);
  // The same with a VMDK descriptor whose extent is the host file.
  const vmdkDisk = join(dir, 'guest-vmdk.raw');
  writeFileSync(
    vmdkDisk,
    `# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType="monolithicFlat"\n\nRW 2048 FLAT "${host}" 0\n\nddb.adapterType = "ide"\n`,
  );
  truncateSync(vmdkDisk, 4 * MiB);
  return { secret, host, qcow2Disk, vmdkDisk };
}

function assertNoSecret(b: Buffer, secret: string, what: string) {
  assert.equal(b.includes(secret), false, `${what} holds the host file's bytes`);
}

test(
  'a guest-written qcow2 header or VMDK descriptor in a backup source file: refused when probed, read as raw bytes with --format raw',
  { timeout: 120_000 },
  async (t) => {
    const dir = tempDir();
    t.after(dir.cleanup);
    const c = craft(dir.path);
    const repo = join(dir.path, 'repo');
    await Repository.init(repo);
    for (const disk of [c.qcow2Disk, c.vmdkDisk]) {
      await assert.rejects(
        backupSource({ repo, source: disk }),
        (e: HavenError) =>
          e.code === 'INVALID_ARGUMENT' &&
          e.message.includes(disk) &&
          e.message.includes(c.host) &&
          /--format raw/.test(e.message),
      );
      const m = await backupSource({ repo, source: disk, format: 'raw' });
      const out = join(dir.path, 'restored.raw');
      await restoreSnapshot({ repo, snapshot: m.id, to: out, force: true });
      const got = readFileSync(out);
      assert.equal(sha(got), sha(readFileSync(disk)), 'the backup is the disk as it is');
      assertNoSecret(got, c.secret, 'the restore');
    }
    assert.equal(
      (await (await Repository.open(repo)).listSnapshots()).length,
      2,
      'nothing else was committed',
    );
    // The CLI says so too, and takes --format.
    const cli = await run(HAVEN_BIN, ['backup', c.qcow2Disk, '--repo', repo]).then(
      () => '',
      (e: { stderr: string }) => e.stderr,
    );
    assert.match(cli, /names the backing file .*host-secret\.txt.*give --format raw/i);
    await run(HAVEN_BIN, ['backup', c.qcow2Disk, '--repo', repo, '--format', 'raw']);

    // An operator who names the format trusts the header: a qcow2 overlay's backing file is its disk.
    const base = join(dir.path, 'base.raw');
    writeFileSync(base, randomBytes(2 * MiB));
    const overlay = join(dir.path, 'overlay.qcow2');
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', base, '-F', 'raw', overlay]);
    await assert.rejects(backupSource({ repo, source: overlay }), /names the backing file/);
    const m = await backupSource({ repo, source: overlay, format: 'qcow2' });
    const out = join(dir.path, 'overlay-restored.raw');
    await restoreSnapshot({ repo, snapshot: m.id, to: out });
    assert.equal(sha(readFileSync(out)), sha(readFileSync(base)));
  },
);

test(
  'the crafted disk as an import source, then as a volume read by the san and nbd transports',
  { timeout: 120_000 },
  async (t) => {
    const dir = tempDir();
    t.after(dir.cleanup);
    const c = craft(dir.path);
    const data = join(dir.path, 'data');
    await withStorage(data, (s) => void s.createPool('default', { path: join(dir.path, 'pool') }));
    await withStorage(data, async (s) => {
      await assert.rejects(
        importVolume(s, { image: c.qcow2Disk, name: 'g', pool: 'default' }),
        (e: HavenError) => e.code === 'INVALID_ARGUMENT' && e.message.includes(c.host),
      );
      assert.deepEqual(
        s.listVolumes().map((v) => v.name),
        [],
        'a refused import leaves no volume',
      );
      const r = await importVolume(s, { image: c.qcow2Disk, name: 'g', pool: 'default', format: 'raw' });
      assert.equal(r.volume.size, 4 * MiB, 'the size of the raw file, not of the header it holds');
    });
    const guest = readFileSync(c.qcow2Disk);
    const repo = join(dir.path, 'repo');
    await Repository.init(repo);
    const restoreOf = async (id: string) => {
      const out = join(dir.path, `${id}.raw`);
      await restoreSnapshot({ repo, snapshot: id, to: out });
      return readFileSync(out);
    };
    // san: the pool read directly.
    const san = await backupSource({ repo, source: 'volume:g', data });
    const a = await restoreOf(san.id);
    assert.equal(sha(a), sha(guest));
    assertNoSecret(a, c.secret, 'the san backup');
    // nbd: the volume over the storage service's NBD socket.
    const serving = await serveStorage({ dataDir: data, socket: join(dir.path, 'nbd.sock') });
    try {
      const nbd = await backupSource({ repo, source: serving.uriOf('g') });
      const b = await restoreOf(nbd.id);
      assert.equal(sha(b), sha(guest));
      assertNoSecret(b, c.secret, 'the nbd backup');
    } finally {
      await serving.stop();
    }
  },
);

test(
  'the crafted disk as the disk of a running QEMU VM, read through QMP',
  { timeout: 120_000 },
  async (t) => {
    const dir = tempDir();
    const c = craft(dir.path);
    const guest = readFileSync(c.qcow2Disk);
    // The VM's disk is a qcow2 (persistent bitmaps need one) whose guest content is the crafted disk.
    const disk = join(dir.path, 'vm-disk.qcow2');
    execFileSync('qemu-img', ['convert', '-q', '-f', 'raw', '-O', 'qcow2', c.qcow2Disk, disk]);
    const qmp = join(dir.path, 'qmp.sock');
    const qemu = spawn(
      'qemu-system-x86_64',
      [
        ...['-machine', 'none', '-nodefaults', '-display', 'none'],
        ...['-qmp', `unix:${qmp},server=on,wait=off`],
        ...[
          '-blockdev',
          JSON.stringify({
            driver: 'qcow2',
            'node-name': 'drive0',
            file: { driver: 'file', filename: disk },
          }),
        ],
      ],
      { stdio: 'ignore' },
    );
    const exited = new Promise((r) => qemu.once('exit', r));
    t.after(async () => {
      qemu.kill('SIGKILL');
      await exited;
      dir.cleanup();
    });
    for (const deadline = Date.now() + 30_000; !existsSync(qmp); await sleep(50))
      if (Date.now() > deadline || qemu.exitCode !== null)
        throw new Error('QEMU did not open its QMP socket');
    const repo = join(dir.path, 'repo');
    await Repository.init(repo);
    const m = await backupSource({ repo, source: `qemu:${qmp}#drive0` });
    const out = join(dir.path, 'restored.raw');
    await restoreSnapshot({ repo, snapshot: m.id, to: out });
    const got = readFileSync(out);
    assert.equal(sha(got), sha(guest));
    assertNoSecret(got, c.secret, 'the QMP backup');
  },
);

test(
  'a truncated qcow2 and a FIFO are refused as sources, naming the file and what is wrong',
  { timeout: 60_000 },
  async (t) => {
    const dir = tempDir();
    t.after(dir.cleanup);
    const good = join(dir.path, 'good.qcow2');
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', good, '8M']);
    execFileSync('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0xab 0 4M', good], { stdio: 'ignore' });
    const truncated = join(dir.path, 'truncated.qcow2');
    copyFileSync(good, truncated);
    truncateSync(truncated, 300 * 1024);
    const repo = join(dir.path, 'repo');
    await Repository.init(repo);
    const damaged = (e: HavenError) =>
      e.code === 'CORRUPT' &&
      e.message.includes(truncated) &&
      /qemu-img check found \d+ corruption/.test(e.message);
    await assert.rejects(backupSource({ repo, source: truncated }), damaged);
    await assert.rejects(backupSource({ repo, source: truncated, format: 'qcow2' }), damaged);
    assert.equal((await (await Repository.open(repo)).listSnapshots()).length, 0);
    const data = join(dir.path, 'data');
    await withStorage(data, (s) => void s.createPool('default', { path: join(dir.path, 'pool') }));
    await withStorage(data, async (s) => {
      await assert.rejects(importVolume(s, { image: truncated, name: 't', pool: 'default' }), damaged);
      assert.deepEqual(s.listVolumes(), [], 'a refused import leaves no volume');
    });
    // The good image still goes.
    const m = await backupSource({ repo, source: good });
    assert.equal(m.stats.readBytes, 4 * MiB);

    const fifo = join(dir.path, 'fifo');
    execFileSync('mkfifo', [fifo]);
    const isFifo = (e: HavenError) =>
      e.code === 'INVALID_ARGUMENT' && e.message.includes(`${fifo} is a FIFO`);
    await assert.rejects(backupSource({ repo, source: fifo }), isFifo);
    await assert.rejects(backupSource({ repo, source: fifo, format: 'raw' }), isFifo);
    await withStorage(data, (s) =>
      assert.rejects(importVolume(s, { image: fifo, name: 'f', pool: 'default', format: 'raw' }), isFifo),
    );
    await assert.rejects(nbdCopy(fifo, join(dir.path, 'out.raw')), isFifo);
  },
);
