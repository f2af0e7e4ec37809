// Continuous replication between two site daemons, without guests: the initial sync of a 4 GiB
// thin volume sends about the data written (counted on the wire, through a fault proxy between
// the sites); the replica at its first checkpoint equals the source (qemu-img compare over NBD);
// compression shrinks compressible data; the bandwidth limit holds, and changes while running;
// bad input is refused with a clear error and changes nothing on either site.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { closeSync, openSync, writeSync, ftruncateSync } from 'node:fs';
import { join } from 'node:path';
import { run } from '../support/proc.js';
import { guestArgs } from '../support/site.js';
import { eventually, pairedSites, type TestSite } from '../support/sites.js';

const MiB = 1024 * 1024;

interface Group {
  name: string;
  role: string;
  volumes: { source: string; replica: string }[];
  source?: { state: string; link: string; sentBytes: number; appliedCheckpoint?: { seq: number } };
  target?: { newestCheckpoint?: { seq: number; snapshot: string } };
}

const group = (s: TestSite, name: string) => s.api<Group>('GET', `/replication/groups/${name}`);
const replicating = (g: Group) => g.source?.state === 'replicating' && !!g.source.appliedCheckpoint;
const socket = (s: TestSite) => join(s.dir, 'run', 'nbd.sock');
const nbd = (s: TestSite, exp: string) => `nbd+unix:///${encodeURIComponent(exp)}?socket=${socket(s)}`;

/** A sparse image of `size` with `chunks` MiB of `fill` data at spread-out places. */
function sparseImage(path: string, size: number, chunks: number, fill: (i: number) => Buffer): void {
  const fd = openSync(path, 'w');
  ftruncateSync(fd, size);
  const step = Math.floor(size / chunks / MiB) * MiB;
  for (let i = 0; i < chunks; i++) {
    const data = fill(i);
    writeSync(fd, data, 0, data.length, i * step);
  }
  closeSync(fd);
}

test('initial sync of a 4 GiB thin volume holding 100 MiB sends at most 110 MiB; the replica equals the source; bad input changes nothing', async (t) => {
  const { a, b, proxy } = await pairedSites(t, { proxied: true });
  const image = join(a.dir, '..', 'big.img');
  sparseImage(image, 4096 * MiB, 100, () => randomBytes(MiB));
  await a.haven('volume', 'import', image, '--name', 'big');
  await a.haven('vm', 'create', 'db', '--disk', 'big', ...guestArgs('ping'));
  await b.haven('pool', 'create', 'tiny', '--capacity', '16M');

  // Bad input: each refused with what is wrong, nothing made on either side.
  const enable = (...args: string[]) => ['replication', 'enable', ...args];
  assert.match(
    await a.havenFails(...enable('nosuch', '--group', 'g', '--to', 'site-b', '--pool', 'default')),
    /VM nosuch/,
  );
  assert.match(
    await a.havenFails(...enable('db', '--group', 'g', '--to', 'site-c', '--pool', 'default')),
    /site site-c is not paired/,
  );
  assert.match(
    await a.havenFails(...enable('db', '--group', 'g', '--to', 'site-b', '--pool', 'tiny')),
    /pool tiny at site site-b has \d+ bytes free; the replicas need \d+/,
  );
  assert.match(
    await a.havenFails(...enable('db', '--group', 'g', '--to', 'site-b', '--pool', 'nosuch')),
    /pool nosuch/,
  );
  assert.match(
    await a.havenFails(
      ...enable('db', '--group', 'g', '--to', 'site-b', '--pool', 'default', '--rpo', 'soon'),
    ),
    /--rpo "soon" is not a duration/,
  );
  assert.deepEqual(await a.api('GET', '/replication/groups'), []);
  assert.deepEqual(await b.api('GET', '/replication/groups'), []);
  assert.deepEqual(
    (await b.api<{ name: string }[]>('GET', '/volumes')).map((v) => v.name),
    [],
    'no replica volume was made',
  );

  const before = proxy!.upBytes;
  await a.haven(
    'replication',
    'enable',
    'db',
    '--group',
    'g',
    '--to',
    'site-b',
    '--pool',
    'default',
    '--rpo',
    '5s',
  );
  const g = await eventually('the initial sync to complete', () => group(a, 'g'), replicating, 120_000);
  const sent = proxy!.upBytes - before;
  t.diagnostic(`initial sync of 4 GiB holding 100 MiB: ${(sent / MiB).toFixed(1)} MiB on the wire`);
  assert.ok(sent <= 110 * MiB, `the initial sync sent ${sent} bytes, more than 110 MiB`);
  assert.ok(sent >= 100 * MiB, `the initial sync sent ${sent} bytes: less than the data`);

  // The replica at its newest checkpoint is the source (nothing writes to it).
  const held = await eventually(
    'the target to report its checkpoint',
    () => group(b, 'g'),
    (x) => !!x.target?.newestCheckpoint,
  );
  assert.equal(held.role, 'target');
  const snap = held.target!.newestCheckpoint!.snapshot;
  // The replica itself is not exported (torn between checkpoints): its checkpoint through a clone.
  assert.match(await b.havenFails('nbd', 'info', nbd(b, 'big')), /big/);
  await b.haven('volume', 'clone', `big@${snap}`, 'big-copy');
  await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', nbd(a, 'big'), nbd(b, 'big-copy')]);

  // The same VM in a second group, and the same group again: refused; the group is unchanged.
  assert.match(
    await a.havenFails(...enable('db', '--group', 'g2', '--to', 'site-b', '--pool', 'default')),
    /VM db is in group g: a VM belongs to at most one group/,
  );
  assert.match(
    await a.havenFails(...enable('db', '--group', 'g', '--to', 'site-b', '--pool', 'default')),
    /replication group g exists already/,
  );
  assert.deepEqual(
    (await a.api<Group[]>('GET', '/replication/groups')).map((x) => [x.name, x.role]),
    [['g', 'source']],
  );
  assert.equal(g.volumes[0]!.replica, 'big');

  // Text output an operator reads.
  const shown = await a.haven('replication', 'show', 'g');
  assert.match(shown, /^state: +replicating$/m);
  assert.match(shown, /^rpo: +\d+\.\d s$/m);
  const listed = await b.haven('replication', 'list');
  assert.match(listed, /^g +target +site-a +replica/m);
});

