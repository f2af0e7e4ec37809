// Acceptance of issue 16 (policies): a running VM whose policy requires `replication`, on a pool
// that lacks it, is not compliant with that reason; `haven policy remediate` moves its disk live to
// a pool that advertises it, after which the VM complies — and the guest never stopped: the same
// QEMU process runs throughout, and the writes it streams go on after the move. Bad policies are
// refused with clear errors and change nothing.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { guestArgs, site, waitForConsole, writesIn, wholeConsoleLog } from '../support/site.js';

interface Compliance {
  object: string;
  compliant: boolean;
  reasons: { code: string; message: string }[];
}

test('a VM placed against its policy complies after remediate, and its guest never stops', async (t) => {
  const s = await site(t);
  await s.haven('pool', 'create', 'replicated', '--capability', 'replication', '--capability', 'tier=gold');
  const pool = JSON.parse(await s.haven('pool', 'show', 'replicated', '--json')) as {
    advertised: Record<string, unknown>;
  };
  assert.equal(pool.advertised.replication, true);

  // Bad input: clear errors, nothing stored.
  const bad = [
    [['--require', 'dedup'], /unknown capability "dedup": known capabilities are .*replication.*tier/],
    [
      ['--backup-cron', '99 * * * *', '--repo', s.dir + '/../repo'],
      /backup cron expression "99 \* \* \* \*" is not valid/,
    ],
    [
      ['--backup-cron', '0 * * * *', '--repo', s.dir + '/../repo', '--keep-daily', '0'],
      /the backup retention keeps nothing/,
    ],
  ] as const;
  for (const [args, re] of bad) assert.match(await s.havenFails('policy', 'create', 'bad', ...args), re);
  assert.deepEqual(JSON.parse(await s.haven('policy', 'list', '--json')), []);

  await s.haven('policy', 'create', 'needs-replication', '--require', 'replication');
  await s.haven('volume', 'create', 'data', '--size', '64M'); // on "default": no replication
  assert.match(
    await s.havenFails(
      'volume',
      'create',
      'more',
      '--size',
      '8M',
      '--pool',
      'default',
      '--policy',
      'needs-replication',
    ),
    /pool default does not satisfy policy needs-replication: it lacks replication/,
  );
  await s.haven(
    'vm',
    'create',
    'pv',
    '--disk',
    'data',
    ...guestArgs('stream disk=vda seed=7 len=4K rate=50 slots=4000'),
  );
  await s.haven('vm', 'start', 'pv');
  await waitForConsole(s, 'pv', /"event":"write","seq":10,/);
  await s.haven('policy', 'assign', 'needs-replication', '--vm', 'pv');
  const pid = (JSON.parse(await s.haven('vm', 'show', 'pv', '--json')) as { pid: number }).pid;

  const [before] = JSON.parse(await s.haven('policy', 'compliance', '--vm', 'pv', '--json')) as Compliance[];
  assert.equal(before!.compliant, false);
  assert.deepEqual(
    before!.reasons.map((r) => r.message),
    ['pool default of volume data lacks capability replication'],
  );

  const job = JSON.parse(await s.haven('policy', 'remediate', 'pv', '--json')) as {
    state: string;
    result: { fixed: string[]; unfixed: unknown[]; compliant: boolean };
  };
  assert.equal(job.state, 'succeeded');
  assert.equal(job.result.compliant, true);
  assert.match(job.result.fixed[0]!, /moved to pool replicated/);
  const wroteByThen = writesIn(await wholeConsoleLog(s, 'pv')).length;

  const [after] = JSON.parse(await s.haven('policy', 'compliance', '--vm', 'pv', '--json')) as Compliance[];
  assert.deepEqual([after!.compliant, after!.reasons], [true, []]);
  assert.equal(
    (JSON.parse(await s.haven('volume', 'show', 'data', '--json')) as { pool: string }).pool,
    'replicated',
  );
  // The guest never stopped: the same QEMU process, still running, still writing.
  const vm = JSON.parse(await s.haven('vm', 'show', 'pv', '--json')) as { pid: number; state: string };
  assert.deepEqual([vm.state, vm.pid], ['running', pid]);
  const log = await waitForConsole(s, 'pv', new RegExp(`"event":"write","seq":${wroteByThen + 20},`));
  assert.ok(
    !/error/i.test(
      log
        .split('\n')
        .filter((l) => l.includes('"event"') && !l.includes('"write"'))
        .join('\n'),
    ),
    'the guest reported no I/O error',
  );
  const events = JSON.parse(await s.haven('event', 'list', '--action', 'policy.compliance', '--json')) as {
    outcome: string;
  }[];
  assert.deepEqual(
    events.map((e) => e.outcome),
    ['ok', 'warning'],
    'newest first: not compliant, then compliant',
  );
  // Assigned: the policy cannot be deleted.
  assert.match(await s.havenFails('policy', 'delete', 'needs-replication'), /assigned to vm pv/);
});
