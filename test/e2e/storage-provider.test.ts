// Acceptance of issue 16 item 4 (the storage provider API): an out-of-process storage provider,
// written here with node:http and speaking the HTTP contract of docs/provider-api.yaml, keeps raw
// files in a directory, serves each over NBD with a real qemu-nbd and snapshots with
// `cp --reflink=auto`. The test registers it with a real site daemon; a policy requiring what only
// that provider advertises places a volume on it (created through the contract); data written
// through the site's NBD export lands in the provider's file; a snapshot taken through Haven is
// the provider's (it received the call) and holds exactly the data of that moment, read back
// through the site; a VM whose disk it is writes there through the site's NBD socket and tap (a
// snapshot taken then holds its writes). Bad registrations (unreachable, wrong token, another API
// version, no token file) are refused with clear errors and register nothing; the token is never
// logged.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, readFileSync, rmSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { guestArgs, site, startDaemon, waitForConsole } from '../support/site.js';
import { patternBytes } from '../support/guest.js';
import { start, waitForListen, freePort, type Running } from '../support/proc.js';
import { tempDir } from '../support/tmp.js';

const execp = promisify(execFile);
const MiB = 1024 * 1024;
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

interface Call {
  method: string;
  path: string;
  body?: unknown;
}

/** A storage vendor's provider, out of process from the daemon: the HTTP contract over files and qemu-nbd. */
class TestProvider {
  readonly calls: Call[] = [];
  /** What `describe` says its API version is (a test sets another). */
  version = '1.0';
  private readonly volumes = new Map<
    string,
    { size: number; createdAt: string; snapshots: Map<string, string> }
  >();
  private readonly nbd = new Map<string, { proc: Running; socket: string }>();
  private server!: Server;
  url = '';

  constructor(
    readonly dir: string,
    readonly token: string,
  ) {}

  async listen(): Promise<void> {
    this.server = createServer((req, res) => void this.handle(req, res));
    await new Promise<void>((r) => this.server.listen(0, '127.0.0.1', r));
    const a = this.server.address() as { port: number };
    this.url = `http://127.0.0.1:${a.port}`;
  }

  async close(): Promise<void> {
    for (const n of this.nbd.values()) await n.proc.stop();
    this.server.closeAllConnections();
    await new Promise<void>((r) => this.server.close(() => r()));
  }

