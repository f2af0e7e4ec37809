// Instant recovery asked onto an RBD pool (issue 18): the VM boots from its backup at once, its
// volume running on a file pool over the backup (the overlay needs the file pool's cluster map);
// finalize, while the guest streams writes, copies the rest of the backup in and then moves the
// volume live onto the RBD pool. Afterwards Ceph holds the volume (`rbd ls`), the repository can
// go, the guest goes on writing on Ceph, and `rbd export` of the image holds every write the guest
// made before the backup and every write it reported while recovered — the same bytes as Haven's
// own export of the volume.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { startCeph, type Ceph } from '../support/ceph.js';
import { assertWrites, guestArgs, site, waitForConsole, writesIn, wholeConsoleLog } from '../support/site.js';

const MiB = 1024 * 1024;
const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');
const cmdline = (cmd: string) => `console=ttyS0 quiet panic=-1 haven.disks=1 haven.cmd="${cmd}"`;

let ceph: Ceph;
before(async () => {
  ceph = await startCeph();
});
after(async () => {
  await ceph?.stop();
});

test('instant recovery onto an RBD pool: runs on a file pool over the backup, finalize moves it live into Ceph', async (t) => {
  const s = await site(t);
  const work = join(s.dir, '..');
  await s.haven(...ceph.poolCreateArgs('ir-'));
  await s.haven('volume', 'create', 'd', '--size', '64M');
  await s.haven(
    'vm',
    'create',
    'src',
    '--disk',
    'd',
    ...guestArgs('write-pattern disk=vda seed=4 count=40 len=64K; poweroff'),
  );
  await s.haven('vm', 'start', 'src');
  for (let i = 0; !/state:\s+stopped/.test(await s.haven('vm', 'show', 'src')); i++) {
    assert.ok(i < 300, 'the source VM powered off');
    await sleep(200); // the poll interval
  }
  const before = writesIn(await wholeConsoleLog(s, 'src'));
  assert.equal(before.length, 40);
  const repo = join(work, 'repo');
  await s.haven('repo', 'init', '--repo', repo);
  await s.haven('backup', 'vm:src', '--repo', repo);
  const [snap] = JSON.parse(await s.haven('repo', 'list', '--repo', repo, '--json')) as { id: string }[];

  await s.haven(
    'recover',
    'instant',
    snap!.id,
    '--repo',
    repo,
    '--name',
    'rec',
    '--pool',
    'ceph',
    '--cmdline',
    cmdline(
      'verify-pattern disk=vda seed=4 count=40 len=64K; stream disk=vda seed=8 len=4K start=8M rate=100 slots=2000',
    ),
  );
  const verified = await waitForConsole(s, 'rec', /"event":"done","cmd":"verify-pattern"[^\n]*/);
  assert.match(verified, /"cmd":"verify-pattern"[^\n]*"mismatches":0/, 'it reads its pre-backup data');
  await waitForConsole(s, 'rec', /"event":"write","seq":20,/);
  const list = JSON.parse(await s.haven('recover', 'list', '--json')) as {
    vm: string;
    state: string;
    disks: { volume: string; targetPool?: string }[];
  }[];
  assert.deepEqual(
    list.map((r) => [r.vm, r.state, r.disks.map((d) => [d.volume, d.targetPool])]),
    [['rec', 'running', [['rec-d', 'ceph']]]],
  );
  const poolOf = async () =>
    (JSON.parse(await s.haven('volume', 'show', 'rec-d', '--json')) as { pool: string }).pool;
  assert.equal(await poolOf(), 'default', 'while it runs from the backup, on a file pool');
  assert.doesNotMatch(await ceph.rbd('ls', ceph.pool), /ir-rec-d/);

  // Finalize while the guest streams: the rest of the backup copied in, then the live move.
  const fin = JSON.parse(await s.haven('recover', 'finalize', 'rec', '--json')) as {
    state: string;
    result: { moved?: { volume: string; pool: string }[] };
  };
  assert.equal(fin.state, 'succeeded');
  assert.deepEqual(fin.result.moved, [{ volume: 'rec-d', pool: 'ceph' }]);
  assert.equal(await poolOf(), 'ceph');
  assert.match(await ceph.rbd('ls', ceph.pool), /^ir-rec-d$/m, 'the volume is an RBD image');
  assert.deepEqual(JSON.parse(await s.haven('recover', 'list', '--json')), []);
  rmSync(repo, { recursive: true, force: true });
  // The guest goes on writing, now on Ceph.
  const n = writesIn(await wholeConsoleLog(s, 'rec')).length;
  await waitForConsole(s, 'rec', new RegExp(`"event":"write","seq":${n + 15},`));
  await s.haven('vm', 'stop', 'rec', '--grace', '1');
  const log = await wholeConsoleLog(s, 'rec');
  assert.doesNotMatch(log, /"event":"error"|I\/O error|blk_update_request|Buffer I\/O/);
  const streamed = writesIn(log).filter((w) => w.offset >= 8 * MiB);
  assert.ok(streamed.length > n, 'the guest wrote after the move');

  const inCeph = join(work, 'rec-d.rbd');
  await ceph.rbd('export', '--no-progress', `${ceph.pool}/ir-rec-d`, inCeph);
  const img = readFileSync(inCeph);
  assert.equal(img.length, 64 * MiB);
  assertWrites(img, 4, before);
  assertWrites(img, 8, streamed);
  const viaHaven = join(work, 'rec-d.img');
  await s.haven('volume', 'export', 'rec-d', viaHaven);
  assert.equal(sha(readFileSync(viaHaven)), sha(img), "Haven's export = rbd export");
});
