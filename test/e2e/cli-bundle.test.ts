// The bundled CLI (scripts/build-cli.mjs, dist/cli/) is what bin/haven runs after a build: it
// must be current, and everything that found its files through import.meta.url (package.json,
// the native addons, zstd, the chunk worker, the console's files) must still find them.
import { strict as assert } from 'node:assert';
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { promisify } from 'node:util';
import { fileURLToPath } from 'node:url';
import { tempDir } from '../support/tmp.js';

const run = promisify(execFile);
const root = fileURLToPath(new URL('../../../', import.meta.url));
const bundle = join(root, 'dist/cli/main.js');
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');
// Runs the bundle itself (not bin/haven, which would fall back to the modules if it were stale).
const haven = async (...args: string[]) =>
  (await run(process.execPath, [bundle, ...args], { maxBuffer: 64 * 1024 * 1024 })).stdout;

let dir: ReturnType<typeof tempDir>;
before(() => (dir = tempDir('haven-bundle-')));
after(() => dir.cleanup());

test('the bundle is built from the current compile, and bin/haven picks it', () => {
  const bundled = statSync(bundle).mtimeMs;
  // tsc is incremental: its build info is written whenever it emits anything, main.js only when main.ts changed.
  assert.ok(
    bundled >= statSync(join(root, 'dist/.tsbuildinfo')).mtimeMs,
    'dist/cli is older than the last tsc output: run npm run build',
  );
  assert.ok(
    bundled >= statSync(join(root, 'dist/src/cli/main.js')).mtimeMs,
    'dist/cli is older than dist/src: run npm run build',
  );
  assert.ok(statSync(join(root, 'dist/cli/chunk-worker.js')).isFile());
});

test('the bundle reads its version from package.json', async () => {
  const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { version: string };
  assert.equal((await haven('--version')).trim(), pkg.version);
});

test('a backup through the bundle (chunk workers, zstd, SQLite, the native I/O) restores bit-identically', async () => {
  const data = join(dir.path, 'site');
  const repo = join(dir.path, 'repo');
  const image = join(dir.path, 'disk.img');
  const bytes = Buffer.alloc(8 * 1024 * 1024);
  for (let i = 0; i < bytes.length; i += 4096) bytes.fill(i % 251, i, i + 2048); // compressible, not zero
  writeFileSync(image, bytes);
  await haven('volume', 'import', image, '--name', 'v', '--data', data);
  await haven('repo', 'init', '--repo', repo);
  const job = JSON.parse(await haven('backup', 'volume:v', '--data', data, '--repo', repo, '--json')) as {
    state: string;
    result: { snapshot: string; stats: { newChunks: number } };
  };
  assert.equal(job.state, 'succeeded');
  assert.ok(job.result.stats.newChunks > 0, 'the chunk workers stored chunks');
  const out = join(dir.path, 'restored.img');
  await haven('restore', job.result.snapshot, '--repo', repo, '--to', out);
  assert.equal(sha(readFileSync(out)), sha(bytes));
  await haven('repo', 'verify', '--repo', repo);
});
