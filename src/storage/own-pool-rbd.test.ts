// The volume semantics every pool of the site must have (test/support/pool-cases.ts), on an RBD
// pool in a throw-away single-node Ceph (one per file, stopped by PID in `after`, also when a
// case failed); own-pool-file.test.ts runs the same cases on a file pool. Here the cases also
// check what Ceph says: `rbd snap ls`, `rbd children`, `rbd export`, `rbd ls`.
import { after, before, test } from 'node:test';
import { readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { startCeph, type Ceph } from '../../test/support/ceph.js';
import { poolCases, sha, type PoolUnderTest } from '../../test/support/pool-cases.js';
import { tempDir } from '../../test/support/tmp.js';
import type { OwnPool } from './own-pool.js';
import { RbdPool } from './rbd/pool.js';

const PREFIX = 'cases-';
const dir = tempDir('haven-own-pool-rbd-');
const path = join(dir.path, 'p');
let ceph: Ceph | undefined;
let pool: OwnPool | undefined;
let exports = 0;

const image = (target: string) => {
  const at = target.indexOf('@');
  return at < 0 ? `${PREFIX}${target}` : `${PREFIX}${target.slice(0, at)}${target.slice(at)}`;
};
const subject: PoolUnderTest = {
  kind: 'rbd',
  pool: () => pool!,
  reopen: () => {
    pool!.close();
    pool = RbdPool.open(path);
    return pool;
  },
  ceph: {
    snapshots: async (volume) =>
      (
        JSON.parse(await ceph!.rbd('snap', 'ls', '--format', 'json', `${ceph!.pool}/${image(volume)}`)) as {
          name: string;
        }[]
      ).map((s) => s.name),
    children: async (volume, snapshot) =>
      (await ceph!.rbd('children', `${ceph!.pool}/${image(volume)}@${snapshot}`))
        .split('\n')
        .filter(Boolean)
        .map((l) => l.trim().replace(`${ceph!.pool}/${PREFIX}`, '')),
    exportHash: async (target) => {
      const file = join(dir.path, `export-${exports++}`);
      await ceph!.rbd('export', '--no-progress', `${ceph!.pool}/${image(target)}`, file);
      try {
        return sha(readFileSync(file));
      } finally {
        rmSync(file);
      }
    },
    images: async () =>
      (await ceph!.rbd('ls', ceph!.pool))
        .split('\n')
        .filter((l) => l.startsWith(PREFIX))
        .map((l) => l.slice(PREFIX.length)),
  },
};
before(async () => {
  ceph = await startCeph();
  pool = await RbdPool.create(path, { name: 'p', conf: ceph.conf, cephPool: ceph.pool, prefix: PREFIX });
});
after(async () => {
  pool?.close();
  await ceph?.stop();
  dir.cleanup();
});

for (const c of poolCases) test(`RBD pool: ${c.name}`, () => c.run(subject));
