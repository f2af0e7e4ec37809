// The test guest on Haven volumes served by the storage service: crash-consistent snapshots of a
// running guest, clones that diverge without touching their origin, ext4 that checks clean.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { type ServingStorage } from '../../src/orchestration/index.js';
import { serveStorage, importVolume, exportVolume } from '../../src/storage/index.js';
import { tempDir } from '../support/tmp.js';
import {
  ensureGuest,
  fileBytes,
  launchGuest,
  makeExt4Disk,
  patternBytes,
  sha256,
  type Guest,
} from '../support/guest.js';

const MiB = 1024 * 1024;

describe('the test guest on storage volumes', () => {
  const tmp = tempDir('haven-storage-guest-');
  let site: ServingStorage;
  const guests: Guest[] = [];
  const launch = (...a: Parameters<typeof launchGuest>) => {
    const g = launchGuest(...a);
    guests.push(g);
    return g;
  };
  const read = async (target: string, offset: number, length: number) => {
    const b = Buffer.alloc(length);
    await site.storage.openDevice(target).read(b, offset); // a snapshot's large reads go to the thread pool
    return b;
  };

  before(async () => {
    ensureGuest();
    site = await serveStorage({ dataDir: join(tmp.path, 'site'), socket: join(tmp.path, 'nbd.sock') });
    site.storage.createPool('p', {});
  });
  after(async () => {
    await Promise.all(guests.map((g) => g.kill()));
    await site?.stop();
    tmp.cleanup();
  });

  it('a snapshot of a running, writing guest holds every write the guest saw complete', async () => {
    site.storage.createVolume('vm1', 64 * MiB, 'p');
    site.exports.refresh();
    const seed = 5;
    const len = 4096;
    const slots = 32;
    const g = launch({ drives: [{ uri: site.uriOf('vm1') }] });
    await g.ready();
    g.send(`stream disk=vda seed=${seed} len=${len} rate=0 slots=${slots}`);
    await g.waitFor((r) => r.event === 'write' && (r.seq as number) >= 2 * slots, { timeoutMs: 60_000 });
    const seenBefore = g.writes();
    site.storage.snapshot('vm1', 'running');
    site.exports.refresh();
    await g.run('stop');
    const all = g.writes();
    assert.ok(all.length > seenBefore.length, 'the guest went on writing after the snapshot');
    // Per slot: the snapshot holds the last write reported before it, or a later one that was
    // already on the volume when the snapshot was taken — never anything older or other.
    for (let slot = 0; slot < slots; slot++) {
      const offset = slot * len;
      const before = seenBefore.filter((w) => w.offset === offset).map((w) => w.seq);
      const minSeq = Math.max(...before);
      const got = await read('vm1@running', offset, len);
      const match = all.find(
        (w) => w.offset === offset && w.seq >= minSeq && got.equals(patternBytes(seed, w.seq, offset, len)),
      );
      assert.ok(
        match,
        `slot ${slot}: the snapshot lacks write ${minSeq}, which the guest saw complete before it`,
      );
    }
    await g.poweroff();

    // A clone of the snapshot boots and diverges; origin and snapshot stay as they were.
    const originHash = sha256(await read('vm1', 0, 8 * MiB));
    const snapHash = sha256(await read('vm1@running', 0, 8 * MiB));
    site.storage.clone('vm1', 'running', 'vm1-test');
    site.exports.refresh();
    const c = launch({
      drives: [{ uri: site.uriOf('vm1-test') }],
      command: 'write-pattern disk=vda seed=77 count=16 len=65536',
    });
    await c.ready();
    await c.commandLineDone();
    await c.poweroff();
    for (const w of c.writes())
      assert.ok(
        (await read('vm1-test', w.offset, w.length)).equals(patternBytes(77, w.seq, w.offset, w.length)),
      );
    assert.equal(sha256(await read('vm1', 0, 8 * MiB)), originHash, 'the origin changed');
    assert.equal(sha256(await read('vm1@running', 0, 8 * MiB)), snapHash, 'the snapshot changed');
    assert.notEqual(sha256(await read('vm1-test', 0, 8 * MiB)), snapHash, 'the clone did not diverge');
  });

  it('ext4 on an imported volume: files written by the guest are in a snapshot that checks clean', async () => {
    const image = join(tmp.path, 'fs.img');
    await makeExt4Disk(image, 64 * MiB, { 'hello.txt': 'hello from the host\n' });
    await importVolume(site.storage, { image, name: 'fsvol', pool: 'p' });
    site.exports.refresh();
    const g = launch({ drives: [{ uri: site.uriOf('fsvol') }] });
    await g.ready();
    const { results } = await g.run('fs disk=vda seed=9 write=/a.bin:100000,/dir/b.bin:5000 read=/hello.txt');
    site.storage.snapshot('fsvol', 'after-fs');
    await g.poweroff();
    const out = join(tmp.path, 'snap.img');
    await exportVolume(site.storage, { source: 'fsvol@after-fs', image: out });
    execFileSync('e2fsck', ['-fn', out], { stdio: 'pipe' }); // throws unless clean
    for (const [path, len] of [
      ['/a.bin', 100000],
      ['/dir/b.bin', 5000],
    ] as const) {
      const content = execFileSync('debugfs', ['-R', `cat ${path}`, out], {
        stdio: ['ignore', 'pipe', 'ignore'],
      });
      assert.ok(content.equals(fileBytes(9, path, len)), `${path} differs in the snapshot`);
    }
    const hello = results.find((r) => r.event === 'file' && r.path === '/hello.txt');
    assert.equal(hello?.sha256, sha256('hello from the host\n'), 'the guest read the imported file');
  });
});
