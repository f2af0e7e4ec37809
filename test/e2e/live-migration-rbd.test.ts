// Live storage migration of a running VM between a file pool and an RBD pool (decision 0022),
// through the site daemon and the CLI: the test guest streams writes to its disk while the disk
// moves to the RBD pool and back. Each move converges and completes, the guest sees no I/O error
// and goes on writing, every write it reported is on the volume, and Ceph holds the volume while
// it is on the RBD pool.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { startCeph, type Ceph } from '../support/ceph.js';
import { assertWrites, guestArgs, site, waitForConsole, writesIn, wholeConsoleLog } from '../support/site.js';

const MiB = 1024 * 1024;

let ceph: Ceph;
before(async () => {
  ceph = await startCeph();
});
after(async () => {
  await ceph?.stop();
});

test('a running VM moves from a file pool to an RBD pool and back while it writes', async (t) => {
  const s = await site(t);
  await s.haven(...ceph.poolCreateArgs('mig-'));
  const seed = join(s.dir, '..', 'seed.img');
  execFileSync('sh', ['-c', `head -c ${128 * MiB} /dev/urandom > ${seed}`]);
  await s.haven('volume', 'import', seed, '--name', 'data');
  const home = (JSON.parse(await s.haven('volume', 'show', 'data', '--json')) as { pool: string }).pool;
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

  for (const to of ['ceph', home]) {
    const out = JSON.parse(await s.haven('vm', 'move-storage', 'mig', '--pool', to, '--json')) as {
      state: string;
      result: {
        volumes: { volume: string; to: string; pauseMs: number; mirroredBytes: number; seconds: number }[];
      };
    };
    assert.equal(out.state, 'succeeded');
    const moved = out.result.volumes[0]!;
    assert.equal(moved.to, to);
    t.diagnostic(
      `to ${to}: ${moved.seconds.toFixed(2)} s, switch pause ${moved.pauseMs.toFixed(2)} ms, ${moved.mirroredBytes} bytes of guest writes mirrored`,
    );
    assert.ok(moved.mirroredBytes > 0, 'the guest wrote during the copy: its writes were mirrored');
    const n = writesIn(await wholeConsoleLog(s, 'mig')).length;
    // The guest goes on writing on the new pool.
    await waitForConsole(s, 'mig', new RegExp(`"event":"write","seq":${n + 15},`));
    if (to === 'ceph')
      assert.match(await ceph.rbd('ls', ceph.pool), /^mig-data$/m, 'the volume is an RBD image');
    else assert.doesNotMatch(await ceph.rbd('ls', ceph.pool), /mig-data/, 'the RBD image is gone');
  }
  await s.haven('vm', 'stop', 'mig', '--force');
  const log = await wholeConsoleLog(s, 'mig');
  assert.doesNotMatch(
    log,
    /"event":"error"|I\/O error|blk_update_request|Buffer I\/O/,
    'the guest saw no I/O error',
  );
  const image = join(s.dir, '..', 'data.img');
  await s.haven('volume', 'export', 'data', image);
  assertWrites(readFileSync(image), 5, writesIn(log));
});
