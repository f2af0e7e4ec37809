import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { HavenError } from '../../common/index.js';
import { EXTENT_HOLE, EXTENT_ZERO, type Extent } from '../../block/index.js';
import { tempDir } from '../../../test/support/tmp.js';
import { freePort, run, start, waitForListen, type Running } from '../../../test/support/proc.js';
import { makeTestPki } from '../../../test/support/tls.js';
import { connectNbd, type NbdClientDevice } from './device.js';
import { NbdConnection } from './connection.js';
import { negotiate } from './handshake.js';
import { parseNbdUri } from './uri.js';

const MiB = 1024 * 1024;
const SIZE = 16 * MiB;
const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

const tmp = tempDir('haven-nbd-client-');
after(() => tmp.cleanup());

interface Peer {
  uri: string;
  file: string;
  proc: Running;
}

async function qemuNbd(name: string, extra: string[] = [], fmt = 'raw', file?: string): Promise<Peer> {
  const f = file ?? join(tmp.path, `${name}.img`);
  if (!file) {
    writeFileSync(f, '');
    truncateSync(f, SIZE);
  }
  const sock = join(tmp.path, `${name}.sock`);
  const proc = start('qemu-nbd', [
    '-f',
    fmt,
    '-x',
    name,
    `--socket=${sock}`,
    '-t',
    '--shared=8',
    ...extra,
    f,
  ]);
  await waitForListen({ path: sock }, 10000, proc);
  return { uri: `nbd+unix:///${name}?socket=${sock}`, file: f, proc };
}

async function nbdkit(name: string, extra: string[] = []): Promise<Peer> {
  const f = join(tmp.path, `${name}.img`);
  writeFileSync(f, '');
  truncateSync(f, SIZE);
  const sock = join(tmp.path, `${name}.sock`);
  const proc = start('nbdkit', ['-f', '-U', sock, '--exit-with-parent', ...extra, 'file', f]);
  await waitForListen({ path: sock }, 10000, proc);
  return { uri: `nbd+unix:///?socket=${sock}`, file: f, proc };
}

/** `qemu-img map` of a raw file as extents with base:allocation flags, merged. */
async function qemuImgMap(file: string): Promise<Extent[]> {
  const { stdout } = await run('qemu-img', ['map', '-U', '-f', 'raw', '--output=json', file]);
  const raw = JSON.parse(stdout) as { start: number; length: number; data: boolean; zero: boolean }[];
  return merge(
    raw.map((e) => ({
      offset: e.start,
      length: e.length,
      flags: (e.data ? 0 : EXTENT_HOLE) | (e.zero ? EXTENT_ZERO : 0),
    })),
  );
}

function merge(es: Extent[]): Extent[] {
  const out: Extent[] = [];
  for (const e of es) {
    const last = out.at(-1);
    if (last && last.flags === e.flags && last.offset + last.length === e.offset) last.length += e.length;
    else out.push({ ...e });
  }
  return out;
}

async function fullMap(d: NbdClientDevice): Promise<Extent[]> {
  const all: Extent[] = [];
  for (let at = 0; at < d.size;) {
    const es = await d.blockStatus(at, d.size - at);
    all.push(...es);
    at = es.at(-1)!.offset + es.at(-1)!.length;
  }
  return merge(all);
}

const isErr = (code: string, re?: RegExp) => (e: unknown) =>
  e instanceof HavenError && e.code === code && (!re || re.test(e.message));

