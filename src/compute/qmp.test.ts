import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { tempDir } from '../../test/support/tmp.js';
import { start, waitForListen } from '../../test/support/proc.js';
import { QmpClient } from './qmp.js';

test('QMP against a real QEMU: greeting, commands, errors, events, close', async (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  const sock = join(dir.path, 'qmp.sock');
  const qemu = start('qemu-system-x86_64', [
    '-machine',
    'none',
    '-display',
    'none',
    '-nodefaults',
    '-S',
    '-qmp',
    `unix:${sock},server=on,wait=off`,
  ]);
  t.after(() => qemu.stop(0));
  await waitForListen({ path: sock }, 10000, qemu);
  const qmp = await QmpClient.connect(sock);
  assert.ok((qmp.version?.major ?? 0) >= 7, JSON.stringify(qmp.version));
  assert.deepEqual(await qmp.execute('query-status'), {
    status: 'prelaunch',
    singlestep: false,
    running: false,
  });
  await assert.rejects(qmp.execute('no-such-command'), /QMP no-such-command failed: CommandNotFound/);
  const resumed = qmp.waitForEvent('RESUME');
  await qmp.execute('cont');
  assert.equal((await resumed).event, 'RESUME');
  const stopped = qmp.waitForEvent('STOP');
  await qmp.execute('stop');
  await stopped;
  const closed = new Promise((r) => qmp.once('close', r));
  await qmp.execute('quit').catch(() => undefined);
  await closed;
  await assert.rejects(qmp.execute('query-status'), /closed/);
});
