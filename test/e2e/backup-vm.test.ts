// Backup of a running VM through the site daemon and the CLI: the test guest has an ext4 disk it
// wrote files to and a data disk it streams writes to while the backup runs. Both disks are
// captured at one crash-consistent point: the restored ext4 passes a forced fsck and holds the
// files, and the data disk holds every write the guest saw complete before the backup began.
// A second backup is incremental and reads only what changed; a restore into a new volume of the
// site gives the same bytes.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileBytes, makeExt4Disk } from '../support/guest.js';
import { assertWrites, guestArgs, site, waitForConsole, writesIn, wholeConsoleLog } from '../support/site.js';

const MiB = 1024 * 1024;

test('backup of a running VM while it streams writes: consistent, complete, incremental', async (t) => {
  const s = await site(t);
  const work = join(s.dir, '..');
  const root = join(work, 'root.img');
  await makeExt4Disk(root, 64 * MiB, { 'etc/hello.txt': 'hello from the backup test\n' });
  await s.haven('volume', 'import', root, '--name', 'root');
  await s.haven('volume', 'create', 'data', '--size', '64M');
  await s.haven(
    'vm',
    'create',
    'app1',
    '--disk',
    'root',
    '--disk',
    'data',
    ...guestArgs(
      'fs disk=vda seed=3 write=/a.txt:100K,/dir/b.txt:300K; stream disk=vdb seed=9 len=4K rate=40 slots=2000',
    ).map((a) => a.replace('haven.disks=1', 'haven.disks=2')),
  );
  await s.haven('vm', 'start', 'app1');
  await waitForConsole(s, 'app1', /"event":"write","seq":30,/);
  const repo = join(work, 'repo');
  await s.haven('repo', 'init', '--repo', repo);

  // Every write reported before the backup starts must be in it.
  const before = writesIn(await wholeConsoleLog(s, 'app1'));
  const first = await s.haven('backup', 'vm:app1', '--repo', repo);
  assert.match(first, /^snapshot \S+ of vm:app1 over san: read/m);
  const during = writesIn(await wholeConsoleLog(s, 'app1'));
  assert.ok(during.length > before.length, 'the guest went on writing during the backup');
  await waitForConsole(s, 'app1', new RegExp(`"event":"write","seq":${during.length + 40},`));
  const second = await s.haven('backup', 'vm:app1', '--repo', repo);
  assert.match(second, /incremental from/);
  await s.haven('vm', 'stop', 'app1', '--force');

  const snaps = JSON.parse(await s.haven('repo', 'list', '--repo', repo, '--json')) as {
    id: string;
    parent?: string;
    source: { kind: string; name: string };
    disks: { name: string; size: number }[];
    stats: { readBytes: number };
    vm: { name: string; disks: { volume: string }[] };
  }[];
  assert.equal(snaps.length, 2);
  const [full, inc] = snaps as [(typeof snaps)[0], (typeof snaps)[0]];
  assert.deepEqual(full.source, { kind: 'vm', name: 'app1' });
  assert.deepEqual(
    full.disks.map((d) => d.name),
    ['root', 'data'],
  );
  assert.equal(full.vm.name, 'app1', 'the VM configuration is in the backup');
  assert.equal(inc.parent, full.id);
  assert.ok(inc.stats.readBytes < 4 * MiB, `the incremental read ${inc.stats.readBytes} bytes`);

  // The root disk: a clean file system with the files the guest wrote.
  const rootOut = join(work, 'root-restored.img');
  await s.haven('restore', full.id, '--repo', repo, '--to', rootOut, '--disk', '0');
  execFileSync('e2fsck', ['-fn', rootOut], { stdio: 'pipe' });
  const cat = (path: string) =>
    execFileSync('debugfs', ['-R', `cat ${path}`, rootOut], { stdio: ['ignore', 'pipe', 'ignore'] });
  assert.ok(cat('/a.txt').equals(fileBytes(3, '/a.txt', 100 * 1024)));
  assert.ok(cat('/dir/b.txt').equals(fileBytes(3, '/dir/b.txt', 300 * 1024)));
  assert.equal(cat('/etc/hello.txt').toString(), 'hello from the backup test\n');

  // The data disk: every write completed before the backup, at both points in time.
  const dataOut = join(work, 'data-restored.img');
  await s.haven('restore', full.id, '--repo', repo, '--to', dataOut, '--disk', '1');
  const latestBySlot = (writes: ReturnType<typeof writesIn>) => {
    const m = new Map<number, (typeof writes)[0]>();
    for (const w of writes) m.set(w.offset, w);
    return [...m.values()];
  };
  assertWrites(readFileSync(dataOut), 9, latestBySlot(before));
  const incOut = join(work, 'data-inc.img');
  await s.haven('restore', inc.id, '--repo', repo, '--to', incOut, '--disk', '1');
  assertWrites(readFileSync(incOut), 9, latestBySlot(during));

  // Restore through the daemon into a new volume of the site, and compare.
  await s.haven('restore', inc.id, '--repo', repo, '--to', 'volume:data-copy', '--disk', '1');
  const copyOut = join(work, 'data-copy.img');
  await s.haven('volume', 'export', 'data-copy', copyOut);
  assert.ok(readFileSync(copyOut).equals(readFileSync(incOut)));
  const jobs = JSON.parse(await s.haven('job', 'list', '--kind', 'vm.backup', '--json')) as {
    state: string;
  }[];
  assert.deepEqual(
    jobs.map((j) => j.state),
    ['succeeded', 'succeeded'],
  );
});
