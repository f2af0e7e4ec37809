// Recoverability checks through the site daemon and the CLI, with the real test guest: a good VM
// backup boots on an isolated network made for the check, its console shows it read its data
// back, and a pass is recorded with the console log; a backup whose data chunk was damaged in the
// repository records a fail with the reason (the repository refused the read); a check the daemon
// was killed in the middle of is torn down at the next start. After each, no VM, volume, NBD
// export or network of the check is left, and the backup is released. `recover instant --network
// none --no-start` defines a VM without NICs, its disks served, not started.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { Repository, type SnapshotManifest } from '../../src/repository/index.js';
import { guestArgs, site, startDaemon, type Site } from '../support/site.js';

const run = promisify(execFile);
const VERIFY = 'verify-pattern disk=vda seed=4 count=8 len=64K';
/** The guest read back all it wrote before the backup. */
const READ_BACK = String.raw`console:"cmd":"verify-pattern".*"mismatches":0`;

interface Check {
  id: string;
  vm: string;
  snapshot: string;
  checkVm: string;
  state: string;
  reason?: string;
  consoleLog?: string;
  durationSeconds?: number;
}

async function exportsOf(s: Site): Promise<string[]> {
  const { stdout } = await run('nbdinfo', [
    '--list',
    '--json',
    `nbd+unix:///?socket=${join(s.dir, 'run', 'nbd.sock')}`,
  ]);
  return (JSON.parse(stdout) as { exports: { 'export-name': string }[] }).exports.map(
    (e) => e['export-name'],
  );
}

/** Nothing of a check is left: VMs, volumes, exports, networks, recoveries, readers of the backup. */
async function assertTornDown(s: Site, repo: string): Promise<void> {
  const names = async (...args: string[]) =>
    (JSON.parse(await s.haven(...args, '--json')) as { name?: string; vm?: string }[]).map(
      (x) => x.name ?? x.vm,
    );
  assert.deepEqual(await names('vm', 'list'), ['app']);
  // (d's own snapshot is the backup's checkpoint.)
  assert.deepEqual(
    (await names('volume', 'list')).filter((n) => !n?.startsWith('d@')),
    ['d'],
  );
  assert.deepEqual(await names('network', 'list'), ['nat']);
  assert.deepEqual(await names('recover', 'list'), []);
  assert.deepEqual(
    (await exportsOf(s)).filter((n) => !n.startsWith('d@')),
    ['d'],
  );
  // The backup's reader session ended (a forget or gc would not wait for it); those of a killed
  // daemon count as ended.
  const r = await Repository.open(repo);
  const deadline = Date.now() + 10_000;
  while ((await r.liveSessions()).length > 0) {
    assert.ok(Date.now() < deadline, 'the backup was released');
    await sleep(100);
  }
}

/** The first data chunk of a snapshot's disk 0 (a local repository). */
async function firstChunkFile(repo: string, m: SnapshotManifest): Promise<string> {
  const r = await Repository.open(repo);
  const first = (await (await r.openIndex(m, 0)).chunks())[0]!;
  const hex = first.digest.toString('hex');
  return join(repo, 'chunks', hex.slice(0, 2), hex);
}

/** A throw-away VM writes on disk d and powers off; then it is deleted. */
async function writeWith(s: Site, name: string, cmd: string): Promise<void> {
  await s.haven('vm', 'create', name, '--disk', 'd', ...guestArgs(`${cmd}; poweroff`));
  await s.haven('vm', 'start', name);
  for (let i = 0; !/state:\s+stopped/.test(await s.haven('vm', 'show', name)); i++) {
    assert.ok(i < 300, `${name} powered off`);
    await sleep(200);
  }
  await s.haven('vm', 'delete', name);
}

async function prepare(t: {
  after: (fn: () => unknown) => void;
}): Promise<{ s: Site; repo: string; snap: string }> {
  const s = await site(t);
  await s.haven('volume', 'create', 'd', '--size', '32M');
  // A writer puts the data on the disk; the VM that is backed up (on the nat network, as in
  // production) reads it back at boot and goes on running.
  await writeWith(s, 'writer', 'write-pattern disk=vda seed=4 count=8 len=64K');
  await s.haven('vm', 'create', 'app', '--disk', 'd', '--nic', 'nat', ...guestArgs(VERIFY));
  const repo = join(s.dir, '..', 'repo');
  await s.haven('repo', 'init', '--repo', repo);
  await s.haven('backup', 'vm:app', '--repo', repo);
  const [snap] = JSON.parse(await s.haven('repo', 'list', '--repo', repo, '--json')) as { id: string }[];
  return { s, repo, snap: snap!.id };
}

