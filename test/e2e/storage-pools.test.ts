// Where a pool may live, through the site daemon: the API and the CLI refuse system directories,
// relative paths, the data directory and non-empty foreign directories; deleting a pool removes
// only Haven's files (never the site's data, never the operator's).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { site } from '../support/site.js';
import { treeHash } from '../support/tmp.js';

test('pool paths through the daemon: refused where they would do harm; delete keeps what is not Haven', async (t) => {
  const s = await site(t);
  const { url } = JSON.parse(readFileSync(join(s.dir, 'api.json'), 'utf8')) as { url: string };
  const token = readFileSync(join(s.dir, 'api-token'), 'utf8').trim();
  const post = async (body: unknown) => {
    const res = await fetch(`${url}/api/v1/pools`, {
      method: 'POST',
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
      body: JSON.stringify(body),
    });
    return { status: res.status, body: (await res.json()) as { error?: { message: string } } };
  };
  const etc = await post({ name: 'p', path: '/etc' });
  assert.equal(etc.status, 400);
  assert.match(etc.body.error!.message, /inside \/etc, a directory of the operating system/);
  const rel = await post({ name: 'p', path: 'pools/p' });
  assert.equal(rel.status, 400);
  assert.match(rel.body.error!.message, /is relative: give an absolute path/);

  // The example: the data directory as a pool, then its delete, took the whole site.
  const siteBefore = readdirSync(s.dir).sort();
  assert.match(await s.havenFails('pool', 'create', 'b', '--path', s.dir), /it is the site's data directory/);
  assert.match(await s.havenFails('pool', 'create', 'b', '--path', dirname(s.dir)), /holds the site's data/);
  const foreign = join(dirname(s.dir), 'foreign');
  mkdirSync(foreign);
  writeFileSync(join(foreign, 'report.odt'), 'not Haven');
  const foreignHash = treeHash(foreign);
  assert.match(await s.havenFails('pool', 'create', 'b', '--path', foreign), /not empty \(report\.odt\)/);
  assert.equal(treeHash(foreign), foreignHash);

  // A pool outside the data directory; the operator drops a file into it; delete leaves that.
  const outside = join(dirname(s.dir), 'bulk');
  await s.haven('pool', 'create', 'bulk', '--path', outside);
  await s.haven('volume', 'create', 'v', '--size', '4M', '--pool', 'bulk');
  await s.haven('volume', 'delete', 'v');
  writeFileSync(join(outside, 'README'), 'the operator wrote this');
  await s.haven('pool', 'delete', 'bulk');
  assert.deepEqual(readdirSync(outside), ['README']);
  const pools = JSON.parse(await s.haven('pool', 'list', '--json')) as { name: string }[];
  assert.deepEqual(
    pools.map((p) => p.name),
    ['default'],
  );
  assert.deepEqual(readdirSync(s.dir).sort(), siteBefore);
  assert.ok(existsSync(join(s.dir, 'api-token')));
});
