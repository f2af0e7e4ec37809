// A worker thread of the backup pipeline, working on chunks in a shared arena that the main
// thread reads sources into and writes targets from. hash: the chunk's digest (or that it is all
// zeroes); put: hash, then store unless stored already, in one hand-off; store: compress, encrypt
// and, when the repository's backend can be opened here (RepositoryBackend.describe), write the
// chunk through this thread's own instance of it (its I/O is this thread's time, not the event
// loop's; no copy of the stored bytes back to the main thread; the repository makes them durable
// with one sync before the manifest that needs them); load: read a chunk, check it and decode it
// into a slot. Keeps one zstd context per direction for its whole life.
import { parentPort, workerData } from 'node:worker_threads';
// Narrow imports, past the layers' index files: a worker's start-up is on the critical path of
// every backup and restore, and the full surfaces cost it tens of milliseconds.
import { openBackend, type BackendDescription } from '../../repository/backend.js';
import { HavenError } from '../../common/errors.js';
import { ChunkCodec } from '../../repository/chunk-codec.js';
import { readStoredChunk, readStoredChunkInto } from '../../repository/chunks.js';
import { CHUNK_HEADER, chunkKey, readChunkHeader } from '../../repository/format.js';
import type { ChunkKeys } from '../../repository/keys.js';

interface Init {
  keys?: { id: Uint8Array; data: Uint8Array };
  arena: SharedArrayBuffer;
  slotSize: number;
  /** The repository's backend, when this thread may open its own (it reads and writes chunks). */
  backend?: BackendDescription;
}

export type WorkerRequest =
  | { op: 'hash'; seq: number; slot: number; length: number }
  /** hash, then (own backend) store unless this worker stored or found it already: one hand-off. */
  | { op: 'put'; seq: number; slot: number; length: number; backup: number }
  | { op: 'store'; seq: number; slot: number; length: number; digest: Uint8Array }
  | { op: 'load'; seq: number; slot: number; digest: Uint8Array; stored?: Uint8Array };

export type WorkerReply =
  | { seq: number; zero: true }
  | { seq: number; zero: false; digest: Uint8Array; existed?: boolean; storedBytes?: number }
  /** store: `existed` when the chunk was in the repository already (it was touched, not written). */
  | { seq: number; existed: boolean; storedBytes: number; stored?: Uint8Array }
  | { seq: number; loaded: number }
  | { seq: number; error: string; code?: string };

const init = workerData as Init;
const keys: ChunkKeys | undefined = init.keys
  ? { id: Buffer.from(init.keys.id), data: Buffer.from(init.keys.data) }
  : undefined;
const codec = new ChunkCodec(keys);
const arena = Buffer.from(init.arena);
const zeroes = Buffer.alloc(init.slotSize);
// Blocking I/O: this thread has nothing else to do meanwhile.
const backend = init.backend ? openBackend(init.backend, { blocking: true }) : undefined;
/** Reused for every chunk read (no allocation per chunk). */
let readBuffer = Buffer.alloc(init.slotSize + 4096);
const header = Buffer.alloc(CHUNK_HEADER);

/**
 * Digests this worker stored or found stored (and claimed) during one backup, so that a chunk it
 * meets again costs no call to the backend. Forgotten when the next backup starts: each claims
 * what it reuses. Bounded: past the limit, a chunk is claimed again.
 */
const known = {
  set: new Set<string>(),
  backup: 0,
  add(digest: Buffer, backup: number): boolean {
    if (backup !== this.backup) {
      this.set.clear();
      this.backup = backup;
    }
    const k = digest.toString('latin1');
    if (this.set.has(k)) return false;
    if (this.set.size < 1 << 18) this.set.add(k);
    return true;
  },
};

/** Stores the chunk through this thread's backend unless it is there (then claims it). */
async function storeOwn(
  store: NonNullable<typeof backend>,
  digest: Buffer,
  plain: Buffer,
): Promise<{ existed: boolean; storedBytes: number }> {
  const key = chunkKey(digest);
  // Claimed, so that a garbage collection running now or later keeps it (chunk-claim.ts).
  if (await store.claim(key)) return { existed: true, storedBytes: 0 };
  const parts = codec.encodeParts(plain, digest);
  await store.write(key, parts);
  return { existed: false, storedBytes: parts.reduce((n, p) => n + p.length, 0) };
}

