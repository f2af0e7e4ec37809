import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { writeFileSync } from 'node:fs';
import { tempDir } from '../../test/support/tmp.js';
import { isPromise } from '../common/index.js';
import { openRawFile } from './raw-file.js';
import { ThrottledDevice } from './throttle.js';

const KiB = 1024;
const MiB = 1024 * KiB;

function device(t: { after: (fn: () => void) => void }) {
  const dir = tempDir();
  t.after(dir.cleanup);
  const path = join(dir.path, 'd.img');
  writeFileSync(path, Buffer.alloc(16 * MiB, 7));
  return openRawFile(path);
}

test('within budget a request passes at once; beyond it requests wait in order', async (t) => {
  const dev = new ThrottledDevice(device(t), { iops: 100, burstSeconds: 0.1 });
  const buf = Buffer.alloc(4 * KiB);
  assert.equal(isPromise(dev.read(buf, 0)), false, 'the first request is within budget');
  const order: number[] = [];
  const started = performance.now();
  await Promise.all(
    Array.from({ length: 60 }, (_, i) =>
      Promise.resolve(dev.read(Buffer.alloc(4 * KiB), i * 4 * KiB)).then(() => order.push(i)),
    ),
  );
  const seconds = (performance.now() - started) / 1000;
  // 61 operations at 100/s with a 10-operation burst cannot take less than about 0.5 s.
  assert.ok(seconds >= 0.45, `60 operations at 100 IOPS took only ${seconds.toFixed(3)} s`);
  assert.deepEqual(
    order,
    Array.from({ length: 60 }, (_, i) => i),
    'first in, first out',
  );
  await dev.close();
});

test('bandwidth limit', async (t) => {
  const dev = new ThrottledDevice(device(t), { bytesPerSecond: 4 * MiB, burstSeconds: 0.25 });
  const started = performance.now();
  for (let i = 0; i < 8; i++) await dev.write(Buffer.alloc(MiB, i), i * MiB);
  const seconds = (performance.now() - started) / 1000;
  // 8 MiB at 4 MiB/s with a 1 MiB burst: at least 1.75 s.
  assert.ok(seconds >= 1.6, `8 MiB at 4 MiB/s took only ${seconds.toFixed(3)} s`);
  const back = Buffer.alloc(MiB);
  await dev.read(back, 7 * MiB);
  assert.ok(back.equals(Buffer.alloc(MiB, 7)));
  assert.throws(() => new ThrottledDevice(dev, { iops: 0 }), /positive/);
  await dev.close();
});
