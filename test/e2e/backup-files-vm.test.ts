// File-level restore from a VM backup taken through the site daemon: the VM's second disk is
// ext4 the guest wrote files to, its first is blank. `--disk 1` lists and extracts the guest's
// files with the bytes it wrote; disk 0 is reported as holding no filesystem.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileBytes, makeExt4Disk } from '../support/guest.js';
import { guestArgs, site, waitForConsole } from '../support/site.js';

const MiB = 1024 * 1024;

test('the files of a VM backup: listed and extracted per disk', async (t) => {
  const s = await site(t);
  const work = join(s.dir, '..');
  const root = join(work, 'root.img');
  await makeExt4Disk(root, 48 * MiB, { 'etc/hostname': 'app1\n' });
  await s.haven('volume', 'create', 'scratch', '--size', '16M');
  await s.haven('volume', 'import', root, '--name', 'root');
  const written: [string, number][] = [
    ['/etc/app.conf', 777],
    ['/var/log/big.log', 250_000],
  ];
  await s.haven(
    'vm',
    'create',
    'app1',
    '--disk',
    'scratch',
    '--disk',
    'root',
    ...guestArgs(`fs disk=vdb seed=31 write=${written.map(([p, n]) => `${p}:${n}`).join(',')}`).map((a) =>
      a.replace('haven.disks=1', 'haven.disks=2'),
    ),
  );
  await s.haven('vm', 'start', 'app1');
  await waitForConsole(s, 'app1', /"event":"done","cmd":"fs"/);
  const repo = join(work, 'repo');
  await s.haven('repo', 'init', '--repo', repo);
  await s.haven('backup', 'vm:app1', '--repo', repo);
  await s.haven('vm', 'stop', 'app1', '--force');
  const [snap] = JSON.parse(await s.haven('repo', 'list', '--repo', repo, '--json')) as { id: string }[];

  const files = (...a: string[]) => s.haven('backup', 'files', snap!.id, '--repo', repo, ...a);
  const disk0 = JSON.parse(await files('--json')) as {
    diskName: string;
    filesystems: { type: string | null }[];
  };
  assert.deepEqual([disk0.diskName, disk0.filesystems[0]!.type], ['scratch', null]);
  assert.match(await s.havenFails('backup', 'files', snap!.id, '--repo', repo, '/'), /unformatted/);
  const etc = JSON.parse(await files('--disk', '1', '/etc', '--json')) as {
    entries: { name: string; size: number }[];
  };
  assert.deepEqual(
    etc.entries.map((e) => [e.name, e.size]),
    [
      ['app.conf', 777],
      ['hostname', 5],
    ],
  );
  const to = join(work, 'restored');
  await files('--disk', '1', '--extract', '/', '--to', to);
  for (const [p, n] of written) assert.ok(readFileSync(join(to, p)).equals(fileBytes(31, p, n)), p);
  assert.equal(readFileSync(join(to, 'etc/hostname'), 'utf8'), 'app1\n');
});
