import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { createConnection } from 'node:net';
import { join } from 'node:path';
import { nativeIo, type NativeIo } from '../../src/block/index.js';
import { serveImage } from '../../src/nbd/index.js';
import { disconnect, stressNbd } from '../support/nbd-stress.js';
import { tempDir } from '../support/tmp.js';

const MiB = 1024 * 1024;
const EAGAIN = 11;

/**
 * The served data path under load, checked byte for byte: two connections at QD64 with random
 * reads, writes, zeroes and flushes of 4 KiB to 1 MiB (structured replies on one, simple on the
 * other), each against a model of its half of the image; every reply's framing is checked as it
 * arrives (test/support/nbd-stress.ts). The clients stall: every so often one stops reading
 * until a sendfile job of the server has given up on its full socket (or finished), so that
 * replies are left half sent and finished through the socket's queue while other replies, reused
 * buffers and the next jobs wait — the state fio hit as "invalid reply magic" under CPU load.
 */
describe('NBD server data path under load', () => {
  it('two clients at QD64 with stalls read back exactly what they wrote, every reply well framed', async (t) => {
    const native = nativeIo() as (NativeIo & Record<string, unknown>) | null;
    if (!native) return t.skip('the native addon is not built');
    const tmp = tempDir();
    t.after(tmp.cleanup);
    const SIZE = 256 * MiB;
    const image = join(tmp.path, 'disk.img');
    const model = randomBytes(SIZE);
    writeFileSync(image, model);

    // The server's sendfile jobs, watched: a stalled client resumes when one ends.
    const sendFile = native.sendFile;
    let running = 0;
    let gaveUp = 0;
    let waiters: (() => void)[] = [];
    native.sendFile = (sockFd, fileFd, headers, headerLength, offsets, lengths, count, done) => {
      running++;
      sendFile.call(native, sockFd, fileFd, headers, headerLength, offsets, lengths, count, (sent, errno) => {
        running--;
        if (errno === EAGAIN) gaveUp++;
        done(sent, errno);
        // A stalled client waits for a job that gave up; one that finished lets it go only
        // when no other job is left running (none would give up).
        if (errno !== EAGAIN && running > 0) return;
        const w = waiters;
        waiters = [];
        for (const r of w) r();
      });
    };
    t.after(() => (native.sendFile = sendFile));

    const srv = await serveImage({ image, socket: join(tmp.path, 's.sock') });
    t.after(() => srv.stop());
    const path = (srv.address as { path: string }).path;
    const half = SIZE / 2;
    const results = await Promise.all(
      [0, 1].map(async (i) => {
        const socket = createConnection(path);
        await once(socket, 'connect');
        const r = await stressNbd({
          socket,
          exportName: srv.name,
          offset: i * half,
          model: model.subarray(i * half, (i + 1) * half),
          requests: 6000,
          depth: 64,
          structured: i === 0,
          seed: 0x5eed + i,
          stall: {
            every: 100,
            minPendingRead: 2 * MiB,
            until: () => (running > 0 ? new Promise<void>((r) => waiters.push(r)) : undefined),
          },
        });
        disconnect(socket);
        return r;
      }),
    );
    await srv.stop();
    for (const r of results) {
      assert.ok(r.reads > 1000 && r.writes > 1000, `a real mix: ${JSON.stringify(r)}`);
      assert.ok(r.stalls > 0, 'the clients stalled');
    }
    assert.ok(gaveUp > 0, 'a sendfile job gave up on a full socket at least once');
    // What the server wrote is on disk as the clients' model has it.
    assert.ok(readFileSync(image).equals(model), 'the image holds exactly what the clients wrote');
  });
});