for (const kind of ['qemu-nbd', 'nbdkit'] as const) {
  describe(`client against ${kind}`, () => {
    let peer: Peer;
    let dev: NbdClientDevice;
    before(async () => {
      peer = kind === 'qemu-nbd' ? await qemuNbd('rw') : await nbdkit('rw');
      dev = await connectNbd(peer.uri);
    });
    after(async () => {
      await dev?.close();
      await peer?.proc.stop();
    });

    test('handshake: size, structured replies, base:allocation', () => {
      assert.equal(dev.size, SIZE);
      assert.equal(dev.readOnly, false);
      assert.ok(dev.info.structured);
      assert.deepEqual(dev.info.contexts, ['base:allocation']);
      assert.ok(dev.info.flagNames.includes('flush'));
    });

    test('writes and reads round-trip, verified by hash against the file itself', async () => {
      const a = randomBytes(MiB + 123);
      const b = randomBytes(5 * MiB);
      const c = [randomBytes(4096), randomBytes(10), randomBytes(70000)];
      await Promise.all([dev.write(a, 4096), dev.write(b, 8 * MiB), dev.write(c, 3 * MiB + 1)]);
      await dev.flush();
      const whole = new Uint8Array(SIZE);
      await dev.read(whole, 0);
      const file = readFileSync(peer.file);
      assert.equal(sha(whole), sha(file));
      assert.equal(sha(whole.subarray(4096, 4096 + a.length)), sha(a));
      assert.equal(sha(whole.subarray(8 * MiB, 13 * MiB)), sha(b));
      assert.equal(sha(whole.subarray(3 * MiB + 1, 3 * MiB + 1 + 74106)), sha(Buffer.concat(c)));
    });

    test('many small requests in flight at once (more than the window)', async () => {
      const bufs = Array.from({ length: 300 }, () => new Uint8Array(4096));
      await Promise.all(bufs.map((b, i) => dev.read(b, (i * 4096 * 7) % (SIZE - 4096))));
      const file = readFileSync(peer.file);
      bufs.forEach((b, i) => {
        const o = (i * 4096 * 7) % (SIZE - 4096);
        assert.equal(sha(b), sha(file.subarray(o, o + 4096)));
      });
    });

    test('block status after writes, write zeroes and trim matches qemu-img map', async () => {
      await dev.writeZeroes(8 * MiB, MiB); // punches a hole (no NO_HOLE)
      await dev.writeZeroes(9 * MiB, 64 * 1024, { noHole: true });
      await dev.trim(10 * MiB, 512 * 1024);
      await dev.discard(11 * MiB, 256 * 1024);
      await dev.flush();
      const zero = new Uint8Array(MiB);
      await dev.read(zero, 8 * MiB);
      assert.ok(zero.every((x) => x === 0));
      const z2 = new Uint8Array(512 * 1024);
      await dev.read(z2, 10 * MiB);
      assert.ok(z2.every((x) => x === 0));
      assert.deepEqual(await fullMap(dev), await qemuImgMap(peer.file));
    });

    test('a read past the end is OUT_OF_RANGE, from the device and from the server, and the connection stays usable', async () => {
      await assert.rejects(dev.read(new Uint8Array(8192), SIZE - 4096), isErr('OUT_OF_RANGE', /beyond/));
      await assert.rejects(dev.write(new Uint8Array(1), SIZE), isErr('OUT_OF_RANGE'));
      // Straight to the server, bypassing the device's own check.
      const n = await negotiate(parseNbdUri(peer.uri));
      const c = new NbdConnection(n, { label: peer.uri });
      await assert.rejects(
        c.read(new Uint8Array(8192), SIZE - 4096),
        isErr('OUT_OF_RANGE', /EINVAL|EIO|beyond/),
      );
      const ok = new Uint8Array(4096);
      await c.read(ok, 4096);
      assert.equal(sha(ok), sha(readFileSync(peer.file).subarray(4096, 8192)));
      await c.disconnect();
      await dev.read(new Uint8Array(10), 0);
    });

    test('fast zero is refused with UNSUPPORTED or done; fua writes work', async () => {
      await dev.write(new Uint8Array(4096).fill(9), 0, { fua: true });
      try {
        await dev.writeZeroes(0, 4096, { fastZero: true });
      } catch (e) {
        assert.ok(isErr('UNSUPPORTED')(e), String(e));
      }
    });
  });
}

test('an unknown export is refused with NOT_FOUND naming the export and the server message', async () => {
  const peer = await qemuNbd('known');
  try {
    const uri = peer.uri.replace('/known?', '/nosuch?');
    await assert.rejects(connectNbd(uri), isErr('NOT_FOUND', /export 'nosuch'.*unknown export/));
  } finally {
    await peer.proc.stop();
  }
});

test('read-only exports refuse writes with READ_ONLY', async () => {
  const peer = await qemuNbd('ro', ['-r']);
  const dev = await connectNbd(peer.uri, { connections: 3 });
  try {
    assert.equal(dev.readOnly, true);
    assert.equal(dev.info.connections, 3);
    await assert.rejects(dev.write(new Uint8Array(1), 0), isErr('READ_ONLY'));
    await dev.read(new Uint8Array(3 * MiB), 0);
  } finally {
    await dev.close();
    await peer.proc.stop();
  }
});

test('the server dying mid-run rejects every pending request with a clear IO error', async () => {
  const peer = await qemuNbd('dies');
  const dev = await connectNbd(peer.uri, { maxRequests: 4 });
  const pending = Array.from({ length: 200 }, (_, i) =>
    dev.read(new Uint8Array(64 * 1024), (i * 65536) % SIZE),
  );
  peer.proc.child.kill('SIGKILL');
  const results = await Promise.allSettled(pending);
  const failed = results.filter((r) => r.status === 'rejected');
  assert.ok(failed.length > 0);
  for (const r of failed)
    assert.ok(isErr('IO', /closed the connection|connection error/)((r as PromiseRejectedResult).reason));
  await assert.rejects(dev.read(new Uint8Array(1), 0), isErr('IO'));
  await dev.close();
  await peer.proc.stop();
});

