import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { HavenError } from '../common/index.js';
import {
  decodePackIndex,
  encodePackIndex,
  newPackId,
  packIdOf,
  packKey,
  type PackRecord,
} from './pack-index.js';

test('pack index: round trip of packs and their chunks; damage and truncation are CORRUPT', () => {
  const packs: PackRecord[] = [0, 1, 3].map((n) => ({
    id: newPackId(),
    writtenAt: Date.now() - n,
    retainUntil: n ? Date.now() + 86_400_000 : 0,
    entries: Array.from({ length: n * 100 }, (_, i) => ({
      hex: randomBytes(32).toString('hex'),
      offset: i * 262_164,
      length: 262_164 - (i % 7),
    })),
  }));
  const data = encodePackIndex(packs);
  assert.deepEqual(decodePackIndex(data, 'x'), packs);
  assert.equal(packIdOf(packKey(packs[0]!.id)), packs[0]!.id);
  assert.match(packKey(packs[0]!.id), /^packs\/[0-9a-f]{2}\/[0-9a-f]{32}$/);
  const flipped = Buffer.from(data);
  flipped[100]! ^= 1;
  for (const bad of [flipped, data.subarray(0, data.length - 1), Buffer.from('HVPI')])
    assert.throws(
      () => decodePackIndex(bad, 'index/x'),
      (e: HavenError) => e.code === 'CORRUPT' && /index\/x/.test(e.message),
    );
});
