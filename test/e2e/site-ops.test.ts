// Everyday operation of the site daemon: it stops cleanly on SIGTERM, SIGINT and SIGHUP (no stale
// api.json); it starts over a stale lock whose pid an unrelated process now has; it logs readable
// lines on a terminal and JSON otherwise; two sites run side by side and the CLI finds each
// through HAVEN_DATA, or says which directory has no daemon. And the CLI's conventions: `show`
// prints text (JSON with --json), a job failure the user caused is reported as that, and a
// $HAVEN_PASSPHRASE that cannot reach the daemon is said so.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { HAVEN_BIN, freePort, start, type Running } from '../support/proc.js';
import { site, startDaemon } from '../support/site.js';
import { tempDir } from '../support/tmp.js';

const run = promisify(execFile);

async function until(what: string, ok: () => boolean, ms = 20_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!ok()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

/** The CLI with only HAVEN_DATA (and a config file, if given) to find its site. */
function cli(env: { HAVEN_DATA?: string; HAVEN_CONFIG: string }) {
  const e: NodeJS.ProcessEnv = { ...process.env, ...env };
  delete e.HAVEN_API;
  delete e.HAVEN_TOKEN;
  delete e.HAVEN_TOKEN_FILE;
  if (!env.HAVEN_DATA) delete e.HAVEN_DATA;
  return {
    ok: async (...args: string[]) => (await run(HAVEN_BIN, args, { env: e, timeout: 60_000 })).stdout,
    fails: async (...args: string[]) => {
      try {
        await run(HAVEN_BIN, args, { env: e, timeout: 60_000 });
      } catch (err) {
        return (err as { stderr: string }).stderr;
      }
      throw new Error(`haven ${args.join(' ')} succeeded but should have failed`);
    },
  };
}

test('SIGTERM, SIGINT and SIGHUP stop the daemon cleanly: exit 0, no api.json, no lock; logs are JSON off a terminal', async (t) => {
  const tmp = tempDir('haven-ops-');
  const dir = join(tmp.path, 'data');
  let daemon: Running | undefined;
  t.after(async () => {
    await daemon?.stop();
    tmp.cleanup();
  });
  for (const signal of ['SIGTERM', 'SIGINT', 'SIGHUP'] as const) {
    daemon = await startDaemon(dir);
    assert.ok(existsSync(join(dir, '.lock')));
    daemon.child.kill(signal);
    const [code] = (await once(daemon.child, 'exit')) as [number | null];
    assert.equal(code, 0, `${signal}: exit status\n${daemon.output()}`);
    assert.ok(!existsSync(join(dir, 'api.json')), `${signal} left api.json behind`);
    assert.ok(!existsSync(join(dir, '.lock')), `${signal} left the lock behind`);
    // stderr is a pipe here: every log line is JSON, for log shippers.
    const logs = daemon
      .output()
      .split('\n')
      .filter((l) => l.startsWith('{'));
    assert.ok(logs.some((l) => (JSON.parse(l) as { msg: string }).msg === 'site daemon stopped'));
    assert.ok(logs.some((l) => (JSON.parse(l) as { signal?: string }).signal === signal));
  }
});

test('a stale lock naming a pid that an unrelated process now has does not block start-up', async (t) => {
  const tmp = tempDir('haven-ops-');
  const dir = join(tmp.path, 'data');
  const stranger = spawn('sleep', ['600'], { stdio: 'ignore' });
  const daemons: Running[] = [];
  t.after(async () => {
    for (const d of daemons) await d.stop();
    stranger.kill('SIGKILL');
    tmp.cleanup();
  });
  mkdirSync(dir, { recursive: true });
  // What a daemon that died before a reboot leaves: its pid (now the stranger's), another start time and boot.
  writeFileSync(join(dir, '.lock'), `${stranger.pid} 1 00000000-0000-0000-0000-000000000000\n`);
  const daemon = await startDaemon(dir);
  daemons.push(daemon);
  const [pid] = readFileSync(join(dir, '.lock'), 'utf8').split(' ');
  assert.equal(Number(pid), daemon.child.pid);
});

test('on a terminal the daemon logs readable lines; closing the terminal (SIGHUP) removes api.json', async (t) => {
  const tmp = tempDir('haven-ops-');
  const dir = join(tmp.path, 'data');
  const out = join(tmp.path, 'terminal.txt');
  // script(1) gives the daemon a pseudo-terminal; what it shows goes to `out`.
  const cmd = `${process.execPath} ${HAVEN_BIN} serve --data ${dir} --listen 127.0.0.1:0 --nbd-listen none --peer-listen none`;
  const terminal = spawn('script', ['-qfec', cmd, out], { stdio: 'ignore' });
  let daemonPid = 0;
  t.after(() => {
    terminal.kill('SIGKILL');
    try {
      if (daemonPid) process.kill(daemonPid, 'SIGKILL');
    } catch {
      // gone already
    }
    tmp.cleanup();
  });
  const shown = () => (existsSync(out) ? readFileSync(out, 'utf8') : '');
  await until('the daemon to serve', () => /daemon: site daemon serving/.test(shown()));
  daemonPid = (JSON.parse(readFileSync(join(dir, 'api.json'), 'utf8')) as { pid: number }).pid;
  // Levels in colour; without the colour codes, the line as a person reads it.
  assert.ok(shown().includes('\u001b[32mINFO \u001b[0m'), shown());
  const plain = shown().replaceAll('\u001b[32m', '').replaceAll('\u001b[0m', '');
  assert.match(plain, /^\d\d:\d\d:\d\d\.\d{3} INFO {2}daemon: site daemon serving site=\S+ url=http/m);
  assert.doesNotMatch(shown(), /"level":/);

  // The terminal goes away: the daemon gets SIGHUP and stops as on SIGTERM.
  terminal.kill('SIGKILL'); // the pty's master closes: the kernel hangs the terminal up
  await until('the daemon to stop', () => {
    try {
      process.kill(daemonPid, 0);
      return false;
    } catch {
      return true;
    }
  });
  assert.ok(!existsSync(join(dir, 'api.json')), 'api.json was removed');
  assert.ok(!existsSync(join(dir, '.lock')), 'the lock was released');
});

test('two sites on one machine, each found by the CLI through its HAVEN_DATA; no daemon: the message names the directory', async (t) => {
  const tmp = tempDir('haven-ops-');
  const a = join(tmp.path, 'a');
  const b = join(tmp.path, 'b');
  const [portA, portB] = [await freePort(), await freePort()];
  const noConfig = join(tmp.path, 'no-config.json');
  const daemons: Running[] = [];
  t.after(async () => {
    for (const d of daemons) await d.stop();
    tmp.cleanup();
  });
  const serve = async (dir: string, site: string, env: NodeJS.ProcessEnv, args: string[]) => {
    const d = start(
      HAVEN_BIN,
      ['serve', '--site', site, '--nbd-listen', 'none', '--peer-listen', 'none', ...args],
      {
        env: { ...process.env, ...env },
      },
    );
    daemons.push(d);
    await until(`site ${site} to serve`, () => {
      if (d.child.exitCode !== null) throw new Error(`site ${site} did not start:\n${d.output()}`);
      return existsSync(join(dir, 'api.json'));
    });
    return d;
  };
  // The data directory and the API's port from the environment, or from options.
  await serve(a, 'alpha', { HAVEN_DATA: a, HAVEN_LISTEN: `127.0.0.1:${portA}` }, []);
  const db = await serve(b, 'beta', {}, ['--data', b, '--listen', `127.0.0.1:${portB}`]);
  assert.match(readFileSync(join(a, 'api.json'), 'utf8'), new RegExp(`127\\.0\\.0\\.1:${portA}`));
  // A third on a port in use: refused, naming the listener and how to choose another.
  const clash = await run(
    HAVEN_BIN,
    [
      'serve',
      '--data',
      join(tmp.path, 'c'),
      '--listen',
      `127.0.0.1:${portA}`,
      '--nbd-listen',
      'none',
      '--peer-listen',
      'none',
    ],
    {
      env: { ...process.env, HAVEN_LOG_LEVEL: 'warn' },
    },
  ).then(
    () => assert.fail('a second daemon on the same API port started'),
    (err: { stderr: string }) => err.stderr,
  );
  assert.match(
    clash,
    new RegExp(
      `the REST API cannot listen on 127\\.0\\.0\\.1:${portA}: the port is in use .*--listen HOST:PORT or \\$HAVEN_LISTEN`,
    ),
  );

  const name = async (c: ReturnType<typeof cli>) =>
    (JSON.parse(await c.ok('site', 'show', '--json')) as { name: string }).name;
  assert.equal(await name(cli({ HAVEN_DATA: a, HAVEN_CONFIG: noConfig })), 'alpha');
  assert.equal(await name(cli({ HAVEN_DATA: b, HAVEN_CONFIG: noConfig })), 'beta');
  await cli({ HAVEN_DATA: a, HAVEN_CONFIG: noConfig }).ok(
    'volume',
    'create',
    'only-in-alpha',
    '--size',
    '1M',
  );
  assert.doesNotMatch(
    await cli({ HAVEN_DATA: b, HAVEN_CONFIG: noConfig }).ok('volume', 'list'),
    /only-in-alpha/,
  );

  // A config file naming site alpha does not hide the site HAVEN_DATA names.
  const config = join(tmp.path, 'cli.json');
  writeFileSync(
    config,
    JSON.stringify({ api: `http://127.0.0.1:${portA}`, tokenFile: join(a, 'api-token') }),
  );
  assert.equal(await name(cli({ HAVEN_DATA: b, HAVEN_CONFIG: config })), 'beta');
  assert.equal(await name(cli({ HAVEN_CONFIG: config })), 'alpha');

  // No daemon on a directory: the CLI names it, and how to start one.
  const empty = join(tmp.path, 'empty');
  mkdirSync(empty);
  const none = await cli({ HAVEN_DATA: empty, HAVEN_CONFIG: noConfig }).fails('vm', 'list');
  assert.match(
    none,
    new RegExp(
      `no site daemon runs on ${empty} \\(\\$HAVEN_DATA\\): it has no api\\.json; start one with "haven serve --data ${empty}"`,
    ),
  );
  // A daemon killed -9 leaves its api.json: the CLI sees that its process has ended.
  db.child.kill('SIGKILL');
  await once(db.child, 'exit');
  const dead = await cli({ HAVEN_DATA: b, HAVEN_CONFIG: noConfig }).fails('vm', 'list');
  assert.match(
    dead,
    new RegExp(
      `no site daemon runs on ${b} \\(\\$HAVEN_DATA\\): its api\\.json names process ${db.child.pid}, which has ended`,
    ),
  );
  assert.equal(dead.trim().split('\n').length, 1, dead);
});

test('show prints text and --json JSON; a job failure the user caused is no internal error; the CLI says its HAVEN_PASSPHRASE stays with it', async (t) => {
  const s = await site(t);
  await s.haven('volume', 'create', 'v1', '--size', '8M');
  await s.haven('snapshot', 'create', 'v1', 's1');
  const text = await s.haven('volume', 'show', 'v1');
  assert.match(text, /^volume: +v1 \(/m);
  assert.match(text, /^pool: +default$/m);
  assert.match(text, /^size: +8\.0 MiB \(8388608 bytes\)$/m);
  assert.match(text, /^snapshots: +1$/m);
  assert.match(text, /^SNAPSHOT +CREATED\n\S*s1 +\d{4}-/m);
  assert.throws(() => JSON.parse(text) as unknown);
  const json = JSON.parse(await s.haven('volume', 'show', 'v1', '--json')) as {
    name: string;
    snapshots: unknown[];
  };
  assert.equal(json.name, 'v1');
  assert.equal(json.snapshots.length, 1);
  const pool = await s.haven('pool', 'show', 'default');
  assert.match(pool, /^pool: +default \(/m);
  assert.match(pool, /^offers: +thin snapshots clones/m);
  assert.equal(
    (JSON.parse(await s.haven('pool', 'show', 'default', '--json')) as { name: string }).name,
    'default',
  );

  // Jobs failed by the request: reported with the error's own kind, never "internal".
  await s.haven('pool', 'create', 'fast', '--tier', 'fast');
  const moved = await s.havenFails('volume', 'move', 'v1', '--pool', 'fast');
  assert.match(moved, /^haven: conflict: job \S+ \(volume\.move v1\) failed: volume v1 has snapshots \(s1\)/);
  const notRepo = join(s.dir, '..', 'not-a-repo');
  mkdirSync(notRepo);
  const backup = await s.havenFails('backup', 'volume:v1', '--repo', notRepo);
  assert.match(
    backup,
    new RegExp(
      `^haven: not found: job \\S+ \\(volume\\.backup v1\\) failed: ${notRepo} is not a Haven repository`,
    ),
  );
  const job = (
    JSON.parse(await s.haven('job', 'list', '--kind', 'volume.move', '--json')) as { errorCode: string }[]
  )[0]!;
  assert.equal(job.errorCode, 'CONFLICT');

  // An encrypted repository: the CLI's HAVEN_PASSPHRASE does not reach the daemon, and it says so.
  const repo = join(s.dir, '..', 'secret');
  const withPass = { ...s.env, HAVEN_PASSPHRASE: 'correct horse' };
  await run(HAVEN_BIN, ['repo', 'init', '--repo', repo, '--encrypt'], { env: withPass });
  const refused = await run(HAVEN_BIN, ['backup', 'volume:v1', '--repo', repo], { env: withPass }).then(
    () => assert.fail('the daemon had no passphrase, yet the backup succeeded'),
    (err: { stderr: string }) => err.stderr,
  );
  assert.match(
    refused,
    /^haven: note: \$HAVEN_PASSPHRASE is not passed to the site daemon .*--passphrase-file FILE$/m,
  );
  assert.match(refused, /^haven: unauthenticated: job .* is encrypted: give its passphrase/m);
  const passFile = join(s.dir, '..', 'passphrase');
  writeFileSync(passFile, 'correct horse\n', { mode: 0o600 });
  const done = await run(
    HAVEN_BIN,
    ['backup', 'volume:v1', '--repo', repo, '--passphrase-file', passFile, '--json'],
    {
      env: withPass,
    },
  );
  assert.doesNotMatch(done.stderr, /note:/);
  const id = (JSON.parse(done.stdout) as { result: { snapshot: string } }).result.snapshot;
  const shown = (await run(HAVEN_BIN, ['repo', 'show', id, '--repo', repo], { env: withPass })).stdout;
  assert.match(shown, new RegExp(`^snapshot: +${id}$`, 'm'));
  assert.match(shown, /^source: +volume:v1$/m);
  assert.match(shown, /^DISK +SIZE +CHUNK/m);
  const manifest = (await run(HAVEN_BIN, ['repo', 'show', id, '--repo', repo, '--json'], { env: withPass }))
    .stdout;
  assert.equal((JSON.parse(manifest) as { id: string }).id, id);
});