  file(volume: string, snapshot?: string): string {
    return join(this.dir, snapshot ? `${volume}@${snapshot}.raw` : `${volume}.raw`);
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const send = (status: number, body?: unknown) => {
      res.writeHead(status, body === undefined ? {} : { 'content-type': 'application/json' });
      res.end(body === undefined ? undefined : JSON.stringify(body));
    };
    const fail = (status: number, code: string, message: string) => send(status, { code, message });
    try {
      let raw = '';
      for await (const c of req) raw += String(c);
      const body = raw ? (JSON.parse(raw) as Record<string, unknown>) : undefined;
      const path = new URL(req.url!, 'http://x').pathname;
      this.calls.push({ method: req.method!, path, ...(body ? { body } : {}) });
      if (req.headers.authorization !== `Bearer ${this.token}`)
        return fail(401, 'UNAUTHENTICATED', 'bad token');
      const m = /^\/v1\/volumes(?:\/([^/]+))?(?:\/(snapshots|resize|access)(?:\/([^/]+)(\/clone)?)?)?$/.exec(
        path,
      );
      if (req.method === 'GET' && path === '/v1/provider') {
        const allocated = [...this.volumes.values()].reduce((n, v) => n + v.size, 0);
        return send(200, {
          apiVersion: this.version,
          vendor: 'Test Array 1.0',
          capabilities: { thin: true, snapshots: true, clones: true, tier: 'vendor-gold', dedup: true },
          capacity: {
            capacityBytes: 1024 * MiB,
            allocatedBytes: allocated,
            freeBytes: 1024 * MiB - allocated,
          },
          health: { state: 'ok' },
        });
      }
      if (!m) return fail(404, 'NOT_FOUND', `no route ${req.method} ${path}`);
      const [, vol, sub, snap, clone] = m as unknown as [string, string?, string?, string?, string?];
      const name = vol ? decodeURIComponent(vol) : undefined;
      const v = name ? this.volumes.get(name) : undefined;
      const volAnswer = (n: string) => ({
        name: n,
        sizeBytes: this.volumes.get(n)!.size,
        createdAt: this.volumes.get(n)!.createdAt,
      });
      const snapAnswer = (n: string, s: string) => ({
        name: s,
        volume: n,
        sizeBytes: this.volumes.get(n)!.size,
        createdAt: this.volumes.get(n)!.snapshots.get(s),
      });
      if (!name) {
        if (req.method === 'GET') return send(200, [...this.volumes.keys()].map(volAnswer));
        if (req.method === 'POST') {
          const n = String(body?.name);
          const size = Number(body?.sizeBytes);
          if (this.volumes.has(n)) return fail(409, 'CONFLICT', `volume ${n} exists`);
          writeFileSync(this.file(n), '');
          truncateSync(this.file(n), size);
          this.volumes.set(n, { size, createdAt: new Date().toISOString(), snapshots: new Map() });
          return send(201, volAnswer(n));
        }
      }
      if (!name || !v) return fail(404, 'NOT_FOUND', `no volume ${name}`);
      if (!sub && req.method === 'DELETE') {
        for (const s of v.snapshots.keys()) await this.drop(name, s);
        await this.drop(name);
        this.volumes.delete(name);
        return send(204);
      }
      if (sub === 'snapshots' && !snap && req.method === 'GET')
        return send(
          200,
          [...v.snapshots.keys()].map((s) => snapAnswer(name, s)),
        );
      if (sub === 'snapshots' && !snap && req.method === 'POST') {
        const s = String(body?.name);
        if (v.snapshots.has(s)) return fail(409, 'CONFLICT', `snapshot ${s} exists`);
        await execp('cp', ['--reflink=auto', '--sparse=always', this.file(name), this.file(name, s)]);
        v.snapshots.set(s, new Date().toISOString());
        return send(201, snapAnswer(name, s));
      }
      if (sub === 'snapshots' && snap && !clone && req.method === 'DELETE') {
        const s = decodeURIComponent(snap);
        if (!v.snapshots.delete(s)) return fail(404, 'NOT_FOUND', `no snapshot ${s}`);
        await this.drop(name, s);
        return send(204);
      }
      if (sub === 'snapshots' && snap && clone && req.method === 'POST') {
        const s = decodeURIComponent(snap);
        const n = String(body?.name);
        if (!v.snapshots.has(s)) return fail(404, 'NOT_FOUND', `no snapshot ${s}`);
        if (this.volumes.has(n)) return fail(409, 'CONFLICT', `volume ${n} exists`);
        await execp('cp', ['--reflink=auto', '--sparse=always', this.file(name, s), this.file(n)]);
        this.volumes.set(n, { size: v.size, createdAt: new Date().toISOString(), snapshots: new Map() });
        return send(201, { ...volAnswer(n), origin: `${name}@${s}` });
      }
      if (sub === 'access' && req.method === 'POST') {
        const s = typeof body?.snapshot === 'string' ? body.snapshot : undefined;
        if (s && !v.snapshots.has(s)) return fail(404, 'NOT_FOUND', `no snapshot ${s}`);
        return send(200, { uri: await this.serve(name, s) });
      }
      return fail(501, 'UNSUPPORTED', `${req.method} ${path} is not offered by this provider`);
    } catch (err) {
      fail(500, 'INTERNAL', String(err));
    }
  }

  /** The target's NBD export (a qemu-nbd of its own, read-only for a snapshot), started on first access. */
  private async serve(volume: string, snapshot?: string): Promise<string> {
    const key = snapshot ? `${volume}@${snapshot}` : volume;
    let n = this.nbd.get(key);
    if (!n) {
      const socket = join(this.dir, `${key}.sock`);
      const proc = start('qemu-nbd', [
        ...(snapshot ? ['-r'] : []),
        '-f',
        'raw',
        '-x',
        key,
        `--socket=${socket}`,
        '-t',
        '--shared=8',
        '--discard=unmap',
        this.file(volume, snapshot),
      ]);
      await waitForListen({ path: socket }, 10_000, proc);
      n = { proc, socket };
      this.nbd.set(key, n);
    }
    return `nbd+unix:///${encodeURIComponent(key)}?socket=${n.socket}`;
  }

