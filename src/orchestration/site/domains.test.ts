// The domains of a Site (volumes, backups, VMs) on a real site in a temp data directory: what
// each refuses before it starts a job, and that every change, refused or not, is audited.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { tempDir } from '../../../test/support/tmp.js';
import { HavenError } from '../../common/index.js';
import { Site } from './site.js';

const MiB = 1024 * 1024;
const code = (c: string, re?: RegExp) => (e: unknown) =>
  e instanceof HavenError && e.code === c && (!re || re.test(e.message));

async function openSite(t: { after: (fn: () => unknown) => void }): Promise<Site> {
  const tmp = tempDir();
  const site = await Site.open({ dataDir: join(tmp.path, 'data'), name: 'unit', nbdListen: 'none' });
  t.after(async () => {
    await site.close();
    tmp.cleanup();
  });
  return site;
}

test('volumes: conflicts and bad input are refused before a job starts, and audited', async (t) => {
  const site = await openSite(t);
  const v = site.volumes;
  await v.createVolume('alice', 'v', 8 * MiB);
  await assert.rejects(() => v.createVolume('alice', 'v', 8 * MiB), code('CONFLICT'));
  assert.throws(
    () => v.importVolume('alice', { image: '/nonexistent.img', name: 'w' }),
    code('INVALID_ARGUMENT', /image \/nonexistent\.img does not exist on this site/),
  );
  assert.throws(() => v.importVolume('alice', { image: '/etc/hostname', name: 'v' }), code('CONFLICT'));
  const job = v.createSnapshot('alice', 'v', 's1');
  assert.equal((await site.jobs.wait(job.id)).state, 'succeeded');
  assert.throws(() => v.createSnapshot('alice', 'v', 's1'), code('CONFLICT', /already has a snapshot s1/));
  await assert.rejects(() => v.deleteVolume('alice', 'nope'), code('NOT_FOUND'));
  v.addBitmap('bob', 'v', 'b');
  assert.deepEqual(
    v.listBitmaps('v').map((b) => b.name),
    ['b'],
  );
  const events = site.events.query({});
  const seen = events.map((e) => `${e.actor} ${e.action} ${e.target} ${e.outcome}`);
  for (const want of ['alice volume.create v ok', 'alice volume.create v failed', 'bob bitmap.add v#b ok'])
    assert.ok(seen.includes(want), `${want} in ${seen.join('; ')}`);
  assert.equal(site.jobs.get(job.id).actor, 'alice');
});

test('backups: the transports follow the listeners; a transport not offered or a missing volume fails the request, not a job', async (t) => {
  const site = await openSite(t);
  assert.deepEqual(site.backups.transports(), ['san', 'hotadd']);
  assert.deepEqual(site.info().transports, ['san', 'hotadd']);
  await site.volumes.createVolume('a', 'v', 4 * MiB);
  const repo = { repo: join(site.dataDir, 'no-repo') };
  assert.throws(
    () => site.backups.backup('a', { volume: 'v' }, repo, { transport: 'nbds' }),
    code('INVALID_ARGUMENT', /nbds is not available on this site \(available: san, hotadd\)/),
  );
  assert.throws(() => site.backups.backup('a', { volume: 'nope' }, repo), code('NOT_FOUND'));
  assert.throws(() => site.backups.backup('a', { vm: 'nope' }, repo), code('NOT_FOUND'));
  // A repository that is not there fails the job, naming it.
  const job = site.backups.backup('a', { volume: 'v' }, repo);
  const end = await site.jobs.wait(job.id);
  assert.equal(end.state, 'failed');
  assert.match(end.error ?? '', /no-repo/);
});

test('vms: a VM that does not run cannot be stopped; a network in use by nothing can go', async (t) => {
  const site = await openSite(t);
  site.vms.createNetwork('a', 'n1', 'isolated');
  await site.volumes.createVolume('a', 'disk', 4 * MiB);
  site.vms.createVm('a', 'vm1', {
    cpus: 1,
    memoryMiB: 64,
    disks: [{ volume: 'disk' }],
    nics: [{ network: 'n1' }],
    boot: { kind: 'disk' },
  });
  assert.throws(() => site.vms.stopVm('a', 'vm1', {}), code('CONFLICT', /VM vm1 is defined, not running/));
  // The VM's disk cannot be deleted under it.
  await assert.rejects(() => site.volumes.deleteVolume('a', 'disk'), code('CONFLICT', /disk of VM\(s\) vm1/));
  site.vms.deleteVm('a', 'vm1');
  await site.volumes.deleteVolume('a', 'disk');
  site.vms.deleteNetwork('a', 'n1');
});
