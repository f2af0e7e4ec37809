import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { tempDir } from '../../test/support/tmp.js';
import { lockDirectory, processStartTime } from './dir-lock.js';

const bootId = () => readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();

/** A live process that is not Haven: the pid a stale lock may name after pid reuse. */
function stranger(t: { after: (fn: () => unknown) => void }) {
  const child = spawn('sleep', ['600'], { stdio: 'ignore' });
  t.after(async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGKILL');
      await once(child, 'exit');
    }
  });
  return child.pid!;
}

test('the lock names its holder by pid, start time and boot id; a second taker is refused', (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  const lock = lockDirectory(dir.path);
  const [pid, start, boot] = readFileSync(join(dir.path, '.lock'), 'utf8').trim().split(' ');
  assert.equal(Number(pid), process.pid);
  assert.equal(start, processStartTime(process.pid));
  assert.equal(boot, bootId());
  assert.throws(() => lockDirectory(dir.path), new RegExp(`in use by process ${process.pid}`));
  lock.release();
  lockDirectory(dir.path).release();
});

test('a stale lock whose pid now belongs to an unrelated process is taken over', (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  const pid = stranger(t);
  const start = processStartTime(pid)!;
  const path = join(dir.path, '.lock');

  // Another process started at another time held that pid: the lock is stale.
  writeFileSync(path, `${pid} ${Number(start) - 1} ${bootId()}\n`);
  lockDirectory(dir.path).release();

  // The same pid and start time, but from an earlier boot: stale too.
  writeFileSync(path, `${pid} ${start} 00000000-0000-0000-0000-000000000000\n`);
  lockDirectory(dir.path).release();

  // That very process (pid, start time, boot): it holds the directory.
  writeFileSync(path, `${pid} ${start} ${bootId()}\n`);
  assert.throws(() => lockDirectory(dir.path), new RegExp(`in use by process ${pid}`));

  // A lock of the older form (the pid only) is judged by the pid alone.
  writeFileSync(path, `${pid}\n`);
  assert.throws(() => lockDirectory(dir.path), new RegExp(`in use by process ${pid}`));
});

test('a lock whose process has exited is taken over', async (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  const child = spawn('true', { stdio: 'ignore' });
  const pid = child.pid!;
  await once(child, 'exit');
  writeFileSync(join(dir.path, '.lock'), `${pid} 1 ${bootId()}\n`);
  lockDirectory(dir.path).release();
});
