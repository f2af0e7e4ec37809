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
 * `read` of a stored chunk's key, through the backend (the main thread's or a worker's). A gc
 * sweep may hold it aside for a moment (chunk-claim.ts), then put it back: both names are tried,
 * in the order that cannot miss it. Missing: CORRUPT naming the chunk (a snapshot refers to it).
 */
async function findStoredChunk<T>(
  backend: RepositoryBackend,
  digest: Buffer,
  read: (key: string) => Promise<T>,
): Promise<T> {
  const key = chunkKey(digest);
  for (const k of [key, asideKey(key), key])
    try {
      return await read(k);
    } catch (err) {
      if (!notFound(err)) throw err;
    }
  throw new HavenError(
    'CORRUPT',
    `chunk ${digest.toString('hex')} is missing from repository ${backend.location}`,
  );
}

/** A stored chunk, whole (a view of `scratch` when it is large enough). */
export function readStoredChunk(
  backend: RepositoryBackend,
  digest: Buffer,
  scratch?: Buffer,
): Promise<Buffer> {
  return findStoredChunk(backend, digest, (k) => backend.read(k, scratch));
}

/**
 * A stored chunk read into `buffers` in turn (RepositoryBackend.readInto); returns its size
 * (larger than the buffers when they could not hold it). Undefined: the backend cannot.
 */
export function readStoredChunkInto(
  backend: RepositoryBackend,
  digest: Buffer,
  buffers: readonly Buffer[],
): Promise<number> | undefined {
  const readInto = backend.readInto?.bind(backend);
  return readInto && findStoredChunk(backend, digest, (k) => readInto(k, buffers));
}