/**
 * Reads a chunk through this thread's backend and decodes it into `slot`, checked against its
 * digest; returns its length. Where the backend can (readInto), the header is read apart and the
 * payload straight into the slot: a chunk stored as it is (neither compressed nor encrypted) is
 * checked there, uncopied. Any other is decoded from a reused buffer.
 */
async function loadOwn(store: NonNullable<typeof backend>, digest: Buffer, slot: Buffer): Promise<number> {
  const what = `chunk ${chunkKey(digest)}`;
  const size = await readStoredChunkInto(store, digest, [header, slot]);
  if (size !== undefined && size <= CHUNK_HEADER + slot.length) {
    const h = readChunkHeader(header, size, what);
    const payload = slot.subarray(0, size - CHUNK_HEADER);
    if (h.flags === 0) return codec.decodePayloadInto(0, h.plainLength, payload, digest, slot);
    // Compressed or encrypted: the payload moves out of the slot it decodes into.
    if (readBuffer.length < payload.length) readBuffer = Buffer.alloc(payload.length);
    payload.copy(readBuffer);
    return codec.decodePayloadInto(
      h.flags,
      h.plainLength,
      readBuffer.subarray(0, payload.length),
      digest,
      slot,
    );
  }
  // No readInto, or larger than a slot (an encrypted chunk that did not compress): read whole.
  const stored = await readStoredChunk(store, digest, readBuffer);
  if (stored.buffer !== readBuffer.buffer && stored.length > readBuffer.length)
    readBuffer = Buffer.alloc(stored.length); // a bigger chunk than any before: keep room for it
  return codec.decodeInto(stored, digest, slot);
}

async function handle(m: WorkerRequest): Promise<WorkerReply> {
  const slot = arena.subarray(m.slot * init.slotSize, (m.slot + 1) * init.slotSize);
  switch (m.op) {
    case 'hash': {
      const plain = slot.subarray(0, m.length);
      // equals() is a memcmp: far faster than any loop in JavaScript.
      if (plain.equals(zeroes.subarray(0, m.length))) return { seq: m.seq, zero: true };
      return { seq: m.seq, zero: false, digest: codec.digest(plain) };
    }
    case 'put': {
      const plain = slot.subarray(0, m.length);
      if (plain.equals(zeroes.subarray(0, m.length))) return { seq: m.seq, zero: true };
      const digest = codec.digest(plain);
      // No backend here: the caller stores it (its repository's own calls); the digest says what.
      if (!backend) return { seq: m.seq, zero: false, digest };
      if (!known.add(digest, m.backup))
        return { seq: m.seq, zero: false, digest, existed: true, storedBytes: 0 };
      return { seq: m.seq, zero: false, digest, ...(await storeOwn(backend, digest, plain)) };
    }
    case 'store': {
      const plain = slot.subarray(0, m.length);
      const digest = Buffer.from(m.digest.buffer, m.digest.byteOffset, m.digest.byteLength);
      if (backend) return { seq: m.seq, ...(await storeOwn(backend, digest, plain)) };
      const stored = codec.encode(plain, digest);
      return { seq: m.seq, existed: false, storedBytes: stored.length, stored };
    }
    case 'load': {
      const digest = Buffer.from(m.digest.buffer, m.digest.byteOffset, m.digest.byteLength);
      if (m.stored) {
        const stored = Buffer.from(m.stored.buffer, m.stored.byteOffset, m.stored.byteLength);
        return { seq: m.seq, loaded: codec.decodeInto(stored, digest, slot) };
      }
      if (!backend) throw new HavenError('INTERNAL', 'chunk worker asked to load without a backend');
      return { seq: m.seq, loaded: await loadOwn(backend, digest, slot) };
    }
  }
}

parentPort!.on('message', async (m: WorkerRequest) => {
  let reply: WorkerReply;
  try {
    reply = await handle(m);
  } catch (err) {
    reply = { seq: m.seq, error: (err as Error).message, code: (err as { code?: string }).code };
  }
  parentPort!.postMessage(reply);
});
