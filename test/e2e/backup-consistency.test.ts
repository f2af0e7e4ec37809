// Application-consistent VM backups through the site daemon and the CLI, with the test guest's
// guest agent (guest/init): the guest keeps an ext4 file system mounted read-write (its journal
// in use, so a plain snapshot of it needs journal recovery). With the agent answering, the
// backup runs the hooks, freezes, snapshots and thaws in that order, and the restored file
// system is clean (a frozen ext4 has flushed its journal and cleared needs_recovery): the
// snapshot was taken while frozen. Without an answering agent (none, silent, one that freezes
// but never answers, or a failing pre-freeze hook) the backup still succeeds, crash-consistent
// with the reason, within a bounded time (and what was frozen is thawed) — or fails with
// --require-app-consistent. Old manifests read as crash-consistent.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { chmodSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { makeExt4Disk } from '../support/guest.js';
import { guestArgs, site, waitForConsole, type Site, wholeConsoleLog } from '../support/site.js';

const MiB = 1024 * 1024;

interface Snap {
  id: string;
  source: { name: string };
  consistency: string;
  consistencyReason?: string;
}
interface JobView {
  id: string;
  state: string;
  error?: string;
  log: { time: string; level: string; message: string }[];
}

/** A VM on an ext4 root that the guest keeps mounted read-write after writing a file. */
async function startVm(
  s: Site,
  name: string,
  opts: { agent?: string; noChannel?: boolean } = {},
): Promise<void> {
  const img = join(s.dir, '..', `${name}.img`);
  await makeExt4Disk(img, 32 * MiB, { 'etc/hello.txt': 'hello\n' });
  await s.haven('volume', 'import', img, '--name', `${name}-root`);
  const args = guestArgs('fs disk=vda seed=3 write=/a.txt:64K keep=1').map((a) =>
    opts.agent && a.startsWith('console=') ? `${a} haven.agent=${opts.agent}` : a,
  );
  await s.haven(
    'vm',
    'create',
    name,
    '--disk',
    `${name}-root`,
    ...args,
    ...(opts.noChannel ? ['--no-guest-agent'] : []),
  );
  await s.haven('vm', 'start', name);
  await waitForConsole(s, name, /"event":"done","cmd":"fs"/);
}

/** needs_recovery is set on a mounted ext4 until a freeze (or unmount) flushes its journal. */
async function needsRecovery(s: Site, repo: string, snapshot: string): Promise<boolean> {
  const out = join(s.dir, '..', `${snapshot}.img`);
  await s.haven('restore', snapshot, '--repo', repo, '--to', out);
  const features = execFileSync('dumpe2fs', ['-h', out], { stdio: ['ignore', 'pipe', 'ignore'] }).toString();
  return /^Filesystem features:.*\bneeds_recovery\b/m.test(features);
}

async function lastJob(s: Site): Promise<JobView> {
  const jobs = JSON.parse(await s.haven('job', 'list', '--kind', 'vm.backup', '--json')) as { id: string }[];
  return JSON.parse(await s.haven('job', 'show', jobs[jobs.length - 1]!.id, '--json')) as JobView;
}

/** A hook in the site's hooks directory; backups name it by its file name. */
function hookScript(s: Site, name: string, body: string): string {
  mkdirSync(join(s.dir, 'hooks'), { recursive: true });
  const path = join(s.dir, 'hooks', name);
  writeFileSync(path, `#!/bin/sh\n${body}\n`);
  chmodSync(path, 0o755);
  return name;
}