  private async drop(volume: string, snapshot?: string): Promise<void> {
    const key = snapshot ? `${volume}@${snapshot}` : volume;
    await this.nbd.get(key)?.proc.stop();
    this.nbd.delete(key);
    rmSync(this.file(volume, snapshot), { force: true });
  }
}

test('an out-of-process storage provider serves placement and snapshots through the contract', async (t) => {
  const s = await site(t);
  const tmp = tempDir('haven-provider-');
  const token = `tok-${randomBytes(12).toString('hex')}`;
  const provider = new TestProvider(tmp.path, token);
  await provider.listen();
  t.after(async () => {
    await provider.close();
    tmp.cleanup();
  });
  const tokenFile = join(tmp.path, 'token');
  writeFileSync(tokenFile, `${token}\n`, { mode: 0o600 });
  const wrongToken = `wrong-${randomBytes(12).toString('hex')}`;
  const wrongFile = join(tmp.path, 'wrong-token');
  writeFileSync(wrongFile, wrongToken, { mode: 0o600 });

  // ---- bad registrations: clear errors, nothing registered ----
  const closed = await freePort(); // nobody listens there
  const register = (name: string, url: string, file: string) =>
    s.havenFails('pool', 'register', name, '--provider-url', url, '--provider-token-file', file);
  assert.match(
    await register('vendor', `http://127.0.0.1:${closed}`, tokenFile),
    /cannot register pool vendor: storage provider http:\/\/127\.0\.0\.1:\d+: GET \/v1\/provider: cannot reach the provider \(ECONNREFUSED\)/,
  );
  assert.match(
    await register('vendor', provider.url, wrongFile),
    /cannot register pool vendor: .*the provider refused Haven's token \(HTTP 401\); check the token file/,
  );
  provider.version = '7.0';
  assert.match(
    await register('vendor', provider.url, tokenFile),
    /cannot register pool vendor: the storage provider at http:\/\/127\.0\.0\.1:\d+ speaks API version "7\.0"; this Haven speaks 1\.0 \(any 1\.x\)/,
  );
  provider.version = '1.0';
  assert.match(
    await register('vendor', provider.url, join(tmp.path, 'no-such-token')),
    /token file .*no-such-token cannot be read: ENOENT/,
  );
  assert.match(await register('vendor', 'ftp://127.0.0.1/x', tokenFile), /must be http:\/\/ or https:\/\//);
  const poolNames = async () =>
    (JSON.parse(await s.haven('pool', 'list', '--json')) as { name: string }[]).map((p) => p.name);
  assert.deepEqual(await poolNames(), ['default'], 'no bad registration left a pool');
  assert.ok(
    provider.calls.every((c) => c.method === 'GET' && c.path === '/v1/provider'),
    'a refused registration asked nothing but describe',
  );

  // ---- registration ----
  const reg = JSON.parse(
    await s.haven(
      'pool',
      'register',
      'vendor',
      '--provider-url',
      provider.url,
      '--provider-token-file',
      tokenFile,
      '--json',
    ),
  ) as {
    name: string;
    path: string;
    provider: { apiVersion: string; vendor: string; health: { state: string } };
  };
  assert.equal(reg.name, 'vendor');
  assert.equal(reg.provider.apiVersion, '1.0');
  assert.equal(reg.provider.vendor, 'Test Array 1.0');
  assert.equal(reg.provider.health.state, 'ok');
  const shown = JSON.parse(await s.haven('pool', 'show', 'vendor', '--json')) as {
    advertised: Record<string, unknown>;
    freeBytes: number;
  };
  assert.equal(shown.advertised.tier, 'vendor-gold');
  assert.equal(shown.advertised.dedup, true, "the provider's own capability is advertised");
  assert.equal(shown.freeBytes, 1024 * MiB);
  const human = await s.haven('pool', 'show', 'vendor');
  assert.match(human, /provider: +http:\/\/127\.0\.0\.1:\d+ \(API 1\.0, Test Array 1\.0\)/);
  assert.match(human, /health: +ok/);
  assert.match(human, /offers: +thin snapshots clones dedup/);
  assert.match(
    await s.havenFails(
      'pool',
      'register',
      'vendor',
      '--provider-url',
      provider.url,
      '--provider-token-file',
      tokenFile,
    ),
    /pool vendor already exists/,
  );

  // ---- placement by policy: only the provider has tier=vendor-gold and dedup ----
  await s.haven('policy', 'create', 'vendor-gold', '--require', 'tier=vendor-gold', '--require', 'dedup');
  const before = provider.calls.length;
  const vol = JSON.parse(
    await s.haven('volume', 'create', 'db', '--size', '8M', '--policy', 'vendor-gold', '--json'),
  ) as { name: string; pool: string; size: number };
  assert.equal(vol.pool, 'vendor', 'placed on the only pool satisfying the policy');
  assert.equal(vol.size, 8 * MiB);
  assert.deepEqual(
    provider.calls.slice(before).find((c) => c.method === 'POST'),
    { method: 'POST', path: '/v1/volumes', body: { name: 'db', sizeBytes: 8 * MiB } },
    'created through the contract',
  );
  assert.equal(statSync(provider.file('db')).size, 8 * MiB);
  assert.match(
    await s.havenFails(
      'volume',
      'create',
      'other',
      '--size',
      '8M',
      '--pool',
      'default',
      '--policy',
      'vendor-gold',
    ),
    /pool default does not satisfy policy vendor-gold: it lacks tier=vendor-gold \(it has tier=standard\), dedup/,
  );

  // ---- data through the site's NBD export, onto the provider's storage ----
  const info = JSON.parse(await s.haven('site', 'show', '--json')) as { nbd: { socket: string } };
  const uri = (target: string) => `nbd+unix:///${encodeURIComponent(target)}?socket=${info.nbd.socket}`;
  const first = randomBytes(8 * MiB);
  const second = Buffer.from(first);
  randomBytes(MiB).copy(second, 3 * MiB); // the second state differs in one MiB
  const img = (name: string, b: Buffer) => {
    const p = join(tmp.path, name);
    writeFileSync(p, b);
    return p;
  };
  await execp('nbdcopy', [img('first.raw', first), uri('db')]);
  assert.equal(
    sha(readFileSync(provider.file('db'))),
    sha(first),
    "the site's writes are in the provider's file",
  );

  // ---- a snapshot through Haven is the provider's ----
  const snapCalls = provider.calls.length;
  await s.haven('snapshot', 'create', 'db', 's1');
  assert.deepEqual(
    provider.calls.slice(snapCalls).filter((c) => c.method === 'POST' && c.path.endsWith('/snapshots')),
    [{ method: 'POST', path: '/v1/volumes/db/snapshots', body: { name: 's1' } }],
    'the provider received the snapshot call',
  );
  const snaps = JSON.parse(await s.haven('snapshot', 'list', 'db', '--json')) as { name: string }[];
  assert.deepEqual(
    snaps.map((x) => x.name),
    ['s1'],
  );
  await execp('nbdcopy', [img('second.raw', second), uri('db')]);

  const read = async (target: string, name: string) => {
    const out = join(tmp.path, name);
    await execp('nbdcopy', [uri(target), out]);
    return sha(readFileSync(out));
  };
  assert.equal(
    await read('db@s1', 'snap.out'),
    sha(first),
    'the snapshot holds the data of its moment, read through the site',
  );
  assert.equal(
    sha(readFileSync(provider.file('db', 's1'))),
    sha(first),
    "and the provider's snapshot file is that data",
  );
  assert.equal(await read('db', 'vol.out'), sha(second), 'the volume has the newer data');

  // ---- a clone of the snapshot is made by the provider, and reads the snapshot's data ----
  const cl = JSON.parse(await s.haven('volume', 'clone', 'db@s1', 'db-copy', '--json')) as {
    pool: string;
    origin: string;
  };
  assert.deepEqual([cl.pool, cl.origin], ['vendor', 'db@s1']);
  assert.ok(
    provider.calls.some((c) => c.method === 'POST' && c.path === '/v1/volumes/db/snapshots/s1/clone'),
  );
  assert.equal(await read('db-copy', 'clone.out'), sha(first), 'the clone holds the snapshot data');
  await s.haven('volume', 'delete', 'db-copy');

  // ---- a restart: the registration is in the site database, the volume and snapshot come back ----
  const firstLog = s.daemon.output();
  await s.daemon.stop();
  s.daemon = await startDaemon(s.dir);
  assert.deepEqual(await poolNames(), ['default', 'vendor']);
  assert.equal(
    (JSON.parse(await s.haven('volume', 'show', 'db', '--json')) as { pool: string }).pool,
    'vendor',
  );
  assert.equal(await read('db@s1', 'snap2.out'), sha(first), 'the snapshot reads the same after the restart');

  // ---- a VM's disk on the provider: QEMU reaches it through the site's NBD socket and tap ----
  await s.haven(
    'vm',
    'create',
    'pv',
    '--disk',
    'db',
    ...guestArgs('write-pattern disk=vda seed=9 count=4 len=64K start=1M step=1M; hash disk=vda; poweroff'),
  );
  await s.haven('vm', 'start', 'pv');
  const out = await waitForConsole(s, 'pv', /"event":"done","cmd":"hash"/);
  assert.ok(!/"event":"error"/.test(out), `the guest reported no error:\n${out}`);
  const onProvider = readFileSync(provider.file('db'));
  for (let k = 0; k < 4; k++) {
    const off = (k + 1) * MiB;
    assert.ok(
      onProvider.subarray(off, off + 64 * 1024).equals(patternBytes(9, k, off, 64 * 1024)),
      `the guest's write ${k} is in the provider's file`,
    );
  }
  const guestHash = /"cmd":"hash".*"sha256":"([0-9a-f]{64})"/.exec(out)![1];
  assert.equal(guestHash, sha(onProvider), 'the guest read the disk the provider holds');
  await s.haven('snapshot', 'create', 'db', 's2');
  assert.ok(
    readFileSync(provider.file('db', 's2')).equals(onProvider),
    "the provider's snapshot holds the guest's writes",
  );
  for (const deadline = Date.now() + 30_000; ; await sleep(200)) {
    const vm = JSON.parse(await s.haven('vm', 'show', 'pv', '--json')) as { state: string };
    if (vm.state === 'stopped') break;
    assert.ok(Date.now() < deadline, `the guest powered off (it is ${vm.state})`);
  }
  await s.haven('vm', 'delete', 'pv');

  // ---- what is not offered on a provider pool is refused, naming it ----
  assert.match(
    await s.havenFails('snapshot', 'revert', 'db', 's1'),
    /volume db is on pool vendor, served by the storage provider at http:\/\/127\.0\.0\.1:\d+: this operation is for volumes of Haven's own pools only/,
  );

  // ---- deletes go through the contract; an empty provider pool is forgotten ----
  assert.match(await s.havenFails('pool', 'delete', 'vendor'), /pool vendor still holds 1 volume\(s\): db/);
  await s.haven('snapshot', 'delete', 'db', 's1');
  await s.haven('snapshot', 'delete', 'db', 's2');
  assert.ok(!existsSync(provider.file('db', 's1')), 'the provider deleted the snapshot');
  await s.haven('volume', 'delete', 'db');
  assert.ok(
    provider.calls.some((c) => c.method === 'DELETE' && c.path === '/v1/volumes/db'),
    'the provider was asked to delete the volume',
  );
  assert.ok(!existsSync(provider.file('db')));
  await s.haven('pool', 'delete', 'vendor');
  assert.deepEqual(await poolNames(), ['default']);

  // The token went to the provider on every call, and never into the daemon's log.
  const log = firstLog + s.daemon.output();
  assert.ok(!log.includes(token) && !log.includes(wrongToken), 'no token in the daemon log');
});
