// A worker thread of the backup pipeline, working on chunks in a shared arena that the main
// thread reads sources into and writes targets from. hash: the chunk's digest (or that it is all
// zeroes); store: compress, encrypt and, when the repository's backend can be opened here
// (RepositoryBackend.describe), write the chunk through this thread's own instance of it (its
// I/O is this thread's time, not the event loop's; no copy of the stored bytes back to the main
// thread; the repository makes them durable with one sync before the manifest that needs them);
// load: read a chunk, check it and decode it into a slot.
// Keeps one zstd context per direction for its whole life.
import { parentPort, workerData } from 'node:worker_threads';
// Narrow imports, past the layers' index files: a worker's start-up is on the critical path of
// every backup and restore, and the full surfaces cost it tens of milliseconds.
import { openBackend, type BackendDescription } from '../../repository/backend.js';
import { ChunkCodec } from '../../repository/chunk-codec.js';
import { readStoredChunk } from '../../repository/chunks.js';
import { chunkKey } from '../../repository/format.js';
import type { RepositoryKeys } from '../../repository/keys.js';

interface Init {
  keys?: { id: Uint8Array; data: Uint8Array };
  arena: SharedArrayBuffer;
  slotSize: number;
  /** The repository's backend, when this thread may open its own (it reads and writes chunks). */
  backend?: BackendDescription;
}

export type WorkerRequest =
  | { op: 'hash'; seq: number; slot: number; length: number }
  | { op: 'store'; seq: number; slot: number; length: number; digest: Uint8Array }
  | { op: 'load'; seq: number; slot: number; digest: Uint8Array; stored?: Uint8Array };

export type WorkerReply =
  | { seq: number; zero: true }
  | { seq: number; zero: false; digest: Uint8Array }
  /** store: `existed` when the chunk was in the repository already (it was touched, not written). */
  | { seq: number; existed: boolean; storedBytes: number; stored?: Uint8Array }
  | { seq: number; loaded: number }
  | { seq: number; error: string; code?: string };

const init = workerData as Init;
const keys: RepositoryKeys | undefined = init.keys
  ? { id: Buffer.from(init.keys.id), data: Buffer.from(init.keys.data) }
  : undefined;
const codec = new ChunkCodec(keys);
const arena = Buffer.from(init.arena);
const zeroes = Buffer.alloc(init.slotSize);
// Blocking I/O: this thread has nothing else to do meanwhile.
const backend = init.backend ? openBackend(init.backend, { blocking: true }) : undefined;
/** Reused for every chunk read (no allocation per chunk). */
let readBuffer = Buffer.alloc(init.slotSize + 4096);

async function handle(m: WorkerRequest): Promise<WorkerReply> {
  const slot = arena.subarray(m.slot * init.slotSize, (m.slot + 1) * init.slotSize);
  switch (m.op) {
    case 'hash': {
      const plain = slot.subarray(0, m.length);
      // equals() is a memcmp: far faster than any loop in JavaScript.
      if (plain.equals(zeroes.subarray(0, m.length))) return { seq: m.seq, zero: true };
      return { seq: m.seq, zero: false, digest: codec.digest(plain) };
    }
    case 'store': {
      const plain = slot.subarray(0, m.length);
      const digest = Buffer.from(m.digest.buffer, m.digest.byteOffset, m.digest.byteLength);
      if (backend) {
        const key = chunkKey(digest);
        // Claimed, so that a garbage collection running now or later keeps it (chunk-claim.ts).
        if (await backend.claim(key)) return { seq: m.seq, existed: true, storedBytes: 0 };
        const [header, payload] = codec.encodeParts(plain, digest);
        await backend.write(key, [header, payload]);
        return { seq: m.seq, existed: false, storedBytes: header.length + payload.length };
      }
      const stored = codec.encode(plain, digest);
      return { seq: m.seq, existed: false, storedBytes: stored.length, stored };
    }
    case 'load': {
      const digest = Buffer.from(m.digest.buffer, m.digest.byteOffset, m.digest.byteLength);
      let stored: Buffer;
      if (m.stored) stored = Buffer.from(m.stored.buffer, m.stored.byteOffset, m.stored.byteLength);
      else {
        stored = await readStoredChunk(backend!, digest, readBuffer);
        if (stored.buffer !== readBuffer.buffer && stored.length > readBuffer.length)
          readBuffer = Buffer.alloc(stored.length); // a bigger chunk than any before: keep room for it
      }
      return { seq: m.seq, loaded: codec.decodeInto(stored, digest, slot) };
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
