// `haven nbd serve` against the real clients: qemu-img, qemu-io, nbdinfo, nbdcopy, nbdsh (libnbd),
// Haven's own client, over TCP, unix sockets and TLS.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, truncateSync, writeFileSync } from 'node:fs';
import { once } from 'node:events';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { connectNbd } from '../../src/nbd/index.js';
import { NbdServer } from '../../src/nbd/index.js';
import { openRawFile, type BitmapView, type Extent } from '../../src/block/index.js';
import { HAVEN_BIN, freePort, start, waitForListen, type Running } from '../support/proc.js';
import { tempDir } from '../support/tmp.js';
import { makeTestPki } from '../support/tls.js';
import { ensureGuest, launchGuest, patternBytes } from '../support/guest.js';
import { interopCases, plainEndpoint, writeInteropSource, type NbdEndpoint } from '../support/nbd-interop.js';

const MiB = 1024 * 1024;
const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');
const sh = (cmd: string, args: string[]) =>
  execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });

describe('haven nbd serve with real clients', () => {
  const tmp = tempDir('haven-nbd-');
  const servers: Running[] = [];
  let image: string;
  let uri: string;

  const serve = async (file: string, extra: string[] = []) => {
    const port = await freePort();
    const s = start(process.execPath, [
      HAVEN_BIN,
      'nbd',
      'serve',
      file,
      '--listen',
      `127.0.0.1:${port}`,
      '--name',
      'd',
      ...extra,
    ]);
    servers.push(s);
    await waitForListen({ port }, 10000, s);
    return { port, server: s, uri: `nbd://127.0.0.1:${port}/d` };
  };

  before(async () => {
    image = join(tmp.path, 'disk.img');
    writeFileSync(image, '');
    truncateSync(image, 64 * MiB);
    uri = (await serve(image)).uri;
  });
  after(async () => {
    await Promise.all(servers.map((s) => s.stop()));
    tmp.cleanup();
  });

  it('prints one line saying where it listens', async () => {
    // The port may accept before the line has reached us: wait for it, bounded.
    const deadline = Date.now() + 5000;
    while (!servers[0]!.output().includes('\n') && Date.now() < deadline) await sleep(20);
    assert.match(servers[0]!.output(), /^haven: serving .*disk\.img as "d" on nbd:\/\/127\.0\.0\.1:\d+\/d\n/);
  });

  it('qemu-io writes, reads, discards and zeroes, verified on the file', () => {
    const out = sh('qemu-io', [
      '-f',
      'raw',
      '-c',
      'write -P 0x5a 1M 192k',
      '-c',
      'read -P 0x5a 1M 192k',
      '-c',
      'write -P 0x33 8M 4k',
      '-c',
      'discard 1M 64k',
      '-c',
      'write -z 8M 4k',
      '-c',
      'read -P 0 1M 64k',
      uri,
    ]);
    assert.doesNotMatch(out, /Pattern verification failed|error/i);
    const file = readFileSync(image);
    assert.ok(file.subarray(MiB, MiB + 64 * 1024).equals(Buffer.alloc(64 * 1024)));
    assert.ok(file.subarray(MiB + 64 * 1024, MiB + 192 * 1024).equals(Buffer.alloc(128 * 1024, 0x5a)));
    assert.ok(file.subarray(8 * MiB, 8 * MiB + 4096).equals(Buffer.alloc(4096)));
  });

  it('qemu-img info, map (same allocation as the file), convert and compare', () => {
    const info = JSON.parse(sh('qemu-img', ['info', '--output=json', uri])) as { 'virtual-size': number };
    assert.equal(info['virtual-size'], 64 * MiB);
    const strip = (j: string) =>
      (JSON.parse(j) as { start: number; length: number; data: boolean; zero: boolean }[]).map(
        ({ start, length, data, zero }) => ({ start, length, data, zero }),
      );
    assert.deepEqual(
      strip(sh('qemu-img', ['map', '--output=json', '-f', 'raw', uri])),
      strip(sh('qemu-img', ['map', '--output=json', '-f', 'raw', image])),
    );
    const copy = join(tmp.path, 'copy.qcow2');
    sh('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', uri, copy]);
    sh('qemu-img', ['compare', '-f', 'raw', '-F', 'qcow2', uri, copy]);
  });

  it('nbdinfo --list and --map; nbdcopy both ways, verified by hash', () => {
    assert.match(sh('nbdinfo', ['--list', uri]), /export="d"/);
    const map = sh('nbdinfo', ['--map', uri]);
    assert.match(map, /data/);
    assert.match(map, /hole,zero/);
    const src = join(tmp.path, 'src.img');
    writeFileSync(src, Buffer.concat([randomBytes(8 * MiB), Buffer.alloc(48 * MiB), randomBytes(8 * MiB)]));
    sh('nbdcopy', [src, uri]);
    assert.equal(sha(readFileSync(image)), sha(readFileSync(src)));
    const back = join(tmp.path, 'back.img');
    sh('nbdcopy', [uri, back]);
    assert.equal(sha(readFileSync(back)), sha(readFileSync(src)));
  });

  it('large sequential writes (received natively) over TCP and a unix socket: nbdcopy and qemu-img, verified by hash', async () => {
    const file = join(tmp.path, 'big.img');
    writeFileSync(file, '');
    truncateSync(file, 48 * MiB);
    const tcp = (await serve(file)).uri;
    const path = join(tmp.path, 'big.sock');
    const s = start(process.execPath, [HAVEN_BIN, 'nbd', 'serve', file, '--socket', path, '--name', 'd']);
    servers.push(s);
    await waitForListen({ path }, 10000, s);
    const unix = `nbd+unix:///d?socket=${path}`;
    for (const [way, uri] of [
      ['tcp', tcp],
      ['unix', unix],
    ] as const) {
      // Non-zero data throughout: nbdcopy sends it all as 256 KiB writes, 4 connections.
      const src = join(tmp.path, `src-${way}.img`);
      writeFileSync(src, randomBytes(48 * MiB));
      sh('nbdcopy', [src, uri]);
      assert.equal(sha(readFileSync(file)), sha(readFileSync(src)), `nbdcopy over ${way}`);
      // qemu-img: 2 MiB writes, one connection.
      const other = join(tmp.path, `other-${way}.img`);
      writeFileSync(other, randomBytes(48 * MiB));
      sh('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', other, uri]);
      assert.equal(sha(readFileSync(file)), sha(readFileSync(other)), `qemu-img convert over ${way}`);
      const back = join(tmp.path, `back-${way}.img`);
      sh('nbdcopy', [uri, back]);
      assert.equal(sha(readFileSync(back)), sha(readFileSync(other)), `read back over ${way}`);
    }
  });

  it('nbdsh: edge cases answered by the server, and the connection stays usable', () => {
    const script = `
import nbd, errno
h = nbd.NBD()
h.set_strict_mode(0)
h.add_meta_context("base:allocation")
h.connect_uri("${uri}")
size = h.get_size()
def code(f):
    try:
        f()
        return 0
    except nbd.Error as e:
        return errno.errorcode.get(e.errno, e.errno)
assert code(lambda: h.pread(512, size - 256)) == "EINVAL", "read past the end"
assert code(lambda: h.pread(512, 2**60)) == "EINVAL", "an offset beyond 2^53"
assert code(lambda: h.pwrite(b"x" * 512, size - 256)) in ("ENOSPC", "EINVAL"), "write past the end"
assert h.pread(0, 0) == b""
h.pwrite(b"abc", 1)
assert h.pread(3, 1) == b"abc"
big = bytes(range(256)) * (32 * 1024 * 1024 // 256)
h.pwrite(big, 0)
assert h.pread(len(big), 0) == big
h.pwrite(b"fua" * 100, 4096, nbd.CMD_FLAG_FUA)
h.flush()
h.trim(65536, 65536)
assert h.pread(65536, 65536) == bytes(65536)
h.zero(65536, 65536, nbd.CMD_FLAG_FAST_ZERO)
h.cache(4096, 0)
base = 2 * 1024 * 1024
bufs = [nbd.Buffer(4096) for i in range(64)]
cookies = [h.aio_pread(bufs[i], base + i * 4096) for i in range(64)]
while h.aio_in_flight() > 0:
    h.poll(-1)
for i, c in enumerate(cookies):
    assert h.aio_command_completed(c)
    assert bytes(bufs[i].to_bytearray()) == big[base + i * 4096:base + (i + 1) * 4096], "pipelined read %d" % i
ext = []
h.block_status(size, 0, lambda meta, off, e, err: (ext.append((meta, e)), 0)[1], nbd.CMD_FLAG_REQ_ONE)
assert ext and len(ext[0][1]) == 2, ext
assert h.pread(3, 1) == big[1:4]
print("OK")
`;
    const r = spawnSync('/usr/bin/python3', ['-c', script], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr + r.stdout);
    assert.match(r.stdout, /OK/);
  });

  it('a read-only export refuses writes with EPERM', async () => {
    const { uri: ro } = await serve(image, ['--read-only']);
    const r = spawnSync('qemu-io', ['-f', 'raw', '-c', 'write 0 4k', ro], { encoding: 'utf8' });
    assert.match(r.stdout + r.stderr, /Operation not permitted|read-only|Permission denied/i);
    const dev = await connectNbd(ro);
    assert.equal(dev.readOnly, true);
    await dev.close();
  });

  it('TLS-only: qemu-img and nbdinfo with certificates work, a plain client is refused', async () => {
    const pki = makeTestPki(tmp.path);
    const { port } = await serve(image, ['--tls-cert', pki.serverCert, '--tls-key', pki.serverKey]);
    const info = sh('qemu-img', [
      'info',
      '--object',
      `tls-creds-x509,id=tls0,dir=${pki.dir},endpoint=client`,
      '--image-opts',
      `driver=nbd,host=127.0.0.1,port=${port},export=d,tls-creds=tls0`,
    ]);
    assert.match(info, /virtual size: 64 MiB/);
    assert.match(
      sh('nbdinfo', [`nbds://127.0.0.1:${port}/d?tls-certificates=${pki.dir}`]),
      /export-size: 67108864/,
    );
    const plain = spawnSync('nbdinfo', [`nbd://127.0.0.1:${port}/d`], { encoding: 'utf8' });
    assert.notEqual(plain.status, 0, 'a plain client must be refused');
    await assert.rejects(connectNbd(`nbd://127.0.0.1:${port}/d`), /refused \(TLS required\)/);
    const dev = await connectNbd(`nbds://127.0.0.1:${port}/d`, { tls: { ca: readFileSync(pki.caCert) } });
    const b = Buffer.alloc(3);
    await dev.read(b, 1);
    assert.equal(b.length, 3);
    await dev.close();
  });

  it('honours a connection limit, and drains in-flight writes on SIGTERM', async () => {
    const { uri: u, server } = await serve(image, ['--max-connections', '1']);
    const first = await connectNbd(u);
    const second = spawnSync('nbdinfo', [u], { encoding: 'utf8' });
    assert.notEqual(second.status, 0, 'a second client must be refused');
    // The default export is the same export, under the same limit.
    const viaDefault = spawnSync('nbdinfo', [u.replace(/\/d$/, '')], { encoding: 'utf8' });
    assert.notEqual(viaDefault.status, 0, 'a second client through the default export must be refused');
    await first.close();
    // Many writes in flight, then SIGTERM: the server exits 0 and what was acknowledged is there.
    const dev = await connectNbd(u);
    const writes = Array.from({ length: 64 }, (_, i) =>
      dev.write(Buffer.alloc(65536, i + 1), 40 * MiB + i * 65536),
    );
    const acked: number[] = [];
    writes.forEach(
      (w, i) =>
        void w.then(
          () => acked.push(i),
          () => undefined,
        ),
    );
    await Promise.race(writes);
    server.child.kill('SIGTERM');
    await Promise.allSettled(writes);
    const code = server.child.exitCode ?? ((await once(server.child, 'exit')) as [number | null])[0];
    assert.equal(code, 0, server.output());
    const file = readFileSync(image);
    for (const i of acked)
      assert.ok(
        file.subarray(40 * MiB + i * 65536, 40 * MiB + (i + 1) * 65536).equals(Buffer.alloc(65536, i + 1)),
        `acknowledged write ${i} lost`,
      );
    assert.ok(acked.length > 0);
    await dev.close().catch(() => undefined);
  });

  it('a 4 TiB sparse export serves its last megabyte', async () => {
    const huge = join(tmp.path, 'huge.img');
    writeFileSync(huge, '');
    truncateSync(huge, 4 * 1024 * 1024 * MiB);
    const { uri: u } = await serve(huge);
    const last = 4 * 1024 * 1024 * MiB - MiB;
    const out = sh('qemu-io', [
      '-f',
      'raw',
      '-c',
      `write -P 0x77 ${last} 1M`,
      '-c',
      `read -P 0x77 ${last} 1M`,
      u,
    ]);
    assert.doesNotMatch(out, /fail/i);
    assert.match(sh('nbdinfo', [u]), /export-size: 4398046511104/);
  });

  it('the test guest boots with its disk on a Haven export and its writes land', async () => {
    ensureGuest();
    const disk = join(tmp.path, 'guest.img');
    writeFileSync(disk, '');
    truncateSync(disk, 32 * MiB);
    const { uri: u } = await serve(disk);
    const g = launchGuest({
      drives: [{ uri: u }],
      command: 'write-pattern disk=vda seed=3 count=8 len=65536 step=1M',
    });
    try {
      await g.ready();
      await g.commandLineDone();
      await g.poweroff();
    } finally {
      await g.kill();
    }
    const file = readFileSync(disk);
    const writes = g.writes();
    assert.equal(writes.length, 8);
    for (const w of writes)
      assert.ok(
        file.subarray(w.offset, w.offset + w.length).equals(patternBytes(3, w.seq, w.offset, w.length)),
      );
  });
});