test(
  'recoverability check: a good backup passes on an isolated network, a damaged disk fails its script; all is torn down',
  { timeout: 120_000 },
  async (t) => {
    const { s, repo, snap } = await prepare(t);
    // The script sees the check's VM and its console log.
    const script = join(s.dir, '..', 'check.sh');
    writeFileSync(
      script,
      `#!/bin/sh\ngrep -q '"mismatches":0' "$HAVEN_CHECK_CONSOLE_LOG" || { echo "the guest found damaged data in $HAVEN_CHECK_VM"; exit 1; }\necho "all read back in $HAVEN_CHECK_VM"\n`,
      { mode: 0o755 },
    );
    const t0 = performance.now();
    const started = JSON.parse(
      await s.haven(
        'recover',
        'check',
        'app',
        '--repo',
        repo,
        '--heartbeat',
        READ_BACK,
        '--script',
        script,
        '--timeout',
        '60s',
        '--no-wait',
        '--json',
      ),
    ) as { id: string; kind: string; target: string };
    assert.deepEqual([started.kind, started.target], ['recovery.check', 'app']);
    // While it runs: the copy is on a network of its own, isolated, not on nat beside the original.
    let seen: { name: string; nics: { network: string }[] } | undefined;
    for (let i = 0; !seen; i++) {
      assert.ok(i < 300, 'the check VM appeared');
      const vms = JSON.parse(await s.haven('vm', 'list', '--json')) as {
        name: string;
        state: string;
        nics: { network: string }[];
      }[];
      seen = vms.find((v) => v.name.startsWith('app-check-') && v.state === 'running');
      if (!seen) await sleep(100);
    }
    assert.deepEqual(seen.nics, [{ network: seen.name }]);
    const nets = JSON.parse(await s.haven('network', 'list', '--json')) as { name: string; kind: string }[];
    assert.deepEqual(nets.find((n) => n.name === seen.name)?.kind, 'isolated');

    const job = JSON.parse(await s.haven('job', 'watch', started.id, '--json')) as {
      state: string;
      result: Check;
    };
    t.diagnostic(
      `check passed in ${((performance.now() - t0) / 1000).toFixed(1)} s (job ${job.result.durationSeconds?.toFixed(1)} s)`,
    );
    assert.equal(job.state, 'succeeded');
    const [c] = JSON.parse(await s.haven('recover', 'checks', '--vm', 'app', '--json')) as Check[];
    assert.deepEqual([c!.state, c!.snapshot, c!.checkVm], ['passed', snap, seen.name]);
    assert.ok(c!.consoleLog && existsSync(c!.consoleLog), 'the console log is kept');
    assert.match(readFileSync(c!.consoleLog, 'utf8'), /"mismatches":0/);
    const events = JSON.parse(await s.haven('event', 'list', '--json')) as {
      action: string;
      outcome: string;
      target: string;
    }[];
    assert.ok(events.some((e) => e.action === 'recovery.check' && e.outcome === 'ok' && e.target === 'app'));
    await assertTornDown(s, repo);
    assert.match(await s.haven('recover', 'checks'), /passed/);

    // The same isolation by hand: no NIC, defined and served, not started; then discarded.
    const out = await s.haven(
      'recover',
      'instant',
      snap,
      '--repo',
      repo,
      '--name',
      'lab',
      '--network',
      'none',
      '--no-start',
    );
    assert.match(out, /defined over backup .*not started/);
    const lab = JSON.parse(await s.haven('vm', 'show', 'lab', '--json')) as {
      state: string;
      nics: unknown[];
    };
    assert.deepEqual([lab.state, lab.nics], ['defined', []]);
    assert.ok((await exportsOf(s)).includes('lab-d'), 'its disk is served');
    assert.match(
      await s.havenFails(
        'recover',
        'instant',
        snap,
        '--repo',
        repo,
        '--name',
        'lab2',
        '--network',
        'nat=nowhere',
      ),
      /network nowhere does not exist/,
    );
    await s.haven('recover', 'discard', 'lab');
    await assertTornDown(s, repo);

    // A newer backup of a disk damaged before it was backed up (its first write overwritten): it
    // reads without error, the guest boots and verifies, and the script finds the damage.
    await writeWith(s, 'vandal', 'write-pattern disk=vda seed=9 count=1 len=64K');
    await s.haven('backup', 'vm:app', '--repo', repo);
    const heartbeat = String.raw`console:"cmd":"verify-pattern"`;
    const err = await s.havenFails(
      'recover',
      'check',
      'app',
      '--repo',
      repo,
      '--heartbeat',
      heartbeat,
      '--script',
      script,
    );
    assert.match(err, /script .*check.sh failed \(exit 1\): the guest found damaged data in app-check-/);
    const [d] = JSON.parse(await s.haven('recover', 'checks', '--vm', 'app', '--json')) as Check[];
    assert.equal(d!.state, 'failed');
    assert.notEqual(d!.snapshot, snap, 'the newest backup was checked');
    assert.match(readFileSync(d!.consoleLog!, 'utf8'), /"mismatches":1/);
    await assertTornDown(s, repo);
  },
);

