// Backup transports through the site: san (the pool read directly), hotadd (the backup's
// snapshot over the site's unix socket), nbds and nbd (over TCP: the site's TLS listener, with
// its PSK, and the opt-in plain one); the same data gives the same snapshot whatever the
// transport; quick rollback as a site job; the per-host transfer limit makes a job wait for a
// slot instead of failing.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { HavenError } from '../../src/common/index.js';
import { Site, type Job } from '../../src/orchestration/index.js';
import { chooseTransport } from '../../src/protection/index.js';
import { Repository } from '../../src/repository/index.js';
import { makeTestPki } from '../support/tls.js';
import { tempDir } from '../support/tmp.js';

const MiB = 1024 * 1024;

async function fill(site: Site, volume: string, size: number): Promise<void> {
  site.storage.createVolume(volume, size, 'default');
  const dev = site.storage.openDevice(volume);
  // Data in some places, holes elsewhere: full backups must read only what is allocated.
  for (let at = 0; at < size; at += 4 * MiB) await dev.write(randomBytes(MiB), at + (at % (3 * MiB)));
  await dev.flush();
}

test('every transport gives the same snapshot; auto prefers san', async (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  const site = await Site.open({
    dataDir: join(dir.path, 'site'),
    nbdListen: '127.0.0.1:0',
    nbdListenPlain: '127.0.0.1:0',
  });
  t.after(() => site.close());
  assert.deepEqual(site.backups.transports(), ['san', 'hotadd', 'nbds', 'nbd']);
  await fill(site, 'v', 24 * MiB);

  const results: Record<string, { index: string; readBytes: number; transport?: string }> = {};
  for (const transport of ['san', 'hotadd', 'nbds', 'nbd', 'auto']) {
    // A repository each: every backup is a full read through its transport.
    const repo = join(dir.path, `repo-${transport}`);
    await Repository.init(repo);
    const job = site.backups.backup('test', { volume: 'v' }, { repo }, { transport });
    const done = await site.jobs.wait(job.id);
    assert.equal(done.state, 'succeeded', `${transport}: ${done.error}`);
    const r = done.result as { snapshot: string; transport: string };
    const snap = await (await Repository.open(repo)).snapshot(r.snapshot);
    results[transport] = {
      index: snap.disks[0]!.indexSha256,
      readBytes: snap.stats.readBytes,
      ...(snap.transport ? { transport: snap.transport } : {}),
    };
    assert.equal(r.transport, transport === 'auto' ? 'san' : transport);
    assert.equal(snap.transport, r.transport, 'the manifest records the transport');
    assert.ok(
      snap.stats.readBytes >= 6 * MiB && snap.stats.readBytes < 24 * MiB,
      'only allocated data is read',
    );
  }
  // Quick rollback through the site, to the newest backup (the "auto" one).
  const dev = site.storage.openDevice('v');
  const before = Buffer.alloc(24 * MiB);
  await dev.read(before, 0);
  await dev.write(randomBytes(MiB), 5 * MiB);
  const newest = (await (await Repository.open(join(dir.path, 'repo-auto'))).listSnapshots()).pop()!;
  const rb = await site.jobs.wait(
    site.backups.rollback('test', { repo: join(dir.path, 'repo-auto'), snapshot: newest.id, volume: 'v' }).id,
  );
  assert.equal(rb.state, 'succeeded', rb.error);
  const after = Buffer.alloc(24 * MiB);
  await dev.read(after, 0);
  assert.ok(after.equals(before), 'the rollback undid the write');
  assert.ok(
    (rb.result as { dataBytes: number }).dataBytes <= 2 * MiB,
    'only the changed chunks were rewritten',
  );

  const indexes = new Set(Object.values(results).map((r) => r.index));
  assert.equal(indexes.size, 1, `the same data gives the same snapshot: ${JSON.stringify(results)}`);
  assert.throws(
    () =>
      site.backups.backup(
        'test',
        { volume: 'v' },
        { repo: join(dir.path, 'repo-san') },
        { transport: 'fibre' },
      ),
    (e: HavenError) => e.code === 'INVALID_ARGUMENT' && /fibre/.test(e.message),
  );
  // The order auto tries, and a transport the site does not offer.
  assert.equal(chooseTransport('auto', ['nbd', 'hotadd']), 'hotadd');
  assert.equal(chooseTransport(undefined, ['nbd', 'nbds']), 'nbds');
  assert.throws(() => chooseTransport('san', ['nbd']), /san is not available.*available: nbd/);
});

test('nbds with X.509 credentials beside the PSK; the limit per host makes jobs wait', async (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  const pkiDir = join(dir.path, 'pki');
  mkdirSync(pkiDir);
  const pki = makeTestPki(pkiDir);
  const site = await Site.open({
    dataDir: join(dir.path, 'site'),
    nbdListen: '127.0.0.1:0',
    // The listener has a certificate for X.509 clients; the site's own backups still use the PSK.
    nbdTls: { cert: pki.serverCert, key: pki.serverKey, ca: pki.caCert },
    maxTransfersPerHost: 1,
  });
  t.after(() => site.close());
  assert.deepEqual(site.backups.transports(), ['san', 'hotadd', 'nbds']);
  await fill(site, 'a', 64 * MiB);
  await fill(site, 'b', 16 * MiB);

  const repoTls = join(dir.path, 'repo-tls');
  await Repository.init(repoTls);
  const overTls = await site.jobs.wait(
    site.backups.backup('test', { volume: 'b' }, { repo: repoTls }, { transport: 'nbds' }).id,
  );
  assert.equal(overTls.state, 'succeeded', overTls.error);

  // One slot: the second job waits for the first, then runs; both succeed.
  const repos = [join(dir.path, 'repo-a'), join(dir.path, 'repo-b')];
  for (const r of repos) await Repository.init(r);
  const first = site.backups.backup('test', { volume: 'a' }, { repo: repos[0]! }, { transport: 'hotadd' });
  const second = site.backups.backup('test', { volume: 'b' }, { repo: repos[1]! }, { transport: 'san' });
  const [j1, j2] = (await Promise.all([site.jobs.wait(first.id), site.jobs.wait(second.id)])) as [Job, Job];
  assert.equal(j1.state, 'succeeded', j1.error);
  assert.equal(j2.state, 'succeeded', j2.error);
  const log2 = site.jobs.logOf(second.id);
  const waited = log2.find((l) => /waiting for a transfer slot/.test(l.message));
  assert.ok(waited, `the second job waited: ${JSON.stringify(log2)}`);
  const began = log2.find((l) => /backing up volume b/.test(l.message))!;
  const firstSnap = await (
    await Repository.open(repos[0]!)
  ).snapshot((j1.result as { snapshot: string }).snapshot);
  assert.ok(
    began.time >= firstSnap.createdAt,
    `the second job began (${began.time}) after the first had made its snapshot (${firstSnap.createdAt})`,
  );
  assert.equal(site.transfers.used(hostname()), 0, 'every slot was released');
});
