import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const haven = fileURLToPath(new URL('../../../bin/haven', import.meta.url));
const run = (...args: string[]) => spawnSync(process.execPath, [haven, ...args], { encoding: 'utf8' });

test('haven --help lists the command families and exits 0', () => {
  const r = run('--help');
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /Usage: haven/);
  for (const family of ['nbd']) assert.match(r.stdout, new RegExp(`^\\s+${family}\\b`, 'm'));
});

test('an unknown command gives a one-line error and a non-zero exit', () => {
  const r = run('no-such-command');
  assert.notEqual(r.status, 0);
  assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
  assert.match(r.stderr, /unknown command/);
});

test('a bad option gives a one-line error and a non-zero exit', () => {
  const r = run('nbd', 'serve', '--no-such-option');
  assert.notEqual(r.status, 0);
  assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
});

test('haven backup --help names every kind of source, the qemu:QMP_SOCKET#NODE one included', () => {
  const r = run('backup', '--help');
  assert.equal(r.status, 0, r.stderr);
  const help = r.stdout.replace(/\s+/g, ' ');
  for (const kind of ['image file', 'NBD URI', 'qemu:QMP_SOCKET#NODE', 'volume:NAME', 'vm:NAME'])
    assert.ok(help.includes(kind), `${kind} in: ${help}`);
});

test('haven serve --help says where each address and the data directory come from', () => {
  const r = run('serve', '--help');
  assert.equal(r.status, 0, r.stderr);
  const help = r.stdout.replace(/\s+/g, ' ');
  for (const said of ['$HAVEN_LISTEN', '--nbd-listen', '--nbd-listen-plain', '--data', '/metrics'])
    assert.ok(help.includes(said), `${said} in: ${help}`);
});
