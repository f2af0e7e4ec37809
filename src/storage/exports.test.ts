import assert from 'node:assert/strict';
import { test } from 'node:test';
import { tempDir } from '../../test/support/tmp.js';
import { logger } from '../common/index.js';
import { NbdServer } from '../nbd/index.js';
import { StorageExports } from './exports.js';
import { StorageService } from './service.js';

const MiB = 1024 * 1024;

test('refreshVolume exports and withdraws one volume and its snapshots, leaving the others as they are', async (t) => {
  const dir = tempDir();
  const storage = StorageService.open(dir.path);
  t.after(() => {
    storage.close();
    dir.cleanup();
  });
  storage.createPool('default');
  storage.createVolume('a', MiB, 'default');
  storage.createVolume('b', MiB, 'default');
  const exports = new StorageExports(storage, new NbdServer({ log: logger('test-nbd') }));
  exports.refreshVolume('a');
  assert.deepEqual(exports.names(), ['a'], 'only the volume asked for');
  storage.snapshot('a', 's1');
  storage.snapshot('b', 's1');
  exports.refreshVolume('a');
  assert.deepEqual(exports.names(), ['a', 'a@s1']);
  exports.refresh();
  assert.deepEqual(exports.names(), ['a', 'a@s1', 'b', 'b@s1']);
  storage.deleteSnapshot('a', 's1');
  exports.refreshVolume('a');
  assert.deepEqual(exports.names(), ['a', 'b', 'b@s1'], "a's deleted snapshot is withdrawn, b's kept");
  storage.deleteVolume('a');
  exports.refreshVolume('a');
  assert.deepEqual(exports.names(), ['b', 'b@s1'], 'a deleted volume is withdrawn');
  exports.refreshVolume('nothing-of-that-name'); // no error, no change
  assert.deepEqual(exports.names(), ['b', 'b@s1']);
});
