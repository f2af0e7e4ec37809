// The test guest and its harness, end to end: the guest boots under QEMU TCG, its agent writes
// and reads disks, and the host checks every reported write on the image files.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { openSync, readSync, closeSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { tempDir } from '../support/tmp.js';
import { freePort, start, waitForListen, type Running } from '../support/proc.js';
import {
  ensureGuest,
  fileBytes,
  GuestError,
  launchGuest,
  makeBlankDisk,
  makeExt4Disk,
  patternBytes,
  sha256,
  type Guest,
  type GuestWrite,
} from '../support/guest.js';

const MiB = 1024 * 1024;

function readAt(path: string, offset: number, length: number): Buffer {
  const fd = openSync(path, 'r');
  try {
    const buf = Buffer.alloc(length);
    const n = readSync(fd, buf, 0, length, offset);
    return buf.subarray(0, n);
  } finally {
    closeSync(fd);
  }
}

/** Every write is on the image, byte for byte, where later writes to the same place did not replace it. */
function assertWritesOnImage(image: string, seed: number, writes: GuestWrite[]) {
  assert.ok(writes.length > 0, 'no writes reported');
  const latest = new Map<number, GuestWrite>();
  for (const w of writes) latest.set(w.offset, w);
  for (const w of latest.values()) {
    const expected = patternBytes(seed, w.seq, w.offset, w.length);
    assert.equal(sha256(expected), w.sha256, `guest and host disagree on the bytes of write ${w.seq}`);
    assert.ok(
      readAt(image, w.offset, w.length).equals(expected),
      `write ${w.seq} at ${w.offset} is not on ${image}`,
    );
  }
}

