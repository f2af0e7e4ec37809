import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { tempDir } from '../../test/support/tmp.js';

/** Running and not a zombie (an exited child its new parent has not reaped holds nothing). */
function running(pid: number): boolean {
  try {
    return !/\) Z /.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
}

test('qemu-nbd started for an image ends when the process that started it is killed -9', async (t) => {
  const dir = tempDir();
  const image = join(dir.path, 'disk.qcow2');
  execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', image, '16M']);
  // A process that serves the image through qemu-nbd, says qemu-nbd's pid, and waits.
  const module = new URL('./qemu-nbd.js', import.meta.url).href;
  const holder = spawn(
    process.execPath,
    [
      '--input-type=module',
      '-e',
      `const { startQemuNbd } = await import(${JSON.stringify(module)});
       const q = await startQemuNbd(${JSON.stringify(image)}, 'qcow2');
       process.stdout.write(q.pid + '\\n');
       setInterval(() => {}, 1000);`,
    ],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  let qemuNbd = 0;
  t.after(() => {
    holder.kill('SIGKILL');
    if (qemuNbd && running(qemuNbd)) process.kill(qemuNbd, 'SIGKILL');
    dir.cleanup();
  });
  const [line] = (await once(holder.stdout, 'data')) as [Buffer];
  qemuNbd = Number(line.toString().trim());
  assert.ok(qemuNbd > 0 && running(qemuNbd));
  assert.match(readFileSync(`/proc/${qemuNbd}/cmdline`, 'utf8'), /^qemu-nbd\0/);

  holder.kill('SIGKILL');
  await once(holder, 'exit');
  const deadline = Date.now() + 10_000;
  while (running(qemuNbd)) {
    assert.ok(Date.now() < deadline, `qemu-nbd ${qemuNbd} outlived the process that started it`);
    await sleep(20);
  }
});