test(
  'recoverability check: a backup with a damaged chunk fails with the reason; all is torn down',
  { timeout: 120_000 },
  async (t) => {
    const { s, repo, snap } = await prepare(t);
    const r = await Repository.open(repo);
    const chunk = await firstChunkFile(repo, await r.snapshot(snap));
    const good = readFileSync(chunk);
    const bytes = Buffer.from(good);
    bytes[bytes.length >> 1]! ^= 0x40;
    writeFileSync(chunk, bytes);
    const err = await s.havenFails(
      'recover',
      'check',
      'app',
      '--repo',
      repo,
      '--heartbeat',
      READ_BACK,
      '--timeout',
      '60s',
    );
    assert.match(
      err,
      /the backup could not be read: disk 0 at offset \d+: .*the data at offset \d+ is damaged: chunk /,
    );
    const [c] = JSON.parse(await s.haven('recover', 'checks', '--json')) as Check[];
    assert.equal(c!.state, 'failed');
    assert.match(c!.reason!, /could not be read/);
    assert.ok(c!.consoleLog && existsSync(c!.consoleLog));
    const events = JSON.parse(await s.haven('event', 'list', '--json')) as {
      action: string;
      outcome: string;
      target: string;
    }[];
    assert.ok(
      events.some((e) => e.action === 'recovery.check' && e.outcome === 'failed' && e.target === 'app'),
    );
    await assertTornDown(s, repo);

    // Killed mid-check (repaired, but the heartbeat never comes): the next daemon tears it down and
    // records a fail.
    writeFileSync(chunk, good);
    const started = JSON.parse(
      await s.haven(
        'recover',
        'check',
        'app',
        '--repo',
        repo,
        '--heartbeat',
        'console:never-printed',
        '--no-wait',
        '--json',
      ),
    ) as { id: string };
    for (let i = 0; ; i++) {
      assert.ok(i < 300, 'the check VM ran');
      const vms = JSON.parse(await s.haven('vm', 'list', '--json')) as { name: string; state: string }[];
      if (vms.some((v) => v.name.startsWith('app-check-') && v.state === 'running')) break;
      await sleep(100);
    }
    s.daemon.child.kill('SIGKILL');
    await s.daemon.exited;
    s.daemon = await startDaemon(s.dir);
    const [k] = JSON.parse(await s.haven('recover', 'checks', '--json')) as Check[];
    assert.equal(k!.state, 'failed');
    assert.match(k!.reason!, /daemon stopped during the check; torn down at the next start/);
    const job = JSON.parse(await s.haven('job', 'show', started.id, '--json')) as { state: string };
    assert.equal(job.state, 'failed');
    await assertTornDown(s, repo);
    const qemus = await run('pgrep', ['-f', `qemu-system-x86_64 .*${s.dir}`]).then(
      (r) => r.stdout.trim(),
      () => '',
    );
    assert.equal(qemus, '', 'no QEMU of the check is left');
  },
);
