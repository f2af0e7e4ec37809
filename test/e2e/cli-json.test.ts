/**
 * The CLI for scripts (docs/cli.md): --json of a command of each group against the shapes that
 * page documents, the error lines of the common mistakes, and progress on a real terminal (a
 * pseudo-terminal from util-linux `script`) and on a pipe.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { randomBytes } from 'node:crypto';
import { HAVEN_BIN } from '../support/proc.js';
import { site } from '../support/site.js';

const run = promisify(execFile);
const MiB = 1024 * 1024;
const ESC = '\x1b';
/** What a terminal progress line ends with: back to the start, erase the line. */
const CLEAR = `\r${ESC}[K`;

/** The examples docs/cli.md marks `<!-- shape: NAME -->`, parsed. */
const SHAPES = (() => {
  const doc = readFileSync(new URL('../../../docs/cli.md', import.meta.url), 'utf8');
  const out = new Map<string, unknown>();
  for (const m of doc.matchAll(/<!-- shape: (\S+) -->\s*```json\n([\s\S]*?)```/g))
    out.set(m[1]!, JSON.parse(m[2]!));
  return out;
})();

const kind = (v: unknown) => (v === null ? 'null' : Array.isArray(v) ? 'array' : typeof v);

/** Where `actual` lacks a field of the documented example, or has it with another JSON type. */
function mismatches(actual: unknown, example: unknown, path = '$', absent: string[] = []): string[] {
  if (kind(actual) !== kind(example)) return [`${path}: ${kind(actual)}, documented ${kind(example)}`];
  if (Array.isArray(example) && Array.isArray(actual)) {
    if (example.length === 0 || actual.length === 0) return [];
    return actual.flatMap((a, i) => mismatches(a, example[0], `${path}[${i}]`));
  }
  if (kind(example) !== 'object') return [];
  const a = actual as Record<string, unknown>;
  return Object.entries(example as Record<string, unknown>).flatMap(([k, v]) =>
    absent.includes(k) ? [] : k in a ? mismatches(a[k], v, `${path}.${k}`) : [`${path}.${k}: missing`],
  );
}

function assertShape(actual: unknown, shape: string, absent: string[] = []): void {
  const example = SHAPES.get(shape);
  assert.ok(example !== undefined, `docs/cli.md has a shape ${shape}`);
  assert.deepEqual(mismatches(actual, example, '$', absent), [], `${shape}: ${JSON.stringify(actual)}`);
}

/** A job: each kind has its own `result` (checked apart); the CLI's own jobs have no id, no actor. */
const assertJob = (actual: unknown, absent: string[] = []): void =>
  assertShape(actual, 'job', ['result', ...absent]);