describe('test guest', () => {
  const tmp = tempDir('haven-guest-');
  const guests: Guest[] = [];
  const launch = (...a: Parameters<typeof launchGuest>) => {
    const g = launchGuest(...a);
    guests.push(g);
    return g;
  };

  before(() => ensureGuest());
  after(async () => {
    await Promise.all(guests.map((g) => g.kill()));
    tmp.cleanup();
  });

  it('write-pattern on a raw disk: every reported write is on the image; verify-pattern finds corruption', async () => {
    const image = join(tmp.path, 'raw.img');
    const size = 64 * MiB;
    await makeBlankDisk(image, size);
    const seed = 11;
    const at = `0:4096,${MiB + 123}:70000,${32 * MiB}:${MiB},${size - 512}:512`;
    const started = Date.now();
    const g = launch({ drives: [{ path: image }], command: `write-pattern disk=vda seed=${seed} at=${at}` });
    const ready = await g.ready();
    const bootMs = Date.now() - started;
    assert.deepEqual(ready.disks, ['vda']);
    const [done] = (await g.commandLineDone()).slice(-1);
    assert.equal(done?.writes, 4);
    const writes = g.writes();
    assert.deepEqual(
      writes.map((w) => [w.seq, w.offset, w.length]),
      [
        [0, 0, 4096],
        [1, MiB + 123, 70000],
        [2, 32 * MiB, MiB],
        [3, size - 512, 512],
      ],
    );
    // Durable when reported: on the image while the guest still runs.
    assertWritesOnImage(image, seed, writes);

    // More writes over the console, continuing the sequence; then verify them all in the guest.
    const more = await g.run(
      `write-pattern disk=/dev/vda seed=${seed} count=3 len=8192 start=${8 * MiB} seq=4`,
    );
    assert.deepEqual(
      more.results.filter((r) => r.event === 'write').map((r) => r.seq),
      [4, 5, 6],
    );
    assertWritesOnImage(image, seed, g.writes());
    const ok = await g.run(`verify-pattern disk=vda seed=${seed} at=${at}`);
    assert.equal(ok.done.mismatches, 0);
    assert.equal(ok.done.checked, 4);

    // The host damages one byte; the guest reports it by offset.
    const bad = MiB + 123 + 5000;
    const fd = openSync(image, 'r+');
    writeSync(fd, Buffer.from('X'), 0, 1, bad);
    closeSync(fd);
    const check = await g.run(`verify-pattern disk=vda seed=${seed} at=${at}`);
    assert.equal(check.done.mismatches, 1);
    assert.deepEqual(
      check.results.filter((r) => r.event === 'mismatch').map((r) => [r.seq, r.offset, r.writeOffset]),
      [[1, bad, MiB + 123]],
    );
    await g.poweroff();
    console.log(`# boot to ready: ${bootMs} ms (guest uptime ${String(ready.uptime)} s)`);
  });

  it('fs on an ext4 disk: files written and fsynced, checked with debugfs and e2fsck', async () => {
    const image = join(tmp.path, 'ext4.img');
    const hello = 'hello from the host\n';
    await makeExt4Disk(image, 32 * MiB, { 'hello.txt': hello, 'sub/dir/x.bin': Buffer.alloc(3000, 7) });
    const seed = 5;
    const files: [string, number][] = [
      ['a.txt', 5000],
      ['dir/b.bin', 200_000],
      ['empty', 0],
    ];
    const g = launch({
      drives: [{ path: image }],
      command: [
        `fs disk=vda seed=${seed} write=${files.map(([p, n]) => `${p}:${n}`).join(',')} read=hello.txt,sub/dir/x.bin`,
        'poweroff',
      ],
    });
    await g.ready();
    const exit = await g.exit;
    assert.equal(exit.code, 0, g.console());
    const done = g.results.find((r) => r.event === 'done' && r.cmd === 'fs');
    assert.ok(done, `no done line\n${g.console()}`);
    const reported = new Map(g.results.filter((r) => r.event === 'file').map((r) => [r.path, r]));
    assert.equal(reported.get('hello.txt')?.sha256, sha256(hello));
    assert.equal(reported.get('sub/dir/x.bin')?.sha256, sha256(Buffer.alloc(3000, 7)));
    for (const [path, length] of files) {
      const expected = fileBytes(seed, path, length);
      assert.equal(reported.get(path)?.sha256, sha256(expected), `guest hash of ${path}`);
      const onDisk = execFileSync('debugfs', ['-R', `cat /${path}`, image], {
        stdio: ['ignore', 'pipe', 'ignore'],
      });
      assert.equal(sha256(onDisk), sha256(expected), `debugfs content of ${path}`);
    }
    execFileSync('e2fsck', ['-fn', image], { stdio: 'pipe' }); // throws on any inconsistency
  });

  it('stream: stopped over the console, every reported write is on disk', async () => {
    const image = join(tmp.path, 'stream.img');
    await makeBlankDisk(image, 16 * MiB);
    const seed = 9;
    const g = launch({ drives: [{ path: image }] });
    // Sent at once: the harness holds it back until the agent is ready.
    // 64 slots of 4 KiB at 1 MiB: a few seconds at this rate wrap around, so later writes replace earlier.
    g.send(`stream disk=vda seed=${seed} len=4096 start=1M slots=64 rate=50`);
    await g.waitFor((r) => r.event === 'write' && (r.seq as number) >= 5, { what: '5 stream writes' });
    await new Promise((r) => setTimeout(r, 3000));
    const stopped = await g.run('stop');
    const streamDone = stopped.results.find((r) => r.event === 'done' && r.cmd === 'stream');
    assert.ok(streamDone, g.console());
    const writes = g.writes();
    assert.equal(streamDone.writes, writes.length, 'the guest reports every completed write');
    assert.deepEqual(
      writes.map((w) => w.seq),
      writes.map((_, i) => i),
    );
    for (const w of writes) assert.equal(w.offset, MiB + (w.seq % 64) * 4096);
    assertWritesOnImage(image, seed, writes);
    await g.poweroff();
    console.log(`# stream: ${writes.length} writes in ~3 s`);
  });

  it('drives over NBD: nbd+unix:// and nbd:// URIs, writes on the exported images', async () => {
    const unixImage = join(tmp.path, 'nbd-unix.img');
    const tcpImage = join(tmp.path, 'nbd-tcp.img');
    await makeBlankDisk(unixImage, 8 * MiB);
    await makeBlankDisk(tcpImage, 8 * MiB);
    const socket = join(tmp.path, 'nbd.sock');
    const port = await freePort();
    const servers: Running[] = [
      start('qemu-nbd', ['-t', '-f', 'raw', '-x', 'u', '-k', socket, unixImage]),
      start('qemu-nbd', ['-t', '-f', 'raw', '-x', 't', '-b', '127.0.0.1', '-p', String(port), tcpImage]),
    ];
    try {
      await waitForListen({ path: socket }, 10_000, servers[0]);
      await waitForListen({ port }, 10_000, servers[1]);
      const g = launch({
        drives: [{ uri: `nbd+unix:///u?socket=${socket}` }, { uri: `nbd://127.0.0.1:${port}/t` }],
        command: [
          'write-pattern disk=vda seed=1 at=0:4096,4M:65536',
          'write-pattern disk=vdb seed=2 count=2 len=512',
        ],
      });
      await g.commandLineDone(2);
      const writes = g.writes();
      assertWritesOnImage(
        unixImage,
        1,
        writes.filter((w) => w.disk === '/dev/vda'),
      );
      assertWritesOnImage(
        tcpImage,
        2,
        writes.filter((w) => w.disk === '/dev/vdb'),
      );
      await g.poweroff();
    } finally {
      await Promise.all(servers.map((s) => s.stop()));
    }
  });

  it('a failing guest gives clear errors with its console, never a hang', async () => {
    const g = launch({ command: 'frobnicate now=1' });
    await assert.rejects(g.commandLineDone(), (e: unknown) => {
      assert.ok(e instanceof GuestError);
      assert.match(e.message, /unknown instruction: frobnicate/);
      assert.match(e.message, /--- guest console ---[\s\S]*HAVEN-GUEST/);
      return true;
    });
    await assert.rejects(g.run('write-pattern disk=vdc seed=1 at=0:512'), /no such disk: \/dev\/vdc/);
    await assert.rejects(g.run('verify-pattern seed=1 at=0:512'), /missing argument 'disk'/);
    await assert.rejects(g.run('stream disk=vda colour=red'), /unknown argument 'colour'/);
    await g.run('ping'); // the agent carries on after errors
    // A wait that is not satisfied times out, kills QEMU and says what it waited for.
    await assert.rejects(
      g.waitFor((r) => r.event === 'never', { timeoutMs: 300, from: g.results.length, what: 'nothing' }),
      /timed out after 300 ms waiting for nothing; qemu killed/,
    );
    const exit = await g.exit;
    assert.equal(exit.signal, 'SIGKILL');
    assert.throws(() => g.send('ping'), /the guest has exited/);

    // A missing image: QEMU refuses to start, and the error says why.
    const missing = launch({ drives: [{ path: join(tmp.path, 'no-such.img') }] });
    await assert.rejects(missing.ready(), /guest exited before the ready line[\s\S]*no-such\.img/);
  });
});
