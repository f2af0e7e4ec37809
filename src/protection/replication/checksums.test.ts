// Checksums per extent on real volumes: a 4 GiB thin volume is summed reading only its allocated
// extents (holes get the known sum of zeroes), and the sums are those of the bytes; the target's
// checksums name a missing checkpoint; differing extents are reported merged.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { PassThroughDevice } from '../../block/index.js';
import { StorageService } from '../../storage/index.js';
import { tempDir } from '../../../test/support/tmp.js';
import {
  DIGEST_BYTES,
  checksumDevice,
  checksumReplica,
  decodeChecksums,
  sumAt,
  zeroSum,
} from './checksums.js';
import { diffSums } from './verify.js';

const MiB = 1024 * 1024;

/** A volume's device that counts the bytes read through it. */
class Counting extends PassThroughDevice {
  readBytes = 0;
  override read(buf: Uint8Array, offset: number) {
    this.readBytes += buf.length;
    return super.read(buf, offset);
  }
}

test('a 4 GiB thin volume is summed reading only its allocated extents; the sums are the bytes', async (t) => {
  const dir = tempDir();
  const storage = StorageService.open(join(dir.path, 's'));
  t.after(() => {
    storage.close();
    dir.cleanup();
  });
  storage.createPool('p', {});
  const SIZE = 4096 * MiB;
  storage.createVolume('v', SIZE, 'p');
  const dev = storage.openDevice('v');
  const writes = [0, 7 * MiB + 4096, 2048 * MiB - 2048, SIZE - 4096];
  for (const [i, at] of writes.entries()) await dev.write(Buffer.alloc(4096, i + 1), at);
  const counting = new Counting(storage.openDevice('v', { readOnly: true }));
  const started = performance.now();
  const sums = await checksumDevice(counting, MiB);
  t.diagnostic(`4 GiB thin volume summed in ${Math.round(performance.now() - started)} ms`);
  assert.equal(sums.length, 4096 * DIGEST_BYTES);
  // Five extents hold data (one write straddles two): only they were read.
  const dataExtents = new Set(writes.flatMap((at) => [Math.floor(at / MiB), Math.floor((at + 4095) / MiB)]));
  assert.equal(counting.readBytes, dataExtents.size * MiB);
  const b = Buffer.alloc(MiB);
  for (let i = 0; i < 4096; i++) {
    const expected = dataExtents.has(i)
      ? (await dev.read(b, i * MiB), createHash('sha256').update(b).digest())
      : zeroSum(MiB);
    assert.ok(sumAt(sums, i).equals(expected), `extent ${i}`);
  }
});

test("the target's checksums: of a checkpoint's snapshots, a missing checkpoint named; differences merged per volume", async (t) => {
  const dir = tempDir();
  const storage = StorageService.open(join(dir.path, 's'));
  t.after(() => {
    storage.close();
    dir.cleanup();
  });
  storage.createPool('p', {});
  const SIZE = 8 * MiB + 4096; // a short last extent
  for (const v of ['ra', 'rb']) storage.createVolume(v, SIZE, 'p');
  await storage.openDevice('ra').write(Buffer.alloc(MiB, 1), 0);
  for (const v of ['ra', 'rb']) storage.snapshot(v, 'cp-7');
  const at7 = await checksumReplica(storage, ['ra', 'rb'], 7, MiB);
  // Changed after the checkpoint: its sums do not move; the live volumes' do.
  await storage.openDevice('rb').write(Buffer.alloc(4096, 2), 3 * MiB);
  await storage.openDevice('rb').write(Buffer.alloc(4096, 2), 4 * MiB);
  await storage.openDevice('rb').write(Buffer.alloc(4096, 2), SIZE - 4096);
  assert.deepEqual(await checksumReplica(storage, ['ra', 'rb'], 7, MiB), at7);
  const live = await checksumReplica(storage, ['ra', 'rb'], undefined, MiB);
  const sizes = [SIZE, SIZE];
  const d = diffSums(decodeChecksums(at7, sizes, MiB), decodeChecksums(live, sizes, MiB), sizes, MiB, [
    'a',
    'b',
  ]);
  assert.deepEqual(d, [
    { volume: 1, name: 'b', offset: 3 * MiB, length: 2 * MiB },
    { volume: 1, name: 'b', offset: 8 * MiB, length: 4096 },
  ]);
  await assert.rejects(checksumReplica(storage, ['ra', 'rb'], 9, MiB), {
    code: 'NOT_FOUND',
    message: /replica volume ra has no checkpoint 9/,
  });
  assert.throws(() => decodeChecksums(at7, [SIZE, SIZE + MiB], MiB), {
    code: 'CONFLICT',
    message: /replica volume 1 of the group has \d+ bytes and its source \d+/,
  });
});
