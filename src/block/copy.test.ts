import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { tempDir } from '../../test/support/tmp.js';
import { HavenError, type MaybePromise } from '../common/index.js';
import { copyBlocks } from './copy.js';
import type { BlockDevice, WriteFlags } from './device.js';
import { NullDevice } from './null.js';
import { OverlayDevice } from './overlay.js';
import { PassThroughDevice } from './pass-through.js';
import { openRawFile } from './raw-file.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const code = (c: string) => (e: unknown) => e instanceof HavenError && e.code === c;
const identical = (a: string, b: string) =>
  execFileSync('qemu-img', ['compare', '-q', '-f', 'raw', '-F', 'raw', a, b], { stdio: 'pipe' });
const allocatedBytes = (p: string) => statSync(p).blocks * 512;

/**
 * 32 MiB: random data at 1 MiB and at 20–23 MiB, an allocated run of zeroes at 10 MiB (a source
 * that cannot tell it reads as zeroes), 4 KiB of data at the last page, holes elsewhere.
 */
async function source(dir: string): Promise<{ path: string; data: number }> {
  const path = join(dir, 'src.img');
  const dev = openRawFile(path, { create: true, size: 32 * MiB });
  await dev.write(randomBytes(MiB), MiB);
  await dev.write(Buffer.alloc(2 * MiB), 10 * MiB);
  await dev.write(randomBytes(3 * MiB), 20 * MiB);
  await dev.write(randomBytes(4 * KiB), 32 * MiB - 4 * KiB);
  dev.close();
  return { path, data: 4 * MiB + 4 * KiB };
}

test('a sparse source onto a fresh file: the same bytes, the holes kept, verified', async (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  const src = await source(dir.path);
  const dst = join(dir.path, 'dst.img');
  const s = openRawFile(src.path, { readOnly: true });
  const d = openRawFile(dst, { create: true, size: 32 * MiB });
  const phases = new Set<string>();
  const r = await copyBlocks(s, d, { fresh: true, onProgress: (p) => phases.add(p.phase) });
  s.close();
  d.close();
  identical(src.path, dst);
  assert.equal(r.dataBytes, src.data);
  assert.equal(r.zeroBytes, 32 * MiB - src.data);
  assert.equal(r.zeroedBytes, 0, 'a fresh target needs no zeroing');
  assert.ok(r.verified && r.digest);
  assert.deepEqual([...phases], ['copy', 'verify']);
  // The allocated zeroes of the source stay a hole in the copy.
  assert.ok(allocatedBytes(dst) <= src.data + 64 * KiB, `copy allocates ${allocatedBytes(dst)} bytes`);

  // The digest is a function of the content alone: a copy of the copy has it too.
  const again = openRawFile(dst, { readOnly: true });
  const r2 = await copyBlocks(again, new NullDevice(again.size), { readBack: false });
  again.close();
  assert.equal(r2.digest, r.digest);
  assert.equal(r2.verified, false, 'a sink cannot be read back');
});

test('onto a target holding other data: zero ranges are zeroed and the copy reads the same', async (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  const src = await source(dir.path);
  const dst = join(dir.path, 'old.img');
  writeFileSync(dst, randomBytes(32 * MiB));
  const s = openRawFile(src.path, { readOnly: true });
  const d = openRawFile(dst);
  const r = await copyBlocks(s, d, { chunkSize: MiB, requests: 3 });
  s.close();
  d.close();
  identical(src.path, dst);
  assert.equal(r.zeroedBytes, r.zeroBytes);
  assert.equal(r.zeroBytes, 32 * MiB - src.data);
});

/** Counts the reads in flight at once (a real device below; nothing answered for it). */
class InFlight extends PassThroughDevice {
  now = 0;
  most = 0;
  override get backingFd(): undefined {
    return undefined;
  }
  override read(buf: Uint8Array, offset: number): Promise<void> {
    this.most = Math.max(this.most, ++this.now);
    return new Promise<void>((res) => setImmediate(res))
      .then(() => this.inner.read(buf, offset))
      .finally(() => this.now--);
  }
}