describe('haven nbd serve: every peer, named and default export, plain and TLS', () => {
  const tmp = tempDir('haven-nbd-interop-');
  const source = join(tmp.path, 'source.raw');
  const image = join(tmp.path, 'served.raw');
  const servers: Running[] = [];
  const eps = new Map<string, NbdEndpoint>();

  before(async () => {
    writeInteropSource(source);
    execFileSync('cp', ['--sparse=always', source, image]);
    mkdirSync(join(tmp.path, 'pki'));
    const pki = makeTestPki(join(tmp.path, 'pki'));
    const [plain, tls] = [await freePort(), await freePort()];
    for (const [port, extra] of [
      [plain, []],
      [tls, ['--tls-cert', pki.serverCert, '--tls-key', pki.serverKey]],
    ] as const) {
      const s = start(process.execPath, [
        HAVEN_BIN,
        ...['nbd', 'serve', image, '--listen', `127.0.0.1:${port}`, '--name', 'd', ...extra],
      ]);
      servers.push(s);
      await waitForListen({ port }, 10000, s);
    }
    eps.set('plain, named export', plainEndpoint(`nbd://127.0.0.1:${plain}/d`));
    // What qemu-img, nbdcopy and nbdinfo send for nbd://host:port: the empty name.
    eps.set('plain, default export', plainEndpoint(`nbd://127.0.0.1:${plain}`));
    for (const [what, name] of [
      ['named', 'd'],
      ['default', ''],
    ] as const)
      eps.set(`TLS, ${what} export`, {
        uri: `nbds://127.0.0.1:${tls}/${name}?tls-certificates=${pki.dir}`,
        qemu: {
          args: ['--object', `tls-creds-x509,id=tls0,dir=${pki.dir},endpoint=client`, '--image-opts'],
          image: `driver=nbd,host=127.0.0.1,port=${tls},${name ? `export=${name},` : ''}tls-creds=tls0`,
        },
        haven: [`nbds://127.0.0.1:${tls}/${name}`, '--tls-ca', pki.caCert],
      });
  });
  after(async () => {
    await Promise.all(servers.map((s) => s.stop()));
    tmp.cleanup();
  });

  for (const way of [
    'plain, named export',
    'plain, default export',
    'TLS, named export',
    'TLS, default export',
  ])
    describe(way, () => interopCases(way, () => eps.get(way)!, { scratch: tmp.path, source }));
});

