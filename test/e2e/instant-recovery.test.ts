// Instant recovery through the site daemon and the CLI, with the real test guest: a VM backup
// boots within seconds straight from the repository, reads its pre-backup data, writes; the
// repository is byte-for-byte unchanged; a backup of the recovered VM restores; after kill -9 of the
// daemon the VM goes on (a recovery whose backup is gone is broken, its disk not served); finalize while
// the guest streams writes leaves a VM on production storage only (the repository deleted, it
// goes on); discard leaves nothing behind.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { cpSync, readFileSync, renameSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  assertWrites,
  guestArgs,
  site,
  startDaemon,
  waitForConsole,
  writesIn,
  wholeConsoleLog,
} from '../support/site.js';
import { treeHash } from '../support/tmp.js';

const cmdline = (cmd: string) => `console=ttyS0 quiet panic=-1 haven.disks=1 haven.cmd="${cmd}"`;

test('instant recovery: boots from the backup in seconds, finalize while writing, discard', async (t) => {
  const s = await site(t);
  const work = join(s.dir, '..');
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
    await sleep(200);
  }
  const before = writesIn(await wholeConsoleLog(s, 'src'));
  assert.equal(before.length, 40);
  const repo = join(work, 'repo');
  await s.haven('repo', 'init', '--repo', repo);
  await s.haven('backup', 'vm:src', '--repo', repo);
  const [snap] = JSON.parse(await s.haven('repo', 'list', '--repo', repo, '--json')) as { id: string }[];
  // The backup itself: its chunks and snapshots (sessions/ records that a recovery reads it).
  const backupHash = () => treeHash(join(repo, 'chunks')) + treeHash(join(repo, 'snapshots'));
  const repoHash = backupHash();

  // Discard first: a recovery that is dropped leaves nothing.
  await s.haven('recover', 'instant', snap!.id, '--repo', repo, '--name', 'rec2');
  await s.haven('recover', 'discard', 'rec2');
  assert.ok(!(await s.haven('vm', 'list')).includes('rec2'));
  assert.ok(!(await s.haven('volume', 'list')).includes('rec2'));

  const t0 = performance.now();
  const { result: out } = JSON.parse(
    await s.haven(
      'recover',
      'instant',
      snap!.id,
      '--repo',
      repo,
      '--name',
      'rec',
      '--json',
      '--cmdline',
      cmdline(
        'verify-pattern disk=vda seed=4 count=40 len=64K; stream disk=vda seed=8 len=4K start=8M rate=0 slots=2000',
      ),
    ),
  ) as { result: { seconds: number } };
  await waitForConsole(s, 'rec', /"event":"ready"/);
  const firstLine = (performance.now() - t0) / 1000;
  t.diagnostic(
    `recover instant answered in ${out.seconds.toFixed(2)} s; first guest line after ${firstLine.toFixed(1)} s`,
  );
  assert.ok(firstLine < 30, `the guest was up ${firstLine.toFixed(1)} s after the command`);
  const verified = await waitForConsole(s, 'rec', /"event":"done","cmd":"verify-pattern"[^\n]*/);
  assert.match(
    verified,
    /"event":"done","cmd":"verify-pattern"[^\n]*"mismatches":0/,
    'it reads its pre-backup data',
  );
  await waitForConsole(s, 'rec', /"event":"write","seq":20,/);

  const list = JSON.parse(await s.haven('recover', 'list', '--json')) as {
    vm: string;
    state: string;
    disks: { filledBytes: number }[];
  }[];
  assert.deepEqual(
    list.map((r) => [r.vm, r.state]),
    [['rec', 'running']],
  );
  assert.ok(list[0]!.disks[0]!.filledBytes > 0, 'writes copied their clusters from the backup');

  // A backup of the recovered VM, while it runs from its backup, restores.
  const repo2 = join(work, 'repo2');
  await s.haven('repo', 'init', '--repo', repo2);
  const streamed = writesIn(await wholeConsoleLog(s, 'rec')).filter((w) => w.offset >= 8 * 1024 * 1024);
  await s.haven('backup', 'vm:rec', '--repo', repo2);
  const [snap2] = JSON.parse(await s.haven('repo', 'list', '--repo', repo2, '--json')) as { id: string }[];
  const restored = join(work, 'rec-backup.img');
  await s.haven('restore', snap2!.id, '--repo', repo2, '--to', restored);
  const img = readFileSync(restored);
  assertWrites(img, 4, before);
  assertWrites(img, 8, streamed);
  assert.equal(backupHash(), repoHash, 'the backup the VM runs from is byte-for-byte unchanged');

  // kill -9 of the daemon while VMs run from backups: the next daemon attaches the backups again
  // before it serves their disks, and the guest goes on. A recovery whose backup is out of reach
  // then is marked broken and its disk is not served: no zeroes in place of the backup's data.
  const elsewhere = join(work, 'repo-copy');
  cpSync(repo, elsewhere, { recursive: true });
  await s.haven('recover', 'instant', snap!.id, '--repo', elsewhere, '--name', 'lost');
  s.daemon.child.kill('SIGKILL');
  await s.daemon.exited;
  renameSync(elsewhere, `${elsewhere}.gone`);
  s.daemon = await startDaemon(s.dir);
  const states = JSON.parse(await s.haven('recover', 'list', '--json')) as { vm: string; state: string }[];
  assert.deepEqual(states.map((r) => [r.vm, r.state]).sort(), [
    ['lost', 'broken'],
    ['rec', 'running'],
  ]);
  await assert.rejects(
    s.haven('volume', 'export', 'lost-d', join(work, 'lost.img')),
    /lost-d runs over backup .*, which is not attached/,
  );
  const m = writesIn(await wholeConsoleLog(s, 'rec')).length;
  await waitForConsole(s, 'rec', new RegExp(`"event":"write","seq":${m + 10},`));
  await s.haven('recover', 'discard', 'lost');
  assert.ok(!(await s.haven('volume', 'list')).includes('lost'));

  // Finalize while the guest streams writes; then the repository can go.
  const fin = await s.haven('recover', 'finalize', 'rec');
  assert.match(fin, /runs from production storage/);
  assert.deepEqual(JSON.parse(await s.haven('recover', 'list', '--json')), []);
  rmSync(repo, { recursive: true, force: true });
  const n = writesIn(await wholeConsoleLog(s, 'rec')).length;
  await waitForConsole(s, 'rec', new RegExp(`"event":"write","seq":${n + 15},`));
  await s.haven('vm', 'stop', 'rec', '--force');
  const log = await wholeConsoleLog(s, 'rec');
  assert.doesNotMatch(log, /"event":"error"|I\/O error|blk_update_request/);
  const final = join(work, 'rec-final.img');
  await s.haven('volume', 'export', 'rec-d', final);
  const finalImg = readFileSync(final);
  assertWrites(finalImg, 4, before);
  assertWrites(
    finalImg,
    8,
    writesIn(log).filter((w) => w.offset >= 8 * 1024 * 1024),
  );
});