test('no more than `requests` chunks are in flight, from an overlay whose block status is its own', async (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  const src = await source(dir.path);
  const base = openRawFile(src.path, { readOnly: true });
  const overlay = OverlayDevice.create(join(dir.path, 'overlay'), base);
  await overlay.write(Buffer.alloc(64 * KiB, 7), 5 * MiB); // over a hole of the base
  const counted = new InFlight(overlay);
  const d = openRawFile(join(dir.path, 'dst.img'), { create: true, size: 32 * MiB });
  const r = await copyBlocks(counted, d, { fresh: true, requests: 4, chunkSize: 256 * KiB });
  assert.ok(counted.most >= 2 && counted.most <= 4, `${counted.most} reads in flight at most`);
  assert.equal(r.dataBytes, src.data + 64 * KiB);
  const back = Buffer.alloc(64 * KiB);
  await d.read(back, 5 * MiB);
  assert.ok(back.equals(Buffer.alloc(64 * KiB, 7)));
  await overlay.close();
  base.close();
  d.close();
});

/** Loses one byte of the write that covers `at` (a disk that corrupts silently). */
class Flaky extends PassThroughDevice {
  constructor(
    inner: BlockDevice,
    private readonly at: number,
  ) {
    super(inner);
  }
  override write(
    data: Uint8Array | readonly Uint8Array[],
    offset: number,
    flags?: WriteFlags,
  ): MaybePromise<void> {
    const buf = Buffer.concat(Array.isArray(data) ? data : [data as Uint8Array]);
    if (offset <= this.at && this.at < offset + buf.length) buf[this.at - offset]! ^= 0xff;
    return this.inner.write(buf, offset, flags);
  }
}

test('verification fails a copy whose target does not read back what was written, naming the offset', async (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  const src = await source(dir.path);
  const s = openRawFile(src.path, { readOnly: true });
  const d = openRawFile(join(dir.path, 'dst.img'), { create: true, size: 32 * MiB });
  await assert.rejects(
    copyBlocks(s, new Flaky(d, 21 * MiB + 5), { fresh: true, chunkSize: MiB, targetName: 'dst.img' }),
    (e: unknown) => code('CORRUPT')(e) && /dst\.img differs .* at offset 22020096/.test((e as Error).message),
  );
  // Without verification the damage goes unseen: that is what the option is for.
  const r = await copyBlocks(s, new Flaky(d, 21 * MiB + 5), { fresh: true, verify: false });
  assert.equal(r.verified, false);
  assert.equal(r.digest, undefined);
  s.close();
  d.close();
});

test('a target too small or read-only is refused before anything is written', async (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  const src = await source(dir.path);
  const s = openRawFile(src.path, { readOnly: true });
  const small = openRawFile(join(dir.path, 'small.img'), { create: true, size: 16 * MiB });
  await assert.rejects(
    copyBlocks(s, small, { targetName: 'small.img' }),
    (e: unknown) => code('OUT_OF_RANGE')(e) && /small\.img holds 16777216 bytes/.test((e as Error).message),
  );
  small.close();
  assert.equal(allocatedBytes(join(dir.path, 'small.img')), 0);
  await assert.rejects(copyBlocks(s, openRawFile(src.path, { readOnly: true })), code('READ_ONLY'));
  s.close();
});

test('an aborted copy stops with the abort reason', async (t) => {
  const dir = tempDir();
  t.after(dir.cleanup);
  const src = await source(dir.path);
  const s = openRawFile(src.path, { readOnly: true });
  const d = openRawFile(join(dir.path, 'dst.img'), { create: true, size: 32 * MiB });
  const ac = new AbortController();
  await assert.rejects(
    copyBlocks(s, d, {
      fresh: true,
      chunkSize: 64 * KiB,
      signal: ac.signal,
      onProgress: (p) => p.done > MiB && ac.abort(new HavenError('CANCELLED', 'stop')),
    }),
    code('CANCELLED'),
  );
  s.close();
  d.close();
});