test('--json of a command of each group has the shape docs/cli.md documents', async (t) => {
  const s = await site(t);
  const json = async (...args: string[]) => JSON.parse(await s.haven(...args, '--json')) as unknown;
  const repo = join(s.dir, '..', 'repo');

  assertShape(await json('site', 'show'), 'site');
  assertShape(await json('pool', 'show', 'default'), 'pool');
  for (const p of (await json('pool', 'list')) as unknown[]) assertShape(p, 'pool');
  await s.haven('volume', 'create', 'v1', '--size', '8M');
  const snap = (await json('snapshot', 'create', 'v1', 's1')) as { result: unknown; state: string };
  assertJob(snap);
  assert.equal(snap.state, 'succeeded');
  const snapshotShape = (SHAPES.get('volume') as { snapshots: unknown[] }).snapshots[0];
  assert.deepEqual(mismatches(snap.result, snapshotShape), [], 'snapshot create: its result is the snapshot');
  assertShape(await json('volume', 'show', 'v1'), 'volume');
  assertShape(await json('vm', 'create', 'vm1', '--disk', 'v1'), 'vm');
  assertShape(await json('host', 'list'), 'hosts');
  assertShape(await json('event', 'list'), 'events');
  const pw = join(s.dir, '..', 'pw');
  writeFileSync(pw, 'a password\n');
  assertShape([await json('user', 'add', 'ann', '--role', 'viewer', '--password-file', pw)], 'users');
  assertShape(await json('user', 'list'), 'users');
  assertShape(await json('user', 'token', 'create', 'ann'), 'user-token');
  assertShape(await json('user', 'token', 'list', 'ann'), 'user-tokens');
  // Paired with a second site.
  const other = await site(t, ['--site', 'other']);
  const token = (JSON.parse(await other.haven('site', 'pair-token', '--json')) as { token: string }).token;
  await s.haven('site', 'pair', '--peer-api', (await other.info()).url, '--peer-token', token);
  assertShape(await json('site', 'peers'), 'peers');

  await s.haven('repo', 'init', '--repo', repo);
  // A site job: the job, its result naming the snapshot the backup made.
  const backup = (await json('backup', 'volume:v1', '--repo', repo)) as {
    id: string;
    result: { snapshot: string };
  };
  assertJob(backup);
  assertShape(backup.result, 'backup-result');
  const manifests = (await json('repo', 'list', '--repo', repo)) as { id: string }[];
  assertShape(manifests, 'manifests');
  assert.deepEqual(
    manifests.map((m) => m.id),
    [backup.result.snapshot],
  );
  assertShape(await json('job', 'show', backup.id), 'job-show');

  // The CLI's own operations have the same shape, without a site job's id and actor.
  const out = join(s.dir, '..', 'v1.raw');
  const restore = (await json('restore', backup.result.snapshot, '--repo', repo, '--to', out)) as {
    id?: string;
    kind: string;
    result: unknown;
  };
  assertJob(restore, ['id', 'actor']);
  assert.equal(restore.id, undefined);
  assert.equal(restore.kind, 'restore');
  assertShape(restore.result, 'restore-result');
  const image = join(s.dir, '..', 'image.raw');
  writeFileSync(image, randomBytes(MiB));
  const local = (await json('backup', image, '--repo', repo)) as { kind: string; result: unknown };
  assertJob(local, ['id', 'actor']);
  assert.equal(local.kind, 'backup');
  assertShape(local.result, 'backup-result', ['consistencyReason', 'repository']);
  const verify = (await json('repo', 'verify', '--repo', repo)) as {
    kind: string;
    result: { chunks: number };
  };
  assertJob(verify, ['id', 'actor']);
  assert.equal(verify.kind, 'repository.verify');
  assert.ok(verify.result.chunks > 0);

  // --no-wait: the job as it started; job watch --json: the same job at its end.
  const started = (await json('volume', 'import', image, '--name', 'imp', '--no-wait')) as {
    id: string;
    state: string;
  };
  assertJob(started, ['endedAt']);
  const ended = (await json('job', 'watch', started.id)) as {
    id: string;
    state: string;
    result: { volume: { name: string } };
  };
  assert.equal(ended.id, started.id);
  assert.equal(ended.state, 'succeeded');
  assert.equal(ended.result.volume.name, 'imp');

  // A job that fails still prints itself with --json, and the command fails.
  const failed = await run(HAVEN_BIN, ['repo', 'verify', 'no-such-snapshot', '--repo', repo, '--json'], {
    env: s.env,
  }).then(
    () => assert.fail('verify of an unknown snapshot succeeded'),
    (e: { stdout: string; stderr: string; code: number }) => e,
  );
  assert.equal(failed.code, 2, 'verify that could not run exits 2');
  const fj = JSON.parse(failed.stdout) as { state: string; errorCode: string; error: string };
  assert.equal(fj.state, 'failed');
  assert.equal(fj.errorCode, 'NOT_FOUND');
  assert.equal(failed.stderr.trim().split('\n').length, 1, failed.stderr);
});