test('VM backup with an answering guest agent: hooks, freeze, snapshot, thaw; application-consistent', async (t) => {
  const s = await site(t);
  const work = join(s.dir, '..');
  const repo = join(work, 'repo');
  await s.haven('repo', 'init', '--repo', repo);
  await startVm(s, 'app1');
  const hooksLog = join(work, 'hooks.log');
  const hook = hookScript(
    s,
    'hook.sh',
    `echo "$HAVEN_HOOK_PHASE vm=$HAVEN_VM consistency=\${HAVEN_CONSISTENCY:-}" >>${hooksLog}; echo "hook $HAVEN_HOOK_PHASE ran"`,
  );

  const out = await s.haven(
    'backup',
    'vm:app1',
    '--repo',
    repo,
    '--pre-freeze-hook',
    hook,
    '--post-thaw-hook',
    hook,
  );
  assert.match(out, /^application-consistent$/m);
  const [snap] = JSON.parse(await s.haven('repo', 'list', '--repo', repo, '--json')) as Snap[];
  assert.equal(snap!.consistency, 'application');
  assert.equal(snap!.consistencyReason, undefined);
  assert.match(await s.haven('repo', 'list', '--repo', repo), /vm:app1\s+application\s/);

  // The hooks ran once each, in order, with the VM's name and (after) the outcome.
  assert.deepEqual(readFileSync(hooksLog, 'utf8').trim().split('\n'), [
    'pre-freeze vm=app1 consistency=',
    'post-thaw vm=app1 consistency=application',
  ]);
  // The job log: hook, freeze, snapshot, thaw, hook — the snapshot inside the freeze.
  const job = await lastJob(s);
  const at = (re: RegExp) => {
    const i = job.log.findIndex((l) => re.test(l.message));
    assert.ok(i >= 0, `the job log has ${re}:\n${job.log.map((l) => l.message).join('\n')}`);
    return i;
  };
  const order = [
    at(/^pre-freeze hook .* succeeded: hook pre-freeze ran/),
    at(/^guest agent froze 1 file system/),
    at(/^storage snapshot taken/),
    at(/^guest agent thawed 1 file system\(s\) \(frozen for \d+ ms\)/),
    at(/^post-thaw hook .* succeeded/),
  ];
  assert.deepEqual(
    order,
    [...order].sort((a, b) => a - b),
    'hooks, freeze, snapshot, thaw in order',
  );
  t.diagnostic(job.log[order[3]!]!.message);
  // The guest saw one freeze of /mnt, then its thaw.
  const events = (await wholeConsoleLog(s, 'app1'))
    .split('\n')
    .filter((l) => l.includes('"event":"fsfreeze"'))
    .map((l) => JSON.parse(l.slice(l.indexOf('{'))) as { state: string; mounts: string[] });
  assert.deepEqual(
    events.map((e) => [e.state, e.mounts]),
    [
      ['frozen', ['/mnt']],
      ['thawed', ['/mnt']],
    ],
  );
  // Taken while frozen: the restored file system's journal is clean although it was mounted.
  assert.equal(await needsRecovery(s, repo, snap!.id), false, 'a frozen ext4 needs no journal recovery');
  execFileSync('e2fsck', ['-fn', join(work, `${snap!.id}.img`)], { stdio: 'pipe' });
  await s.haven('vm', 'stop', 'app1', '--force');
});

