// The CLI with --data: the site of the data directory opened in the command's own process,
// through the same API as the daemon. Offline work leaves the same jobs and audit entries, which
// the daemon started on that directory afterwards shows; a daemon holding the directory locks
// the CLI out, naming it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { HAVEN_BIN } from '../support/proc.js';
import { startDaemon } from '../support/site.js';
import { tempDir } from '../support/tmp.js';

const run = promisify(execFile);

test('--data: offline jobs and audit are the site’s; --no-wait is refused; a running daemon locks the CLI out', async (t) => {
  const tmp = tempDir('haven-cli-data-');
  t.after(tmp.cleanup);
  const data = join(tmp.path, 'data');
  const env: NodeJS.ProcessEnv = { ...process.env, HAVEN_CONFIG: join(tmp.path, 'none.json') };
  delete env.HAVEN_DATA;
  delete env.HAVEN_LOG_LEVEL;
  const haven = async (...args: string[]) => run(HAVEN_BIN, args, { env, timeout: 120_000 });
  const fails = async (...args: string[]) => {
    try {
      await haven(...args);
    } catch (e) {
      return (e as { stderr: string }).stderr;
    }
    throw new Error(`haven ${args.join(' ')} succeeded`);
  };

  const created = await haven('volume', 'create', 'v1', '--size', '8M', '--data', data);
  assert.equal(created.stdout, 'created volume v1 (8.0 MiB) in pool default\n');
  assert.equal(created.stderr, '', 'the local site says nothing of its own on stderr');
  const image = join(tmp.path, 'disk.img');
  writeFileSync(image, Buffer.alloc(1024 * 1024, 7));
  const job = JSON.parse(
    (await haven('volume', 'import', image, '--name', 'v2', '--data', data, '--json')).stdout,
  ) as { id: string; kind: string; state: string; actor: string; result: { dataBytes: number } };
  assert.equal(job.kind, 'volume.import');
  assert.equal(job.state, 'succeeded');
  assert.equal(job.result.dataBytes, 1024 * 1024);
  assert.ok(job.id && job.actor, 'a job of the site: it has an id and an actor');
  assert.match(
    await fails('snapshot', 'create', 'v1', 's1', '--no-wait', '--data', data),
    /--no-wait needs the site daemon: with --data .* the job runs in this command's process/,
  );
  await haven('bitmap', 'add', 'v1', 'b0', '--data', data);
  assert.match(await fails('bitmap', 'add', 'v1', 'b0', '--data', data), /conflict: .*b0 already exists/);

  // The daemon on the same directory has the offline job and the audit of what was done and refused.
  const daemon = await startDaemon(data);
  t.after(() => daemon.stop());
  const denv = { ...env, HAVEN_DATA: data };
  const viaDaemon = async (...args: string[]) => (await run(HAVEN_BIN, args, { env: denv })).stdout;
  const shown = JSON.parse(await viaDaemon('job', 'show', job.id, '--json')) as {
    kind: string;
    target: string;
  };
  assert.deepEqual([shown.kind, shown.target], ['volume.import', 'v2']);
  const events = JSON.parse(await viaDaemon('event', 'list', '--json')) as {
    action: string;
    outcome: string;
  }[];
  const seen = events.map((e) => `${e.action} ${e.outcome}`);
  for (const want of ['volume.create ok', 'bitmap.add ok', 'bitmap.add failed'])
    assert.ok(seen.includes(want), `${want} in ${seen.join('; ')}`);
  // Meanwhile the daemon holds the directory: --data is refused, naming it.
  assert.match(await fails('volume', 'list', '--data', data), new RegExp(data.replace(/[/.]/g, '\\$&')));
  assert.match(await viaDaemon('bitmap', 'list', 'v1'), /b0 +64\.0 KiB/);
});
