// `haven repo …` as an operator meets it: verify's exit status means one thing each (0 sound,
// 1 damage, 2 could not check), a damaged manifest is named while everything else goes on,
// prune works per source and never empties one by accident, a failed init can be retried.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import {
  closeSync,
  existsSync,
  ftruncateSync,
  openSync,
  readdirSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { HAVEN_BIN, start, waitForListen } from '../support/proc.js';
import { tempDir } from '../support/tmp.js';

const run = promisify(execFile);

async function haven(
  args: string[],
  env: NodeJS.ProcessEnv = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const r = await run(HAVEN_BIN, args, { env: { ...process.env, ...env } });
    return { code: 0, stdout: r.stdout, stderr: r.stderr };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

test('repo verify: 0 sound, 1 damage only, 2 when it cannot check; damaged manifests are named, not fatal', async (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  const repo = join(dir.path, 'repo');
  const img = join(dir.path, 'a.raw');
  writeFileSync(img, randomBytes(2 * 1024 * 1024));
  const other = join(dir.path, 'b.raw');
  writeFileSync(other, randomBytes(1024 * 1024));
  assert.equal((await haven(['repo', 'init', '--repo', repo])).code, 0);
  for (const source of [img, img, other])
    assert.equal((await haven(['backup', source, '--repo', repo])).code, 0);
  assert.equal((await haven(['repo', 'verify', '--repo', repo])).code, 0);

  // Could not check: 2, with the reason on stderr.
  for (const args of [
    ['repo', 'verify', '--repo', repo, 'no-such-snapshot'],
    ['repo', 'verify', '--repo', repo, '--rolling', 'x'],
    ['repo', 'verify', '--repo', repo, '--no-such-option'],
    ['repo', 'verify', '--repo', join(dir.path, 'nothing')],
  ]) {
    const r = await haven(args);
    assert.equal(r.code, 2, `${args.join(' ')}: ${r.stderr}`);
    assert.ok(r.stderr.trim().length > 0);
  }
  // A rolling verify whose cursor cannot be saved (as in a read-only repository) checks its slice
  // and says the cursor did not move: 2, not "damage".
  writeFileSync(join(repo, 'state'), 'not a folder');
  const ro = await haven(['repo', 'verify', '--repo', repo, '--rolling', '2']);
  assert.equal(ro.code, 2, ro.stderr);
  assert.match(ro.stdout, /slice 1 of 2/);
  assert.match(ro.stderr, /rolling cursor cannot be saved, so the next run checks slice 1 again/);

  // One damaged manifest: list, stats and prune name it and go on; verify says damage (1).
  const list = JSON.parse((await haven(['repo', 'list', '--repo', repo, '--json'])).stdout) as {
    id: string;
  }[];
  const victim = list[1]!.id;
  writeFileSync(join(repo, 'snapshots', victim, 'manifest.json'), '{"id":');
  const l = await haven(['repo', 'list', '--repo', repo]);
  assert.equal(l.code, 0);
  assert.ok(l.stdout.includes(list[0]!.id) && l.stdout.includes(list[2]!.id));
  assert.match(l.stderr, new RegExp(`warning: snapshot ${victim}: its manifest is damaged`));
  const st = await haven(['repo', 'stats', '--repo', repo]);
  assert.equal(st.code, 0);
  assert.match(st.stdout, /2 snapshot\(s\)/);
  const v = await haven(['repo', 'verify', '--repo', repo]);
  assert.equal(v.code, 1);
  assert.match(v.stdout, new RegExp(`DAMAGED ${victim} \\(manifest\\): unreadable`));
  assert.match(v.stdout, /verified 2 snapshot\(s\)/);
  const gc = await haven(['repo', 'gc', '--repo', repo]);
  assert.equal(gc.code, 1);
  assert.match(gc.stderr, /gc deletes nothing while a snapshot cannot be read/);
  assert.equal((await haven(['repo', 'forget', '--repo', repo, victim])).code, 0);
  assert.equal((await haven(['repo', 'verify', '--repo', repo])).code, 0);

  // A damaged chunk: each damaged file is named with its own reason.
  const chunk = readdirSync(join(repo, 'chunks'), { recursive: true, withFileTypes: true }).find(
    (e) => e.isFile() && !e.name.startsWith('.'),
  )!;
  writeFileSync(join(chunk.parentPath, chunk.name), 'torn');
  const d = await haven(['repo', 'verify', '--repo', repo]);
  assert.equal(d.code, 1);
  assert.match(
    d.stdout,
    new RegExp(`DAMAGED CHUNK chunks/${chunk.name.slice(0, 2)}/${chunk.name} .*not a Haven chunk`),
  );
});

test('repo prune: per source, --source as repo list prints it, never everything by accident', async (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  const repo = join(dir.path, 'repo');
  const a = join(dir.path, 'a.raw');
  const b = join(dir.path, 'b.raw');
  writeFileSync(a, randomBytes(256 * 1024));
  writeFileSync(b, randomBytes(256 * 1024));
  await haven(['repo', 'init', '--repo', repo]);
  for (const source of [a, a, b]) await haven(['backup', source, '--repo', repo]);
  const all = await haven(['repo', 'prune', '--repo', repo, '--keep-last', '0']);
  assert.equal(all.code, 1);
  assert.match(all.stderr, /keeps no snapshot of image:.*--delete-all/);
  const none = await haven(['repo', 'prune', '--repo', repo, '--keep-last', '1', '--source', 'vm:demo']);
  assert.equal(none.code, 1);
  assert.match(
    none.stderr,
    new RegExp(`no snapshots of source vm:demo; the sources are: image:${a}, image:${b}`),
  );
  // --keep-last 1 keeps one of each source, not one in all.
  const p = await haven(['repo', 'prune', '--repo', repo, '--keep-last', '1', '--json']);
  assert.equal(p.code, 0, p.stderr);
  // --json prints the job; what prune did is its result (docs/cli.md).
  const r = (
    JSON.parse(p.stdout) as { result: { sources: { source: string; kept: unknown[]; removed: string[] }[] } }
  ).result;
  assert.deepEqual(
    r.sources.map((s) => [s.source, s.kept.length, s.removed.length]),
    [
      [`image:${a}`, 1, 1],
      [`image:${b}`, 1, 0],
    ],
  );
  const only = await haven([
    'repo',
    'prune',
    '--repo',
    repo,
    '--keep-last',
    '0',
    '--source',
    `image:${b}`,
    '--delete-all',
  ]);
  assert.equal(only.code, 0, only.stderr);
  const left = JSON.parse((await haven(['repo', 'list', '--repo', repo, '--json'])).stdout) as {
    source: { name: string };
  }[];
  assert.deepEqual(
    left.map((s) => s.source.name),
    [a],
  );
});

test('repo init: a failed encrypted init leaves nothing that blocks the retry; stats counts stored data', async (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  const repo = join(dir.path, 'enc');
  const short = await haven(['repo', 'init', '--repo', repo, '--encrypt'], { HAVEN_PASSPHRASE: 'short' });
  assert.equal(short.code, 1);
  assert.match(short.stderr, /at least 8 characters/);
  assert.equal(existsSync(repo), false);
  const ok = await haven(['repo', 'init', '--repo', repo, '--encrypt'], { HAVEN_PASSPHRASE: 'long enough' });
  assert.equal(ok.code, 0, ok.stderr);
  // A 64 MiB disk with 1 MiB of data: the ratio is of that data, not of the zeroes.
  const img = join(dir.path, 'sparse.raw');
  const fd = openSync(img, 'w');
  writeSync(fd, randomBytes(1024 * 1024), 0, 1024 * 1024, 10 * 1024 * 1024);
  ftruncateSync(fd, 64 * 1024 * 1024);
  closeSync(fd);
  for (let i = 0; i < 2; i++)
    assert.equal((await haven(['backup', img, '--repo', repo], { HAVEN_PASSPHRASE: 'long enough' })).code, 0);
  const s = JSON.parse(
    (await haven(['repo', 'stats', '--repo', repo, '--json'], { HAVEN_PASSPHRASE: 'long enough' })).stdout,
  ) as { ratio: number; dataBytes: number; logicalBytes: number };
  assert.equal(s.dataBytes, 2 * 1024 * 1024);
  assert.equal(s.logicalBytes, 128 * 1024 * 1024);
  assert.ok(
    s.ratio > 1.9 && s.ratio < 2.1,
    `ratio ${s.ratio}: two copies of 1 MiB of random data, stored once`,
  );
});

test('forget ‖ mount: a mounted backup cannot be forgotten (gc keeps it whole); a mount killed with -9 does not hold it', async (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  const repo = join(dir.path, 'repo');
  const img = join(dir.path, 'a.raw');
  writeFileSync(img, randomBytes(4 * 1024 * 1024));
  await haven(['repo', 'init', '--repo', repo]);
  await haven(['backup', img, '--repo', repo]);
  const [snap] = JSON.parse((await haven(['repo', 'list', '--repo', repo, '--json'])).stdout) as {
    id: string;
  }[];
  const sock = join(dir.path, 'm.sock');
  const mount = start(HAVEN_BIN, ['backup', 'mount', snap!.id, '--repo', repo, '--socket', sock]);
  t.after(() => mount.stop());
  await waitForListen({ path: sock }, 10000, mount);
  const f = await haven(['repo', 'forget', '--repo', repo, snap!.id]);
  assert.equal(f.code, 1);
  assert.match(f.stderr, /in use: read by a restore or mount running now/);
  assert.equal((await haven(['repo', 'gc', '--repo', repo, '--grace', '0'])).code, 0);
  const uri = `nbd+unix:///${snap!.id}?socket=${sock}`;
  assert.match((await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', img, uri])).stdout, /identical/);
  // Killed: its session is recognised as dead, and the forget goes through.
  mount.child.kill('SIGKILL');
  await mount.stop();
  const g = await haven(['repo', 'forget', '--repo', repo, snap!.id]);
  assert.equal(g.code, 0, g.stderr);
  assert.equal((await haven(['repo', 'gc', '--repo', repo, '--grace', '0', '--json'])).code, 0);
  assert.deepEqual(readdirSync(join(repo, 'sessions')), []);
});