test('the common errors name the object and the fix, in one line', async (t) => {
  const s = await site(t);
  const repo = join(s.dir, '..', 'repo');
  await s.haven('repo', 'init', '--repo', repo);
  await s.haven('volume', 'create', 'v1', '--size', '1M');
  const url = (JSON.parse(readFileSync(join(s.dir, 'api.json'), 'utf8')) as { url: string }).url;
  const fails = async (env: NodeJS.ProcessEnv, ...args: string[]) => {
    const e = await run(HAVEN_BIN, args, { env }).then(
      () => assert.fail(`haven ${args.join(' ')} succeeded`),
      (err: { stderr: string; code: number }) => err,
    );
    assert.equal(e.code, 1, args.join(' '));
    assert.equal(e.stderr.trim().split('\n').length, 1, e.stderr);
    return e.stderr.trim();
  };
  const cases: [string[], RegExp, NodeJS.ProcessEnv?][] = [
    [['volume', 'show', 'nope'], /^haven: not found: no volume nope: see "haven volume list"$/],
    [['vm', 'start', 'nope'], /^haven: not found: no VM nope: see "haven vm list"$/],
    [
      ['pool', 'show', 'fast'],
      /no pool fast: see "haven pool list", or create it with "haven pool create fast"$/,
    ],
    [['snapshot', 'delete', 'v1', 'nope'], /volume v1 has no snapshot nope: see "haven snapshot list v1"$/],
    [
      ['repo', 'show', 'nope', '--repo', repo],
      /no snapshot nope in repository .*: see "haven repo list --repo .*repo"$/,
    ],
    [
      ['repo', 'list', '--repo', join(repo, 'no')],
      /is not a Haven repository .*create one with "haven repo init"/,
    ],
    [['job', 'show', 'nope'], /no job nope: see "haven job list"$/],
    [
      ['vm', 'list'],
      /no site daemon runs on .*empty \(\$HAVEN_DATA\).*start one with "haven serve --data .*empty"/,
      { ...s.env, HAVEN_DATA: join(s.dir, '..', 'empty') },
    ],
    [
      ['vm', 'list'],
      /token is not valid for http:\/\/.* \(token from \$HAVEN_TOKEN\): give the site's token.*--token-file/,
      { ...s.env, HAVEN_API: url, HAVEN_TOKEN: 'wrong' },
    ],
    [
      ['vm', 'list'],
      /cannot reach the Haven site API at http:\/\/127\.0\.0\.1:1: .*is its daemon running/,
      { ...s.env, HAVEN_API: 'http://127.0.0.1:1', HAVEN_TOKEN: 'x' },
    ],
  ];
  for (const [args, re, env] of cases) assert.match(await fails(env ?? s.env, ...args), re);
});

test('progress: a redrawn bar on a terminal, plain lines on a pipe, none with --json on a pipe', async (t) => {
  const s = await site(t);
  const repo = join(s.dir, '..', 'repo');
  await s.haven('repo', 'init', '--repo', repo);
  const image = join(s.dir, '..', 'image.raw');
  writeFileSync(image, randomBytes(96 * MiB));

  // A pipe: a line per tenth, 0% to 100%, on stderr; stdout has only the result.
  const piped = await run(HAVEN_BIN, ['backup', image, '--repo', repo], { env: s.env });
  const lines = piped.stderr.trim().split('\n');
  assert.ok(lines.length >= 2 && lines.length <= 12, piped.stderr);
  for (const l of lines) assert.match(l, /^haven: backup: \d+%, [\d.]+ \w+ of 96\.0 MiB/);
  assert.match(lines.at(-1)!, /: 100%,/);
  assert.match(piped.stdout, /^snapshot \S+ of image:/);
  assert.doesNotMatch(piped.stdout, /%/);

  // --json on a pipe: no progress at all, one JSON document on stdout.
  const quiet = await run(HAVEN_BIN, ['backup', image, '--repo', repo, '--full', '--json'], { env: s.env });
  assert.equal(quiet.stderr, '');
  assert.equal((JSON.parse(quiet.stdout) as { state: string }).state, 'succeeded');

  // A terminal: one line redrawn in place (\r … ESC[K) at most ~5 times a second, cleared at the end.
  const tty = async (...args: string[]) => {
    const cmd = [HAVEN_BIN, ...args].map((a) => `'${a}'`).join(' ');
    const t0 = Date.now();
    const r = await run('script', ['-qfec', cmd, '/dev/null'], { env: s.env });
    return { out: r.stdout, seconds: (Date.now() - t0) / 1000 };
  };
  const local = await tty('backup', image, '--repo', repo, '--full');
  const draws = local.out.match(new RegExp(`\\r[^\\r\\n]*\\[[#-]+\\][^\\r\\n]*${ESC}\\[K`, 'g')) ?? [];
  assert.ok(draws.length >= 1, JSON.stringify(local.out));
  assert.ok(draws.length <= local.seconds * 5 + 3, `${draws.length} redraws in ${local.seconds} s`);
  assert.match(draws.at(-1)!, /100% 96\.0 MiB\/96\.0 MiB/);
  assert.ok(local.out.includes(`${CLEAR}snapshot `), 'the bar is cleared before the result');
  assert.doesNotMatch(local.out, /haven: backup: \d+%/, 'no plain lines on a terminal');

  // A site job followed on a terminal: the same bar, from the job's progress (rate and ETA).
  const followed = await tty('volume', 'import', image, '--name', 'imp');
  assert.match(followed.out, /\r[^\r\n]*\[[#-]+\] +\d+% [\d.]+ \w+\/96\.0 MiB/, JSON.stringify(followed.out));
  assert.ok(followed.out.includes(`${CLEAR}imported `), JSON.stringify(followed.out));
});
