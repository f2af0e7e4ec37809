// Recoverability checks on a real site in a temp data directory, without a guest: what start
// refuses before anything is recorded, and a check that cannot even find a backup is recorded
// failed (event recovery.check failed) with its isolated network torn down.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { tempDir } from '../../../test/support/tmp.js';
import { HavenError } from '../../common/index.js';
import { Repository } from '../../repository/index.js';
import { Site } from './site.js';

const code = (c: string, re?: RegExp) => (e: unknown) =>
  e instanceof HavenError && e.code === c && (!re || re.test(e.message));

test('checks: bad requests are refused up front; a check without a backup fails, recorded, torn down', async (t) => {
  const tmp = tempDir();
  const site = await Site.open({ dataDir: join(tmp.path, 'data'), name: 'unit', nbdListen: 'none' });
  t.after(async () => {
    await site.close();
    tmp.cleanup();
  });
  const repo = join(tmp.path, 'repo');
  await Repository.init(repo);
  const c = site.checks;
  const notExecutable = join(tmp.path, 'check.sh');
  writeFileSync(notExecutable, '#!/bin/sh\nexit 0\n', { mode: 0o644 });
  assert.throws(
    () => c.start('alice', { vm: 'web', repo, heartbeat: 'console:(' }),
    code('INVALID_ARGUMENT', /not a regular expression/),
  );
  assert.throws(
    () => c.start('alice', { vm: 'web', repo, heartbeat: 'tcp:22' }),
    code('INVALID_ARGUMENT', /names no host/),
  );
  assert.throws(
    () => c.start('alice', { vm: 'web', repo, script: notExecutable }),
    code('INVALID_ARGUMENT', /not an executable file/),
  );
  assert.throws(
    () => c.start('alice', { vm: 'web', repo, network: 'lab' }),
    code('NOT_FOUND', /no network lab/),
  );
  assert.throws(
    () => c.start('alice', { vm: 'web', repo, timeoutSeconds: 0 }),
    code('INVALID_ARGUMENT', /timeout/),
  );
  assert.throws(() => c.start('alice', { vm: 'bad name', repo }), code('INVALID_ARGUMENT'));
  assert.deepEqual(c.list(), []);
  assert.equal(c.last('web'), undefined);

  const job = await site.jobs.wait(c.start('alice', { vm: 'web', repo }).id);
  assert.equal(job.state, 'failed');
  assert.match(job.error!, /holds no VM backup of web/);
  assert.equal(job.errorCode, 'NOT_FOUND');
  const last = c.last('web')!;
  assert.equal(last.state, 'failed');
  assert.match(last.reason!, /holds no VM backup of web/);
  assert.equal(last.job, job.id);
  assert.ok(last.durationSeconds !== undefined && last.endedAt);
  assert.deepEqual(
    site.compute.listNetworks().map((n) => n.name),
    ['nat'],
    'the isolated network made for the check is gone',
  );
  const ev = site.events.query({ action: 'recovery.check' });
  assert.deepEqual(
    ev.map((e) => [e.target, e.outcome]),
    [['web', 'failed']],
  );
});