describe('NbdServer in process', () => {
  it('offers several exports, a default one, and dirty bitmaps as qemu:dirty-bitmap contexts', async (t) => {
    const tmp = tempDir();
    t.after(tmp.cleanup);
    const a = join(tmp.path, 'a.img');
    writeFileSync(a, Buffer.alloc(4 * MiB));
    const dirty: Extent[] = [{ offset: MiB, length: 128 * 1024, flags: 1 }];
    const view: BitmapView = {
      name: 'b0',
      granularity: 65536,
      status(offset, length) {
        const end = offset + length;
        const out: Extent[] = [];
        let pos = offset;
        for (const d of dirty) {
          if (d.offset + d.length <= pos || d.offset >= end) continue;
          if (d.offset > pos) out.push({ offset: pos, length: d.offset - pos, flags: 0 });
          const stop = Math.min(end, d.offset + d.length);
          out.push({ offset: Math.max(pos, d.offset), length: stop - Math.max(pos, d.offset), flags: 1 });
          pos = stop;
        }
        if (pos < end) out.push({ offset: pos, length: end - pos, flags: 0 });
        return out;
      },
    };
    const server = new NbdServer({ defaultExport: 'a' });
    server.addExport({ name: 'a', device: openRawFile(a), bitmaps: [view] });
    server.addExport({ name: 'b', device: openRawFile(a, { readOnly: true }), description: 'second' });
    const sock = join(tmp.path, 's.sock');
    await server.listen({ path: sock });
    t.after(() => server.close());
    const list = await run('nbdinfo', ['--list', `nbd+unix:///?socket=${sock}`]);
    assert.match(list, /export="a"/);
    assert.match(list, /export="b"/);
    // By name, and as the default export (nbd+unix:///): the same bitmap.
    for (const name of ['a', '']) {
      const map = await run('nbdinfo', [`--map=qemu:dirty-bitmap:b0`, `nbd+unix:///${name}?socket=${sock}`]);
      assert.deepEqual(
        map
          .trim()
          .split('\n')
          .map((l) => l.trim().split(/\s+/).slice(0, 3).map(Number)),
        [
          [0, MiB, 0],
          [MiB, 128 * 1024, 1],
          [MiB + 128 * 1024, 4 * MiB - MiB - 128 * 1024, 0],
        ],
        `export "${name}"`,
      );
    }
  });
});

/** Runs a peer asynchronously (the in-process server must keep serving meanwhile). */
async function run(cmd: string, args: string[]): Promise<string> {
  const { run: runAsync } = await import('../support/proc.js');
  return (await runAsync(cmd, args)).stdout;
}
