import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { HavenError } from '../common/index.js';
import {
  decodePackIndex,
  encodePackIndex,
  newPackId,
  openPackIndex,
  packIdOf,
  packKey,
  sealPackIndex,
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

test('pack index sealed in an encrypted repository: nothing of it readable, moved or damaged is refused, plain still reads', () => {
  const packs: PackRecord[] = [
    {
      id: newPackId(),
      writtenAt: Date.now(),
      retainUntil: 0,
      entries: Array.from({ length: 50 }, (_, i) => ({
        hex: randomBytes(32).toString('hex'),
        offset: i * 65_600,
        length: 65_600,
      })),
    },
  ];
  const key = randomBytes(32);
  const name = 'index/' + newPackId();
  const plain = encodePackIndex(packs);
  const sealed = sealPackIndex(plain, key, name);
  assert.deepEqual(openPackIndex(sealed, key, name, 'x'), packs);
  // No digest, no pack id and not the plain form's magic can be found in what the bucket holds.
  for (const e of packs[0]!.entries) assert.equal(sealed.indexOf(Buffer.from(e.hex, 'hex')), -1);
  assert.equal(sealed.indexOf(Buffer.from(packs[0]!.id, 'hex')), -1);
  assert.equal(sealed.indexOf(Buffer.from('HVPI')), -1);
  // Unencrypted repositories, and index objects written before sealing, read as they are.
  assert.equal(sealPackIndex(plain, undefined, name), plain);
  assert.deepEqual(openPackIndex(plain, key, name, 'x'), packs);
  assert.deepEqual(openPackIndex(plain, undefined, name, 'x'), packs);
  const refused = (data: Buffer, k: Buffer | undefined, n: string, why: RegExp) =>
    assert.throws(
      () => openPackIndex(data, k, n, 'index/x'),
      (e: HavenError) => e.code === 'CORRUPT' && /index\/x/.test(e.message) && why.test(e.message),
    );
  const flipped = Buffer.from(sealed);
  flipped[40]! ^= 1;
  refused(flipped, key, name, /authentication failed/);
  refused(sealed, randomBytes(32), name, /authentication failed/);
  refused(sealed, key, 'index/' + newPackId(), /authentication failed/); // moved under another name
  refused(sealed, undefined, name, /encrypted/);
  refused(sealed.subarray(0, 20), key, name, /truncated/);
});
