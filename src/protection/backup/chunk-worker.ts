// A worker thread of the backup pipeline: hashes, compresses and encrypts chunks read into a
// shared arena by the main thread (encode), or decrypts, decompresses and checks stored chunks
// (decode). Keeps one zstd context per direction for its whole life.
import { parentPort, workerData } from 'node:worker_threads';
import { ChunkCodec, type RepositoryKeys } from '../../repository/index.js';

interface Init {
  keys?: { id: Uint8Array; data: Uint8Array };
  arena: SharedArrayBuffer;
  slotSize: number;
}

export type WorkerRequest =
  | { op: 'encode'; seq: number; slot: number; length: number }
  | { op: 'decode'; seq: number; slot: number; stored: Uint8Array; digest: Uint8Array };

export type WorkerReply =
  | { seq: number; zero: true }
  | { seq: number; zero: false; digest: Uint8Array; stored: Uint8Array }
  | { seq: number; decoded: number }
  | { seq: number; error: string; code?: string };

const init = workerData as Init;
const keys: RepositoryKeys | undefined = init.keys
  ? { id: Buffer.from(init.keys.id), data: Buffer.from(init.keys.data) }
  : undefined;
const codec = new ChunkCodec(keys);
const arena = Buffer.from(init.arena);

function isZero(b: Buffer): boolean {
  // Compare 8 bytes at a time through a BigUint64Array view where aligned.
  const words = new BigUint64Array(b.buffer, b.byteOffset, b.length >>> 3);
  for (let i = 0; i < words.length; i++) if (words[i] !== 0n) return false;
  for (let i = words.length << 3; i < b.length; i++) if (b[i] !== 0) return false;
  return true;
}

parentPort!.on('message', (m: WorkerRequest) => {
  const slot = arena.subarray(m.slot * init.slotSize, m.slot * init.slotSize + init.slotSize);
  try {
    if (m.op === 'encode') {
      const plain = slot.subarray(0, m.length);
      if (isZero(plain)) return parentPort!.postMessage({ seq: m.seq, zero: true } satisfies WorkerReply);
      const digest = codec.digest(plain);
      const stored = codec.encode(plain, digest);
      parentPort!.postMessage({ seq: m.seq, zero: false, digest, stored } satisfies WorkerReply);
    } else {
      const plain = codec.decode(
        Buffer.from(m.stored.buffer, m.stored.byteOffset, m.stored.byteLength),
        Buffer.from(m.digest),
      );
      plain.copy(slot);
      parentPort!.postMessage({ seq: m.seq, decoded: plain.length } satisfies WorkerReply);
    }
  } catch (err) {
    parentPort!.postMessage({
      seq: m.seq,
      error: (err as Error).message,
      code: (err as { code?: string }).code,
    } satisfies WorkerReply);
  }
});
