// The volume semantics every pool of the site must have (test/support/pool-cases.ts), on a file
// pool; own-pool-rbd.test.ts runs the same cases on an RBD pool in Ceph.
import { after, before, test } from 'node:test';
import { join } from 'node:path';
import { poolCases, type PoolUnderTest } from '../../test/support/pool-cases.js';
import { tempDir } from '../../test/support/tmp.js';
import type { OwnPool } from './own-pool.js';
import { Pool } from './pool.js';

const dir = tempDir('haven-own-pool-file-');
let pool: OwnPool;
const path = join(dir.path, 'p');
const subject: PoolUnderTest = {
  kind: 'file',
  pool: () => pool,
  reopen: () => {
    pool.close();
    pool = Pool.open(path);
    return pool;
  },
};
before(() => {
  pool = Pool.create(path, { name: 'p' });
});
after(() => {
  pool?.close();
  dir.cleanup();
});

for (const c of poolCases) test(`file pool: ${c.name}`, () => c.run(subject));
