import { closeSync, openSync, readSync, truncateSync, writeSync } from 'node:fs';
import { createCipheriv, createHash, randomBytes } from 'node:crypto';
import { run } from '../../test/support/proc.js';

const MiB = 1024 * 1024;
const CHUNK = 8 * MiB;

/**
 * Writes a fully allocated file of `size` bytes of non-zero, incompressible-looking data: one
 * random 1 MiB pattern repeated, with each 4 KiB block stamped with its offset so that no two
 * blocks are equal (nothing along the way can skip or deduplicate them). About as fast as the
 * page cache takes writes.
 */
export function createDataFile(path: string, size: number): void {
  const pattern = randomBytes(MiB);
  const buf = Buffer.alloc(CHUNK);
  for (let o = 0; o < CHUNK; o += MiB) pattern.copy(buf, o);
  const fd = openSync(path, 'w');
  try {
    for (let off = 0; off < size; off += CHUNK) {
      const len = Math.min(CHUNK, size - off);
      for (let b = 0; b < len; b += 4096) buf.writeBigUInt64LE(BigInt(off + b), b);
      writeSync(fd, buf, 0, len, off);
    }
  } finally {
    closeSync(fd);
  }
}

/** Deterministic pseudo-random bytes (AES-CTR keystream), fast enough for gigabytes. */
export function keystream(seed: number): (n: number) => Buffer {
  const key = createHash('sha256').update(`haven-bench-${seed}`).digest();
  const c = createCipheriv('aes-256-ctr', key, Buffer.alloc(16));
  return (n) => c.update(Buffer.alloc(n));
}

/** 40% zeros, 30% random, 30% copies of a few repeated regions, in 1 MiB blocks. */
export function makeDiskImage(path: string, size: number): void {
  const rnd = keystream(1);
  const repeated = Array.from({ length: 8 }, () => rnd(MiB));
  const fd = openSync(path, 'w');
  try {
    for (let at = 0; at < size; at += MiB) {
      const pick = rnd(1)[0]! % 10;
      if (pick < 4) continue;
      const block = pick < 7 ? rnd(MiB) : repeated[pick % 8]!;
      writeSync(fd, block, 0, Math.min(MiB, size - at), at);
    }
  } finally {
    closeSync(fd);
  }
  truncateSync(path, size);
}

/** SHA-256 of a file, or of its first `length` bytes, in hex. */
export function sha256File(path: string, length = Infinity): string {
  const h = createHash('sha256');
  const buf = Buffer.allocUnsafe(CHUNK);
  const fd = openSync(path, 'r');
  try {
    for (let at = 0; at < length;) {
      const n = readSync(fd, buf, 0, Math.min(buf.length, length - at), at);
      if (n <= 0) break;
      h.update(buf.subarray(0, n));
      at += n;
    }
  } finally {
    closeSync(fd);
  }
  return h.digest('hex');
}

/** Reads the whole file once so that it is in the page cache. */
export function warmFile(path: string): void {
  const buf = Buffer.allocUnsafe(CHUNK);
  const fd = openSync(path, 'r');
  try {
    let off = 0;
    for (;;) {
      const n = readSync(fd, buf, 0, CHUNK, off);
      if (n <= 0) break;
      off += n;
    }
  } finally {
    closeSync(fd);
  }
}

/** Writes dirty pages back, so that one run's writeback does not slow the next run down. */
export async function syncAll(): Promise<void> {
  await run('sync', []);
}

/** Parses sizes like `2G`, `256M`, `512MiB`, `1073741824` (binary multiples). */
export function parseSize(s: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?$/i.exec(s.trim());
  if (!m) throw new Error(`not a size: ${s}`);
  const mult = { '': 1, k: 1024, m: MiB, g: 1024 * MiB, t: 1024 * 1024 * MiB }[m[2]!.toLowerCase()] ?? 1;
  const v = Math.round(Number(m[1]) * mult);
  if (v % 4096) throw new Error(`size must be a multiple of 4 KiB: ${s}`);
  return v;
}

export function fmtSize(bytes: number): string {
  for (const [u, m] of [
    ['GiB', 1024 * MiB],
    ['MiB', MiB],
    ['KiB', 1024],
  ] as const)
    if (bytes >= m && bytes % m === 0) return `${bytes / m} ${u}`;
  return `${bytes} B`;
}
