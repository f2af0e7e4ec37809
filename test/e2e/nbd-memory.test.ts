import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { openRawFile } from '../../src/block/index.js';
import { NbdServer } from '../../src/nbd/index.js';
import { run } from '../support/proc.js';
import { tempDir } from '../support/tmp.js';

const MiB = 1024 * 1024;
const sha = (f: string) => createHash('sha256').update(readFileSync(f)).digest('hex');

/**
 * The server's memory bound: whatever the number of clients and requests in flight, the request
 * data it holds (write payloads, read reply buffers) stays within its budget — read from the
 * server's own counter, not from timing or RSS.
 */
describe('NBD server memory budget', () => {
  it('holds no more than maxBytesInFlight with many clients writing and reading large requests', async (t) => {
    const tmp = tempDir();
    t.after(tmp.cleanup);
    const SIZE = 32 * MiB;
    const image = join(tmp.path, 'disk.img');
    writeFileSync(image, Buffer.alloc(SIZE));
    const sources = [0, 1, 2].map((i) => {
      const f = join(tmp.path, `src${i}.img`);
      writeFileSync(f, randomBytes(SIZE));
      return f;
    });
    const LIMIT = 4 * MiB;
    const server = new NbdServer({ maxBytesInFlight: LIMIT });
    server.addExport({ name: 'disk', device: openRawFile(image) });
    const sock = join(tmp.path, 's.sock');
    await server.listen({ path: sock });
    t.after(() => server.close());
    const uri = `nbd+unix:///disk?socket=${sock}`;
    // Three nbdcopy processes of 4 connections each, 16 requests of 1 MiB in flight per
    // connection: 192 MiB asked for at once, against a 4 MiB budget.
    const copy = (from: string, to: string) =>
      run('nbdcopy', ['--connections=4', '--requests=16', '--request-size=1048576', from, to], {
        timeout: 120000,
      });
    await Promise.all(sources.map((s) => copy(s, uri)));
    const afterWrites = server.memoryStats();
    assert.ok(afterWrites.peakBytesInFlight > 0, 'the writes were counted');
    assert.ok(
      afterWrites.peakBytesInFlight <= LIMIT,
      `peak ${afterWrites.peakBytesInFlight} bytes held, over the ${LIMIT}-byte budget`,
    );
    // The image holds one of the sources whole (each copy wrote all of it; the last one's blocks win per request).
    const outs = [0, 1, 2].map((i) => join(tmp.path, `out${i}.img`));
    await Promise.all(outs.map((o) => copy(uri, o)));
    const first = sha(outs[0]!);
    for (const o of outs) assert.equal(sha(o), first, 'every reader saw the same image');
    assert.equal(sha(image), first, 'the readers saw the image as it is on disk');
    const stats = server.memoryStats();
    assert.ok(stats.peakBytesInFlight <= LIMIT, `peak ${stats.peakBytesInFlight} over ${LIMIT}`);
    assert.equal(stats.bytesInFlight, 0, 'everything was given back once the clients were done');
  });
});
