// The hypervisor's name is asked of the real qemu-system-x86_64 once per binary and then read
// from the site's cache file, until the binary on $PATH is another file.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { tempDir } from '../../../test/support/tmp.js';
import { hypervisorName } from './hypervisor.js';

test('the hypervisor version is cached per binary: the same file is not run again, another one is', (t) => {
  const tmp = tempDir();
  const path = process.env.PATH;
  t.after(() => {
    process.env.PATH = path;
    tmp.cleanup();
  });
  const cache = join(tmp.path, 'vms', 'hypervisor.json');
  const real = execFileSync('qemu-system-x86_64', ['--version'], { encoding: 'utf8' });
  const want = `QEMU ${/version ([\d.]+)/.exec(real)![1]}`;
  assert.equal(hypervisorName(cache), want);
  const stored = JSON.parse(readFileSync(cache, 'utf8')) as { key: string; name: string };
  assert.equal(stored.name, want);
  // Same binary: the cache answers (a name the binary would never give shows it was not run).
  writeFileSync(cache, JSON.stringify({ ...stored, name: 'QEMU from the cache' }));
  assert.equal(hypervisorName(cache), 'QEMU from the cache');
  // Another file first on $PATH: asked again.
  const bin = join(tmp.path, 'bin');
  mkdirSync(bin);
  symlinkSync(
    execFileSync('which', ['qemu-system-x86_64'], { encoding: 'utf8' }).trim(),
    join(bin, 'qemu-system-x86_64'),
  );
  process.env.PATH = `${bin}:${path}`;
  assert.equal(hypervisorName(cache), want);
  process.env.PATH = join(tmp.path, 'nowhere');
  assert.equal(hypervisorName(cache), 'QEMU (qemu-system-x86_64 not found)');
});
