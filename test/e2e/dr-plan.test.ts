// A DR plan through a real daemon: a script step, a script that fails until the test makes it
// pass, an operator wait and a last script. The run stops at the failing step with the script's
// output in the job log; a retry goes on from that step (the first script does not run again);
// the operator wait blocks until `haven job resume`; every step is an event. Bad steps are
// refused with nothing stored.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { chmodSync, existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { site } from '../support/site.js';
import { eventually } from '../support/sites.js';

interface JobView {
  id: string;
  state: string;
  phase?: string;
  error?: string;
  progress?: { phase?: string };
}
interface RunView {
  id: string;
  state: string;
  nextStep: number;
  job?: string;
}

test('a plan: a failing script stops it with its output logged, a retry goes on from there, an operator wait blocks until resumed', async (t) => {
  const s = await site(t);
  const work = join(s.dir, '..');
  const script = (name: string, body: string) => {
    const path = join(work, name);
    writeFileSync(path, `#!/bin/sh\n${body}\n`);
    chmodSync(path, 0o755);
    return path;
  };
  const first = script('first.sh', `echo "step $HAVEN_PLAN_STEP of $HAVEN_PLAN" >> ${work}/first.out`);
  const flaky = script(
    'flaky.sh',
    `[ -e ${work}/ready ] || { echo "database not ready yet"; exit 3; }; echo ready`,
  );
  const last = script('last.sh', `touch ${work}/done`);
  const steps = [
    { kind: 'script', path: first },
    { kind: 'script', path: flaky, timeoutSeconds: 30 },
    { kind: 'wait', message: 'check the application answers' },
    { kind: 'script', path: last },
  ];

  // Bad steps: refused, naming the step; nothing stored.
  const bad = (st: unknown[]) => s.havenFails('plan', 'create', 'p', '--steps', JSON.stringify(st));
  assert.match(await bad([{ kind: 'reboot-the-world' }]), /step 1: unknown kind reboot-the-world/);
  assert.match(
    await bad([{ kind: 'script', path: join(work, 'nosuch.sh') }]),
    /step 1: script .*nosuch.sh is not an executable file/,
  );
  assert.match(await bad([steps[0], { kind: 'delay' }]), /step 2: delay needs seconds/);
  assert.match(
    await bad([{ kind: 'heartbeat', target: 'vm', heartbeat: 'ping' }]),
    /heartbeat "ping" is not agent/,
  );
  assert.equal(await s.haven('plan', 'list', '--json'), '[]\n');

  await s.haven('plan', 'create', 'p', '--steps', JSON.stringify(steps));
  const failed = await s.havenFails('plan', 'run', 'p');
  assert.match(
    failed,
    /step 2 of 4 \(script .*flaky.sh\) failed: script .*flaky.sh exited 3: database not ready yet/,
  );
  const [run] = JSON.parse(await s.haven('plan', 'runs', 'p', '--json')) as RunView[];
  assert.equal(run!.state, 'failed');
  assert.equal(run!.nextStep, 1);
  const { log } = JSON.parse(await s.haven('job', 'show', run!.job!, '--json')) as {
    log: { level: string; message: string }[];
  };
  assert.ok(
    log.some((l) => l.level === 'error' && /flaky.sh: database not ready yet$/.test(l.message)),
    "the script's output is in the job log",
  );
  assert.equal(readFileSync(join(work, 'first.out'), 'utf8'), 'step 1 of p\n');

  // Fixed; retried from step 2: it reaches the operator wait and blocks there.
  writeFileSync(join(work, 'ready'), '');
  const job = JSON.parse(await s.haven('plan', 'retry', run!.id, '--no-wait', '--json')) as JobView;
  await eventually(
    'the run waiting for an operator',
    async () => (JSON.parse(await s.haven('plan', 'runs', 'p', '--json')) as RunView[])[0]!,
    (r) => r.state === 'waiting',
  );
  assert.equal((JSON.parse(await s.haven('job', 'show', job.id, '--json')) as JobView).state, 'running');
  assert.ok(!existsSync(join(work, 'done')), 'the step after the wait has not run');
  await s.haven('job', 'resume', job.id);
  const end = await eventually(
    'the run done',
    async () => JSON.parse(await s.haven('job', 'show', job.id, '--json')) as JobView,
    (j) => j.state !== 'running',
  );
  assert.equal(end.state, 'succeeded', end.error);
  assert.ok(existsSync(join(work, 'done')));
  assert.equal(readFileSync(join(work, 'first.out'), 'utf8'), 'step 1 of p\n', 'step 1 ran once');
  const runs = JSON.parse(await s.haven('plan', 'runs', 'p', '--json')) as RunView[];
  assert.deepEqual(
    runs.map((r) => [r.id, r.state, r.nextStep]),
    [[run!.id, 'succeeded', 4]],
  );
  // Every step is an event: 1 ok, 2 failed then ok, 3 ok, 4 ok.
  const events = JSON.parse(await s.haven('event', 'list', '--action', 'plan.step', '--json')) as {
    outcome: string;
  }[];
  assert.deepEqual(events.map((e) => e.outcome).reverse(), ['ok', 'failed', 'ok', 'ok', 'ok']);
  assert.match(await s.havenFails('job', 'resume', job.id), /is succeeded/);
});