test('dirty bitmap context from qemu-nbd shows exactly the written extent', async () => {
  const f = join(tmp.path, 'bitmap.qcow2');
  await run('qemu-img', ['create', '-q', '-f', 'qcow2', f, '16M']);
  await run('qemu-img', ['bitmap', '--add', '--enable', f, 'b0']);
  await run('qemu-io', ['-c', 'write -P 1 1M 64k', f]);
  const peer = await qemuNbd('bm', ['-B', 'b0'], 'qcow2', f);
  try {
    const dev = await connectNbd(peer.uri, { bitmap: 'b0' });
    assert.deepEqual(dev.info.contexts.sort(), ['base:allocation', 'qemu:dirty-bitmap:b0']);
    const all: Extent[] = [];
    for (let at = 0; at < dev.size;) {
      const es = await dev.dirtyStatus(at, dev.size - at);
      all.push(...es);
      at = es.at(-1)!.offset + es.at(-1)!.length;
    }
    assert.deepEqual(
      merge(all).filter((e) => e.flags === 1),
      [{ offset: MiB, length: 64 * 1024, flags: 1 }],
    );
    const data = new Uint8Array(64 * 1024);
    await dev.read(data, MiB);
    assert.ok(data.every((x) => x === 1));
    await dev.close();
    await assert.rejects(connectNbd(peer.uri, { bitmap: 'nope' }), isErr('NOT_FOUND', /dirty-bitmap:nope/));
  } finally {
    await peer.proc.stop();
  }
});

describe('TLS', () => {
  let pki: ReturnType<typeof makeTestPki>;
  before(() => {
    mkdirSync(join(tmp.path, 'pki'));
    pki = makeTestPki(join(tmp.path, 'pki'));
  });
  const creds = () => ({
    ca: readFileSync(pki.caCert),
    cert: readFileSync(pki.clientCert),
    key: readFileSync(pki.clientKey),
  });

  test('against qemu-nbd with x509 credentials (nbds://)', async () => {
    const port = await freePort();
    const f = join(tmp.path, 'tls-q.img');
    writeFileSync(f, '');
    truncateSync(f, SIZE);
    const proc = start('qemu-nbd', [
      '-f',
      'raw',
      '-x',
      'sec',
      '-b',
      '127.0.0.1',
      '-p',
      String(port),
      '-t',
      '--object',
      `tls-creds-x509,id=tls0,dir=${pki.dir},endpoint=server`,
      '--tls-creds',
      'tls0',
      f,
    ]);
    try {
      await waitForListen({ port }, 10000, proc);
      await assert.rejects(
        connectNbd(`nbd://127.0.0.1:${port}/sec`),
        isErr('CONFLICT', /TLS required.*nbds:\/\//),
      );
      await assert.rejects(connectNbd(`nbds://127.0.0.1:${port}/sec`), isErr('INVALID_ARGUMENT', /--tls-ca/));
      const dev = await connectNbd(`nbds://127.0.0.1:${port}/sec`, { tls: creds() });
      assert.equal(dev.info.tls, true);
      const data = randomBytes(3 * MiB);
      await dev.write(data, 12345);
      const back = new Uint8Array(data.length);
      await dev.read(back, 12345);
      assert.equal(sha(back), sha(data));
      await dev.close();
      assert.equal(sha(readFileSync(f).subarray(12345, 12345 + data.length)), sha(data));
    } finally {
      await proc.stop();
    }
  });

  test('against nbdkit --tls=require', async () => {
    const sock = join(tmp.path, 'tls-k.sock');
    const f = join(tmp.path, 'tls-k.img');
    writeFileSync(f, '');
    truncateSync(f, SIZE);
    const proc = start('nbdkit', [
      '-f',
      '-U',
      sock,
      '--exit-with-parent',
      '--tls=require',
      `--tls-certificates=${pki.dir}`,
      'file',
      f,
    ]);
    try {
      await waitForListen({ path: sock }, 10000, proc);
      await assert.rejects(connectNbd(`nbd+unix:///?socket=${sock}`), isErr('CONFLICT', /TLS required/));
      const dev = await connectNbd(`nbds+unix:///?socket=${sock}&tls-hostname=localhost`, { tls: creds() });
      const data = randomBytes(MiB);
      await dev.write(data, 0);
      const back = new Uint8Array(MiB);
      await dev.read(back, 0);
      assert.equal(sha(back), sha(data));
      await dev.close();
    } finally {
      await proc.stop();
    }
  });
});

for (const [what, flags] of [
  ['without structured replies (simple replies only)', ['--no-sr']],
  ['with an old handshake (not fixed newstyle: NBD_OPT_EXPORT_NAME)', ['--mask-handshake=0']],
] as const) {
  test(`against nbdkit ${what}`, async () => {
    const peer = await nbdkit(`old${flags[0]!.length}`, [...flags]);
    const dev = await connectNbd(peer.uri);
    try {
      assert.equal(dev.info.structured, false);
      if (flags[0] === '--mask-handshake=0') assert.equal(dev.info.via, 'export-name');
      const data = randomBytes(3 * MiB);
      await dev.write(data, 777);
      const back = new Uint8Array(data.length);
      await dev.read(back, 777);
      assert.equal(sha(back), sha(data));
      // No base:allocation: everything is reported as data.
      assert.deepEqual(await dev.blockStatus(0, MiB), [{ offset: 0, length: MiB, flags: 0 }]);
    } finally {
      await dev.close();
      await peer.proc.stop();
    }
  });
}