test('VM backups without an answering agent are crash-consistent and say why; --require-app-consistent fails', async (t) => {
  const s = await site(t);
  const work = join(s.dir, '..');
  const repo = join(work, 'repo');
  await s.haven('repo', 'init', '--repo', repo);
  const hooksLog = join(work, 'hooks.log');
  const failing = hookScript(
    s,
    'fail.sh',
    `echo "pre $HAVEN_VM" >>${hooksLog}; echo "database busy" >&2; exit 3`,
  );
  const post = hookScript(s, 'post.sh', `echo "post $HAVEN_VM consistency=$HAVEN_CONSISTENCY" >>${hooksLog}`);

  // A silent agent (the channel is there, nobody answers): crash-consistent within the sync's bound.
  await startVm(s, 'silent', { agent: 'off' });
  // Hooks are file names in the site's hooks directory, checked before any job starts.
  assert.match(
    await s.havenFails('backup', 'vm:silent', '--repo', repo, '--pre-freeze-hook', '/bin/true'),
    /the pre-freeze hook is named by its file name in the site's hooks directory .*\/hooks, not "\/bin\/true"/,
  );
  assert.match(
    await s.havenFails('backup', 'vm:silent', '--repo', repo, '--post-thaw-hook', 'missing.sh'),
    /the post-thaw hook missing\.sh is not an executable file in .*\/hooks/,
  );
  await s.haven('volume', 'create', 'plain', '--size', '1M');
  assert.match(
    await s.havenFails('backup', 'volume:plain', '--repo', repo, '--require-app-consistent'),
    /apply to VM backups \(vm:NAME\): a volume has no guest to freeze/,
  );
  const t0 = Date.now();
  const out = await s.haven('backup', 'vm:silent', '--repo', repo);
  const seconds = (Date.now() - t0) / 1000;
  assert.match(out, /^crash-consistent: the guest agent did not answer guest-sync-delimited within 5 s$/m);
  assert.ok(seconds < 30, `the backup took ${seconds} s`);
  t.diagnostic(`backup with a silent agent took ${seconds.toFixed(1)} s`);
  const silentJob = await lastJob(s);
  assert.ok(
    silentJob.log.some(
      (l) =>
        l.level === 'warning' &&
        /backing up crash-consistent: the guest agent did not answer/.test(l.message),
    ),
  );
  // With --require-app-consistent the same backup fails, naming why, and adds no snapshot.
  const err = await s.havenFails('backup', 'vm:silent', '--repo', repo, '--require-app-consistent');
  assert.match(
    err,
    /VM silent: no application-consistent backup \(--require-app-consistent\): the guest agent did not answer/,
  );
  // A failing pre-freeze hook: no freeze, crash-consistent, the post-thaw hook still runs.
  await s.haven('vm', 'stop', 'silent', '--force');

  await startVm(s, 'hooked', { agent: 'mute-freeze' });
  const hooked = await s.haven(
    'backup',
    'vm:hooked',
    '--repo',
    repo,
    '--pre-freeze-hook',
    failing,
    '--post-thaw-hook',
    post,
  );
  assert.match(hooked, /^crash-consistent: the pre-freeze hook failed \(exit status 3: database busy\)$/m);
  assert.doesNotMatch(await wholeConsoleLog(s, 'hooked'), /"event":"fsfreeze"/);
  assert.deepEqual(readFileSync(hooksLog, 'utf8').trim().split('\n'), [
    'pre hooked',
    'post hooked consistency=crash',
  ]);
  // An agent that freezes but never answers: crash-consistent after the freeze's bound, and thawed.
  const mute = await s.haven('backup', 'vm:hooked', '--repo', repo);
  assert.match(mute, /^crash-consistent: the guest agent did not answer guest-fsfreeze-freeze within 10 s$/m);
  const states = (await waitForConsole(s, 'hooked', /"state":"thawed"/))
    .split('\n')
    .filter((l) => l.includes('"event":"fsfreeze"'))
    .map((l) => (JSON.parse(l.slice(l.indexOf('{'))) as { state: string }).state);
  assert.deepEqual(states, ['frozen', 'thawed'], 'the host thaws what it asked to freeze, answered or not');
  await s.haven('vm', 'stop', 'hooked', '--force');

  // A VM without the agent's channel.
  await startVm(s, 'bare', { noChannel: true });
  assert.match(
    await s.haven('backup', 'vm:bare', '--repo', repo),
    /^crash-consistent: VM bare has no guest agent channel \(defined with guestAgent false\)$/m,
  );
  await s.haven('vm', 'stop', 'bare', '--force');

  const snaps = JSON.parse(await s.haven('repo', 'list', '--repo', repo, '--json')) as Snap[];
  assert.deepEqual(
    snaps.map((x) => [x.source.name, x.consistency]),
    [
      ['silent', 'crash'],
      ['hooked', 'crash'],
      ['hooked', 'crash'],
      ['bare', 'crash'],
    ],
  );
  assert.match(snaps[0]!.consistencyReason!, /did not answer/);
  // Not frozen: the restored file system was mounted at the snapshot and needs journal recovery.
  assert.equal(await needsRecovery(s, repo, snaps[0]!.id), true);

  // A manifest written before Haven recorded consistency reads as crash-consistent.
  const manifest = join(repo, 'snapshots', snaps[3]!.id, 'manifest.json');
  const m = JSON.parse(readFileSync(manifest, 'utf8')) as Record<string, unknown>;
  delete m.consistency;
  delete m.consistencyReason;
  writeFileSync(manifest, JSON.stringify(m));
  const old = (JSON.parse(await s.haven('repo', 'list', '--repo', repo, '--json')) as Snap[])[3]!;
  assert.equal(old.consistency, 'crash');
  assert.match(old.consistencyReason!, /not recorded/);
  assert.equal(readdirSync(join(repo, 'snapshots')).length, 4);
});
