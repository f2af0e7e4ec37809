import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readFileSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { tempDir } from '../support/tmp.js';
import { HAVEN_BIN, run, start, waitForListen, type Running } from '../support/proc.js';

/**
 * `haven nbd copy` and `haven nbd info` end to end, against qemu-nbd and nbdkit.
 * HAVEN_E2E_BIN may name another launcher (for trying the commands before they are wired in).
 */
const BIN = process.env.HAVEN_E2E_BIN ?? HAVEN_BIN;
const MiB = 1024 * 1024;
const SIZE = 32 * MiB;

const tmp = tempDir('haven-e2e-nbd-copy-');
const peers: Running[] = [];
after(async () => {
  await Promise.all(peers.map((p) => p.stop()));
  tmp.cleanup();
});

const sha = (f: string) => createHash('sha256').update(readFileSync(f)).digest('hex');
const allocated = (f: string) => statSync(f).blocks * 512;

function haven(...args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const c = spawn(process.execPath, [BIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    c.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    c.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    c.on('exit', (code) => resolve({ code, stdout, stderr }));
  });
}

async function ok(...args: string[]) {
  const r = await haven(...args);
  assert.equal(r.code, 0, `haven ${args.join(' ')}\n${r.stdout}\n${r.stderr}`);
  return r;
}

function emptyFile(name: string, size = SIZE) {
  const f = join(tmp.path, name);
  writeFileSync(f, '');
  truncateSync(f, size);
  return f;
}

async function qemuNbd(name: string, file: string): Promise<string> {
  const sock = join(tmp.path, `${name}.sock`);
  const p = start('qemu-nbd', ['-f', 'raw', '-x', name, `--socket=${sock}`, '-t', '--shared=8', file]);
  peers.push(p);
  await waitForListen({ path: sock }, 10000, p);
  return `nbd+unix:///${name}?socket=${sock}`;
}

async function nbdkit(name: string, file: string): Promise<string> {
  const sock = join(tmp.path, `${name}.sock`);
  const p = start('nbdkit', ['-f', '-U', sock, '--exit-with-parent', 'file', file]);
  peers.push(p);
  await waitForListen({ path: sock }, 10000, p);
  return `nbd+unix:///?socket=${sock}`;
}

let source: string;
before(async () => {
  // A sparse source: 3 data ranges, the rest holes.
  source = emptyFile('source.raw');
  await run('qemu-io', [
    '-f',
    'raw',
    '-c',
    'write -P 0x11 0 64k',
    '-c',
    'write -P 0x22 5M 1M',
    '-c',
    'write -P 0x33 30M 12k',
    source,
  ]);
});

test('haven nbd copy: file → nbd (qemu-nbd) → file, sparse and identical', async () => {
  const target = emptyFile('q-target.img');
  const uri = await qemuNbd('qt', target);
  const r1 = await ok('nbd', 'copy', source, uri, '--json');
  const res = (JSON.parse(r1.stdout) as { result: { verified: boolean; dataBytes: number; size: number } })
    .result;
  assert.equal(res.verified, true);
  assert.equal(res.size, SIZE);
  assert.equal(res.dataBytes, 64 * 1024 + MiB + 12 * 1024);
  assert.equal(sha(target), sha(source));

  const back = join(tmp.path, 'back.raw');
  const r2 = await ok('nbd', 'copy', uri, back);
  assert.match(r2.stdout, /copied 32 MiB .* verified/);
  assert.equal(sha(back), sha(source));
  // Sparse stays sparse: no more allocated than the source (plus a little rounding).
  assert.ok(allocated(back) <= allocated(source) + 64 * 1024, `${allocated(back)} vs ${allocated(source)}`);
});

test('haven nbd copy: nbd → nbd (qemu-nbd → nbdkit), over old content', async () => {
  const a = emptyFile('nn-src.img');
  writeFileSync(a, readFileSync(source));
  const b = emptyFile('nn-dst.img');
  writeFileSync(b, Buffer.alloc(SIZE, 0xee)); // fully written: the zeroes must be written too
  const src = await qemuNbd('nn', a);
  const dst = await nbdkit('nn-k', b);
  const r = await ok('nbd', 'copy', src, dst, '--json', '--connections', '2');
  const res = (JSON.parse(r.stdout) as { result: { verified: boolean; zeroedBytes: number } }).result;
  assert.equal(res.verified, true);
  assert.ok(res.zeroedBytes > 0);
  assert.equal(sha(b), sha(source));
});

test('haven nbd copy onto an existing larger file: refused without --force, replaced with it', async () => {
  const f = join(tmp.path, 'existing.raw');
  writeFileSync(f, Buffer.alloc(SIZE + MiB, 0x77));
  const kept = sha(f);
  const refused = await haven('nbd', 'copy', source, f);
  assert.notEqual(refused.code, 0);
  assert.match(refused.stderr, /exists; give --force to overwrite it/);
  assert.equal(sha(f), kept);
  await ok('nbd', 'copy', source, f, '--progress', '--force');
  assert.equal(statSync(f).size, SIZE);
  assert.equal(sha(f), sha(source));
});

test('haven nbd info: human output, --json, --map and --list', async () => {
  const uri = await nbdkit('info', source);
  const human = await ok('nbd', 'info', uri);
  assert.match(human.stdout, /size: 33554432 \(32 MiB\)/);
  assert.match(human.stdout, /base:allocation/);
  const j = JSON.parse((await ok('nbd', 'info', uri, '--json', '--list', '--map')).stdout) as {
    size: number;
    exports: unknown[];
    structured: boolean;
    map: { context: string; extents: { offset: number; length: number; flags: number }[] };
  };
  assert.equal(j.size, SIZE);
  assert.equal(j.structured, true);
  assert.ok(Array.isArray(j.exports));
  assert.equal(j.map.context, 'base:allocation');
  const data = j.map.extents.filter((e) => e.flags === 0);
  assert.deepEqual(
    data.map((e) => [e.offset, e.length]),
    [
      [0, 64 * 1024],
      [5 * MiB, MiB],
      [30 * MiB, 12 * 1024],
    ],
  );
  const m = await ok('nbd', 'info', uri, '--map');
  assert.match(m.stdout, /map of base:allocation:\n\s+0\s+65536\s+0\s+data/);
});

test('errors are one line with a non-zero exit', async () => {
  const uri = await qemuNbd('known', emptyFile('known.img'));
  for (const args of [
    ['nbd', 'info', uri.replace('/known?', '/nosuch?')],
    ['nbd', 'info', 'nbd://'],
    ['nbd', 'copy', join(tmp.path, 'does-not-exist'), join(tmp.path, 'x')],
    ['nbd', 'copy', source, uri.replace('/known?', '/nosuch?')],
  ]) {
    const r = await haven(...args);
    assert.notEqual(r.code, 0, args.join(' '));
    assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
    assert.match(r.stderr, /^haven: /);
  }
});
