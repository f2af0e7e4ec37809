import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { tempDir } from '../../test/support/tmp.js';
import { StorageService } from './service.js';
import { HavenError } from '../common/index.js';

const MiB = 1024 * 1024;

test('pools and site-wide volume names survive a reopen; the data directory is locked', (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  let svc = StorageService.open(join(dir.path, 'data'));
  svc.createPool('fast', { tier: 'fast' });
  svc.createPool('bulk', { path: join(dir.path, 'elsewhere'), capacityBytes: 64 * MiB });
  svc.createVolume('a', MiB, 'fast');
  svc.createVolume('b', MiB, 'bulk');
  assert.throws(
    () => svc.createVolume('a', MiB, 'bulk'),
    (e: HavenError) => e.code === 'CONFLICT',
  );
  assert.throws(() => svc.createVolume('c', MiB, 'nope'), /no pool nope/);
  assert.throws(() => StorageService.open(join(dir.path, 'data')), /in use by process/);
  svc.snapshot('b', 's1');
  svc.clone('b', 's1', 'b2');
  assert.throws(() => svc.deletePool('bulk'), /still holds 2 volume/);
  svc.close();

  svc = StorageService.open(join(dir.path, 'data'));
  assert.deepEqual(
    svc.listPools().map((p) => [p.name, p.capabilities.tier, p.capacityBytes]),
    [
      ['bulk', 'standard', 64 * MiB],
      ['fast', 'fast', svc.listPools()[1]!.capacityBytes],
    ],
  );
  assert.deepEqual(
    svc.listVolumes().map((v) => [v.name, v.pool]),
    [
      ['a', 'fast'],
      ['b', 'bulk'],
      ['b2', 'bulk'],
    ],
  );
  svc.deleteVolume('a');
  svc.deletePool('fast');
  assert.deepEqual(
    svc.listPools().map((p) => p.name),
    ['bulk'],
  );
  svc.close();
});
