// DESIGN.md's layering, checked over src/ (scripts/check-layers.mjs): no upward import, no cycle.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

test('no module imports a layer above its own, and no import cycle', () => {
  const root = fileURLToPath(new URL('../../', import.meta.url));
  const r = spawnSync(process.execPath, ['scripts/check-layers.mjs', 'src'], { cwd: root, encoding: 'utf8' });
  assert.equal(r.status, 0, r.stdout + r.stderr);
});
