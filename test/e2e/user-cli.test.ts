// `haven user …` against a real `haven serve`: add (password from a file, or piped on stdin),
// list, passwd, role, delete, and API tokens; what each user's token may do from the CLI.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { HAVEN_BIN } from '../support/proc.js';
import { site } from '../support/site.js';
import { caller } from '../support/console-client.js';

/** `haven ARGS` with `input` piped to its stdin: exit status, stdout, stderr. */
function havenWithInput(env: NodeJS.ProcessEnv, input: string, ...args: string[]) {
  return new Promise<{ status: number | null; stdout: string; stderr: string }>((resolve, reject) => {
    const child = spawn(HAVEN_BIN, args, { env, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('close', (status) => resolve({ status, stdout, stderr }));
    child.stdin.end(input);
  });
}

test('CLI: haven user add, list, passwd, role, delete, and token create, list, delete', async (t) => {
  const s = await site(t);
  const { url } = await s.info();
  const file = (name: string, text: string) => {
    const p = join(s.dir, '..', name);
    writeFileSync(p, text, { mode: 0o600 });
    return p;
  };
  const signs = async (user: string, password: string) =>
    (await caller(url)('POST', '/session', { user, password })).status === 200;

  assert.match(
    await s.haven(
      'user',
      'add',
      'alice',
      '--role',
      'operator',
      '--password-file',
      file('a', 'alice secret 1\n'),
    ),
    /^user alice added \(operator\)$/m,
  );
  const piped = await havenWithInput(
    s.env,
    'bob secret 1\n',
    'user',
    'add',
    'bob',
    '--role',
    'viewer',
    '--json',
  );
  assert.equal(piped.status, 0, piped.stderr);
  assert.equal((JSON.parse(piped.stdout) as { role: string }).role, 'viewer');
  assert.ok(await signs('alice', 'alice secret 1'));
  assert.ok(await signs('bob', 'bob secret 1'), 'the piped password, without its newline');

  const listed = JSON.parse(await s.haven('user', 'list', '--json')) as { name: string; role: string }[];
  assert.deepEqual(
    listed.map((u) => `${u.name}:${u.role}`),
    ['alice:operator', 'bob:viewer'],
  );
  assert.match(await s.haven('user', 'list'), /^NAME\s+ROLE\s+CREATED\s+UPDATED\nalice\s+operator\s/);

  // Refusals name what is wrong; nothing is added.
  const pw = file('ok', 'long enough\n');
  assert.match(
    await s.havenFails('user', 'add', 'a/b', '--role', 'viewer', '--password-file', pw),
    /^haven: invalid argument: user name "a\/b" is not valid/,
  );
  assert.match(
    await s.havenFails('user', 'add', 'carl', '--role', 'root', '--password-file', pw),
    /unknown role "root"|body\.role must be equal to one of the allowed values/,
  );
  assert.match(
    await s.havenFails('user', 'add', 'alice', '--role', 'viewer', '--password-file', pw),
    /^haven: conflict: user alice exists already/,
  );
  assert.match(
    await s.havenFails(
      'user',
      'add',
      'carl',
      '--role',
      'viewer',
      '--password-file',
      file('short', 'short\n'),
    ),
    /password is too short/,
  );
  assert.equal((JSON.parse(await s.haven('user', 'list', '--json')) as unknown[]).length, 2);

  // passwd: the new password signs in, the old one no more.
  assert.match(
    await s.haven('user', 'passwd', 'alice', '--password-file', file('a2', 'alice secret 2\n')),
    /password of user alice changed/,
  );
  assert.ok(!(await signs('alice', 'alice secret 1')));
  assert.ok(await signs('alice', 'alice secret 2'));
  const viaStdin = await havenWithInput(s.env, 'bob secret 2\n', 'user', 'passwd', 'bob');
  assert.equal(viaStdin.status, 0, viaStdin.stderr);
  assert.ok(await signs('bob', 'bob secret 2'));

  // Tokens: bob's acts as bob (a viewer) from the CLI.
  const made = JSON.parse(await s.haven('user', 'token', 'create', 'bob', '--json')) as {
    id: string;
    token: string;
  };
  const bobToken = file('bob-token', made.token + '\n');
  assert.match(
    await s.haven('user', 'token', 'list', 'bob'),
    new RegExp(`^ID\\s+CREATED\\s+LAST USED\\n${made.id}\\s`),
  );
  assert.match(await s.haven('volume', 'list', '--token-file', bobToken), /^NAME|^$/);
  assert.match(
    await s.havenFails('volume', 'create', 'v1', '--size', '1M', '--token-file', bobToken),
    /^haven: permission denied: POST \/api\/v1\/volumes: this needs the operator role; user bob is viewer/,
  );
  assert.match(
    await s.havenFails(
      'user',
      'add',
      'eve',
      '--role',
      'admin',
      '--password-file',
      pw,
      '--token-file',
      bobToken,
    ),
    /permission denied: .*needs the admin role; user bob is viewer/,
  );
  // A role change reaches the token at once.
  assert.match(await s.haven('user', 'role', 'bob', 'operator'), /user bob is now operator/);
  await s.haven('volume', 'create', 'v1', '--size', '1M', '--token-file', bobToken);
  const ev = JSON.parse(await s.haven('event', 'list', '--json', '--action', 'volume.create')) as {
    actor: string;
  }[];
  assert.match(ev[0]!.actor, /^bob@/, 'the audit log names the user');
  assert.match(await s.haven('user', 'token', 'delete', 'bob', made.id), /revoked/);
  assert.match(
    await s.havenFails('volume', 'list', '--token-file', bobToken),
    /unauthenticated: the API token is not valid/,
  );

  assert.match(await s.haven('user', 'delete', 'bob'), /^user bob deleted$/m);
  assert.deepEqual(
    (JSON.parse(await s.haven('user', 'list', '--json')) as { name: string }[]).map((u) => u.name),
    ['alice'],
  );
  assert.match(await s.havenFails('user', 'delete', 'bob'), /^haven: not found: no user bob/);
  assert.match(await s.haven('--help'), /^\s+user\s/m);
});