test('compression shrinks compressible data on the link; the bandwidth limit holds within 10% and changes while running', async (t) => {
  const { a, proxy } = await pairedSites(t, { proxied: true });
  // 24 MiB of text-like data (compressible) and 24 MiB of random data, on two volumes.
  const text = join(a.dir, '..', 'text.img');
  sparseImage(text, 64 * MiB, 24, (i) => Buffer.from(`line ${i} `.repeat(MiB / 6).slice(0, MiB)));
  const noise = join(a.dir, '..', 'noise.img');
  sparseImage(noise, 64 * MiB, 24, () => randomBytes(MiB));
  await a.haven('volume', 'import', text, '--name', 'text');
  await a.haven('volume', 'import', noise, '--name', 'noise');
  await a.haven('vm', 'create', 'vt', '--disk', 'text', ...guestArgs('ping'));
  await a.haven('vm', 'create', 'vn', '--disk', 'noise', ...guestArgs('ping'));

  let at = proxy!.upBytes;
  await a.haven('replication', 'enable', 'vt', '--group', 'gt', '--to', 'site-b', '--pool', 'default');
  await eventually('the compressible group to sync', () => group(a, 'gt'), replicating, 120_000);
  const compressed = proxy!.upBytes - at;
  t.diagnostic(`24 MiB of compressible data: ${(compressed / MiB).toFixed(2)} MiB on the wire`);
  assert.ok(compressed < 4 * MiB, `compressible data took ${compressed} bytes on the wire`);

  // 4 MiB/s: 24 MiB of random data takes about 6 s.
  const limit = 4 * MiB;
  at = proxy!.upBytes;
  const started = performance.now();
  await a.haven(
    'replication',
    'enable',
    'vn',
    '--group',
    'gn',
    '--to',
    'site-b',
    '--pool',
    'default',
    '--limit',
    '4M',
  );
  // Sample the rate over the middle of the transfer (the start and end are partial).
  await eventually(
    'the transfer to get going',
    async () => proxy!.upBytes - at,
    (n) => n > 4 * MiB,
  );
  const from = { bytes: proxy!.upBytes, time: performance.now() };
  await eventually(
    '8 MiB more',
    async () => proxy!.upBytes - from.bytes,
    (n) => n >= 8 * MiB,
    60_000,
  );
  const rate = ((proxy!.upBytes - from.bytes) * 1000) / (performance.now() - from.time);
  t.diagnostic(
    `limit ${limit} B/s: ${rate.toFixed(0)} B/s on the wire (${((rate / limit - 1) * 100).toFixed(1)}%)`,
  );
  assert.ok(Math.abs(rate / limit - 1) <= 0.1, `rate ${rate} B/s is not within 10% of ${limit}`);

  // Lifted while running: the rest goes at once.
  await a.haven('replication', 'limit', 'gn', '0');
  await eventually('the limited group to sync', () => group(a, 'gn'), replicating, 60_000);
  t.diagnostic(`the random group synced in ${((performance.now() - started) / 1000).toFixed(1)} s`);
  const random = proxy!.upBytes - at;
  assert.ok(random >= 24 * MiB, `random data cannot shrink: ${random} bytes`);
});
