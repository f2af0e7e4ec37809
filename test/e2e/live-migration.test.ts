// Live storage migration of a running VM through the site daemon and the CLI: the test guest
// streams writes as fast as it can to its disk while the disk moves to another pool. The move
// converges and completes, the guest sees no I/O error and goes on writing after the switch,
// every write it reported is on the moved volume, and the source is gone. Cancel and kill -9 of
// the daemon mid-way leave the source intact and no orphan copy.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { startDaemon, wholeConsoleLog } from '../support/site.js';
import { assertWrites, guestArgs, site, waitForConsole, writesIn } from '../support/site.js';

const MiB = 1024 * 1024;

interface VolumeInfo {
  name: string;
  pool: string;
}

test('a running VM moves to another pool while it writes as fast as it can', async (t) => {
  const s = await site(t);
  await s.haven('pool', 'create', 'fast');
  // Data before the move, so that the copy takes a while and the guest's writes meet it.
  const seed = join(s.dir, '..', 'seed.img');
  execFileSync('sh', ['-c', `head -c ${256 * MiB} /dev/urandom > ${seed}`]);
  await s.haven('volume', 'import', seed, '--name', 'data');
  await s.haven(
    'vm',
    'create',
    'mig',
    '--disk',
    'data',
    ...guestArgs('stream disk=vda seed=5 len=4K rate=0 slots=8000 lat=1'),
  );
  await s.haven('vm', 'start', 'mig');
  await waitForConsole(s, 'mig', /"event":"write","seq":10,/);
  const beforeMove = writesIn(await wholeConsoleLog(s, 'mig')).length;

  const out = JSON.parse(await s.haven('vm', 'move-storage', 'mig', '--pool', 'fast', '--json')) as {
    state: string;
    result: { volumes: { volume: string; to: string; pauseMs: number; mirroredBytes: number }[] };
  };
  assert.equal(out.state, 'succeeded');
  const moved = out.result.volumes[0]!;
  assert.equal(moved.to, 'fast');
  t.diagnostic(
    `switch pause ${moved.pauseMs.toFixed(2)} ms; ${moved.mirroredBytes} bytes of guest writes mirrored`,
  );
  assert.ok(moved.mirroredBytes > 0, 'the guest wrote during the copy: its writes were mirrored');
  const moveLog = writesIn(await wholeConsoleLog(s, 'mig'));
  const afterMove = moveLog.length;
  // The guest's own measure of each write (dd with its fsync): the largest while the disk moved
  // includes the switchover; beside it the largest before the move.
  const ms = (from: number, to: number) =>
    moveLog.slice(from, to).map((w) => {
      assert.ok(w.us !== undefined, `write ${w.seq} reports its latency`);
      return w.us / 1000;
    });
  const before = ms(0, beforeMove);
  const during = ms(beforeMove, afterMove);
  assert.ok(during.length > 0, 'the guest wrote while its disk moved');
  const sorted = [...during].sort((a, b) => a - b);
  t.diagnostic(
    `guest write latency while the disk moved (${during.length} writes): max ${sorted.at(-1)!.toFixed(1)} ms, ` +
      `median ${sorted[sorted.length >> 1]!.toFixed(1)} ms; before the move: max ${Math.max(...before).toFixed(1)} ms`,
  );
  // The guest goes on writing on the new pool.
  await waitForConsole(s, 'mig', new RegExp(`"event":"write","seq":${afterMove + 15},`));
  const vols = JSON.parse(await s.haven('volume', 'list', '--json')) as VolumeInfo[];
  assert.deepEqual(
    vols.map((v) => [v.name, v.pool]),
    [['data', 'fast']],
    'the volume is on the new pool and the source is gone',
  );
  await s.haven('vm', 'stop', 'mig', '--force');
  const log = await wholeConsoleLog(s, 'mig');
  assert.doesNotMatch(
    log,
    /"event":"error"|I\/O error|blk_update_request|Buffer I\/O/,
    'the guest saw no I/O error',
  );
  const writes = writesIn(log);
  assert.ok(writes.length > afterMove + 15);
  const image = join(s.dir, '..', 'data.img');
  await s.haven('volume', 'export', 'data', image);
  assertWrites(readFileSync(image), 5, writes);
});

test('cancel and kill -9 mid-move leave the source intact and no orphan copy', async (t) => {
  const s = await site(t);
  await s.haven('pool', 'create', 'fast');
  const img = join(s.dir, '..', 'big.img');
  execFileSync('sh', ['-c', `head -c ${384 * MiB} /dev/urandom > ${img}`]);
  await s.haven('volume', 'import', img, '--name', 'big');
  const sha = (path: string) => execFileSync('sha256sum', [path]).toString().split(' ')[0];
  const original = sha(img);

  const job = JSON.parse(await s.haven('volume', 'move', 'big', '--pool', 'fast', '--no-wait', '--json')) as {
    id: string;
  };
  await s.haven('job', 'cancel', job.id);
  const ended = JSON.parse(await s.haven('job', 'show', job.id, '--json')) as { state: string };
  assert.equal(ended.state, 'cancelled');
  const check = async () => {
    const vols = JSON.parse(await s.haven('volume', 'list', '--json')) as VolumeInfo[];
    assert.deepEqual(
      vols.map((v) => [v.name, v.pool]),
      [['big', 'default']],
    );
    const out = join(s.dir, '..', `check-${Date.now()}.img`);
    await s.haven('volume', 'export', 'big', out);
    assert.equal(sha(out), original, 'the source is intact');
  };
  await check();

  // kill -9 of the daemon while it copies: the next daemon fails the job and removes the copy.
  const job2 = JSON.parse(
    await s.haven('volume', 'move', 'big', '--pool', 'fast', '--no-wait', '--json'),
  ) as {
    id: string;
  };
  await sleep(150);
  s.daemon.child.kill('SIGKILL');
  await s.daemon.exited;
  s.daemon = await startDaemon(s.dir);
  const after = JSON.parse(await s.haven('job', 'show', job2.id, '--json')) as { state: string };
  t.diagnostic(`the move killed mid-way ended ${after.state}`);
  assert.ok(['failed', 'succeeded'].includes(after.state), after.state);
  if (after.state === 'failed') await check();
  else {
    // It finished before the kill: then it is whole on the new pool.
    const out = join(s.dir, '..', 'moved.img');
    await s.haven('volume', 'export', 'big', out);
    assert.equal(sha(out), original);
  }
  const vols = JSON.parse(await s.haven('volume', 'list', '--json')) as VolumeInfo[];
  assert.equal(vols.filter((v) => v.name.endsWith('.moving')).length, 0, 'no orphan copy');
});
