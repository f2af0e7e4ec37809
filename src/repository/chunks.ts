import { HavenError } from '../common/errors.js';
import type { RepositoryBackend } from './backend.js';
import { ASIDE_PREFIX } from './chunk-claim.js';
import { chunkKey } from './format.js';

/** Where a gc sweep holds a chunk aside (chunk-claim.ts). */
export function asideKey(key: string): string {
  return key.replace(/[^/]+$/, (b) => ASIDE_PREFIX + b);
}

const notFound = (err: unknown) => err instanceof HavenError && err.code === 'NOT_FOUND';

/**
 * A stored chunk, read through the backend (the main thread's or a worker's). A gc sweep may hold
 * it aside for a moment (chunk-claim.ts), then put it back: both names are tried, in the order
 * that cannot miss it. Missing: CORRUPT naming the chunk (a snapshot refers to it).
 */
export async function readStoredChunk(
  backend: RepositoryBackend,
  digest: Buffer,
  scratch?: Buffer,
): Promise<Buffer> {
  const key = chunkKey(digest);
  for (const k of [key, asideKey(key), key])
    try {
      return await backend.read(k, scratch);
    } catch (err) {
      if (!notFound(err)) throw err;
    }
  throw new HavenError(
    'CORRUPT',
    `chunk ${digest.toString('hex')} is missing from repository ${backend.location}`,
  );
}
