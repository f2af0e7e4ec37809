// The test guest on a copy-on-write overlay over a read-only base, served by Haven's NBD server:
// the base never changes, and a commit produces exactly what the guest saw.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { cpSync, readFileSync, writeFileSync } from 'node:fs';
import { createHash, randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { NbdServer } from '../../src/nbd/index.js';
import { OverlayDevice, openRawFile } from '../../src/block/index.js';
import { tempDir } from '../support/tmp.js';
import { ensureGuest, launchGuest, patternBytes } from '../support/guest.js';

const MiB = 1024 * 1024;
const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

test('a guest writes through an overlay; the base is untouched and commit gives what the guest saw', async (t) => {
  ensureGuest();
  const tmp = tempDir();
  t.after(tmp.cleanup);
  const basePath = join(tmp.path, 'base.img');
  writeFileSync(basePath, randomBytes(32 * MiB));
  const baseHash = sha(readFileSync(basePath));
  const base = openRawFile(basePath, { readOnly: true });
  const overlay = OverlayDevice.create(join(tmp.path, 'overlay'), base);
  const server = new NbdServer();
  server.addExport({ name: 'disk', device: overlay });
  const sock = join(tmp.path, 'nbd.sock');
  await server.listen({ path: sock });

  // Unaligned writes, so that copy on write has to keep the base's bytes around them.
  const g = launchGuest({
    drives: [{ uri: `nbd+unix:///disk?socket=${sock}` }],
    command: `write-pattern disk=vda seed=4 at=0:4096,${MiB + 512}:70000,${20 * MiB - 1000}:3000`,
  });
  try {
    await g.ready();
    await g.commandLineDone();
    await g.run('verify-pattern disk=vda seed=4 at=0:4096,' + `${MiB + 512}:70000,${20 * MiB - 1000}:3000`);
    await g.poweroff();
  } finally {
    await g.kill();
    await server.close();
  }
  assert.equal(sha(readFileSync(basePath)), baseHash, 'the base changed');

  // What the guest saw: the base with its writes on top.
  const expected = readFileSync(basePath);
  for (const w of g.writes()) patternBytes(4, w.seq, w.offset, w.length).copy(expected, w.offset);
  const seen = Buffer.alloc(32 * MiB);
  await overlay.read(seen, 0);
  assert.equal(sha(seen), sha(expected), 'the overlay does not read as base + guest writes');

  const targetPath = join(tmp.path, 'production.img');
  cpSync(basePath, targetPath);
  const target = openRawFile(targetPath);
  await overlay.commit(target);
  target.close();
  assert.equal(sha(readFileSync(targetPath)), sha(expected), 'commit did not produce what the guest saw');
  overlay.discard();
  base.close();
});
