// A worker thread of the backup pipeline, working on chunks in a shared arena that the main
// thread reads sources into and writes targets from. hash: the chunk's digest (or that it is all
// zeroes); store: compress, encrypt and, for a repository in a local directory, write the chunk
// file here with synchronous calls (this thread's time, not the event loop's; no copy of the
// stored bytes back to the main thread; the repository makes them durable with one filesystem
// sync before the manifest that needs them); load: read a chunk, check it and decode it into a slot.
// Keeps one zstd context per direction for its whole life.
import { randomBytes } from 'node:crypto';
import {
  closeSync,
  fstatSync,
  mkdirSync,
  openSync,
  readSync,
  readvSync,
  renameSync,
  rmSync,
  writeSync,
  writevSync,
} from 'node:fs';
import { dirname, join } from 'node:path';
import { parentPort, workerData } from 'node:worker_threads';
// Narrow imports, past the layers' index files: a worker's start-up is on the critical path of
// every backup and restore, and the full surfaces cost it tens of milliseconds.
import { nativeIo } from '../../block/native.js';
import { HavenError, fromSystemError } from '../../common/errors.js';
import { ChunkCodec } from '../../repository/chunk-codec.js';
import { asidePath, claimFileSync } from '../../repository/chunk-claim.js';
import { CHUNK_HEADER, TMP_PREFIX, chunkKey, readChunkHeader } from '../../repository/format.js';
import type { RepositoryKeys } from '../../repository/keys.js';

interface Init {
  keys?: { id: Uint8Array; data: Uint8Array };
  arena: SharedArrayBuffer;
  slotSize: number;
  /** The repository's directory when chunks are files there (the worker reads and writes them). */
  chunkRoot?: string;
}

export type WorkerRequest =
  | { op: 'hash'; seq: number; slot: number; length: number }
  /** hash, then (local repository) store unless this worker stored or found it already: one hand-off. */
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
const keys: RepositoryKeys | undefined = init.keys
  ? { id: Buffer.from(init.keys.id), data: Buffer.from(init.keys.data) }
  : undefined;
const codec = new ChunkCodec(keys);
const arena = Buffer.from(init.arena);
const zeroes = Buffer.alloc(init.slotSize);
const madeDirs = new Set<string>();
const native = nativeIo();

function storeLocal(root: string, digest: Buffer, plain: Buffer): { existed: boolean; storedBytes: number } {
  const target = join(root, chunkKey(digest));
  try {
    // Claimed, so that a garbage collection running now or later keeps it (chunk-claim.ts).
    if (claimFileSync(target)) return { existed: true, storedBytes: 0 };
  } catch (err) {
    throw fromSystemError(err, `repository ${root}: cannot claim ${chunkKey(digest)}`);
  }
  const parts = codec.encodeParts(plain, digest);
  const dir = dirname(target);
  if (!madeDirs.has(dir)) {
    mkdirSync(dir, { recursive: true });
    madeDirs.add(dir);
  }
  // The temporary name is in the chunk's own folder: new inodes spread over the filesystem's
  // groups instead of contending for one (see docs/repository-format.md).
  const tmp = join(dir, `${TMP_PREFIX}${randomBytes(8).toString('hex')}`);
  const storedBytes = parts.reduce((n, p) => n + p.length, 0);
  try {
    const fd = openSync(tmp, 'wx', 0o600);
    try {
      let at = writevSync(fd, parts);
      if (at < storedBytes) {
        const rest = Buffer.concat(parts);
        while (at < storedBytes) at += writeSync(fd, rest, at);
      }
      // The disk starts on it now, beside the CPUs, so the sync before the manifest is short.
      native?.startWriteback(fd, 0, 0);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, target);
  } catch (err) {
    rmSync(tmp, { force: true });
    throw fromSystemError(err, `repository ${root}: cannot write ${chunkKey(digest)}`);
  }
  return { existed: false, storedBytes };
}

/**
 * Digests this worker stored or found stored (and claimed) during one backup, so that a chunk it
 * meets again costs no file-system call. Forgotten when the next backup starts: each claims what
 * it reuses. Bounded: past the limit, a chunk is claimed again.
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

let readBuffer = Buffer.alloc(0);

/** A chunk file opened for reading; undefined if there is none under that name. */
function openChunk(path: string, key: string): number | undefined {
  try {
    return openSync(path, 'r');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw fromSystemError(err, `repository ${init.chunkRoot}: cannot read ${key}`);
  }
}

/** The local repository's chunk file of `digest`, opened for reading. */
function openStored(digest: Buffer): number {
  const key = chunkKey(digest);
  const path = join(init.chunkRoot!, key);
  let fd = openChunk(path, key);
  // A gc sweep may hold the chunk aside for a moment (chunk-claim.ts), then put it back.
  fd ??= openChunk(asidePath(path), key) ?? openChunk(path, key);
  if (fd === undefined)
    throw new HavenError(
      'CORRUPT',
      `chunk ${digest.toString('hex')} is missing from repository ${init.chunkRoot}`,
    );
  return fd;
}

/** Reads from `fd` at `at` until `buffers` are full or the file ends; returns the bytes read. */
function readFully(fd: number, buffers: Buffer[], at: number): number {
  let done = 0;
  for (const b of buffers) {
    let got = 0;
    while (got < b.length) {
      const n = readSync(fd, b, got, b.length - got, at + done + got);
      if (n === 0) return done + got;
      got += n;
    }
    done += got;
  }
  return done;
}

/**
 * Reads a chunk of the local repository and decodes it into `slot`, checked against its digest;
 * returns its length. A chunk stored as it is (neither compressed nor encrypted) is read straight
 * into the slot and checked there: no copy. Any other is read whole into a reused buffer and
 * decoded from there (its payload read into the slot first, when it fits, then moved out).
 */
function loadLocal(digest: Buffer, slot: Buffer): number {
  const what = `chunk ${chunkKey(digest)}`;
  const fd = openStored(digest);
  try {
    const size = fstatSync(fd).size;
    const payloadBytes = size - CHUNK_HEADER;
    if (payloadBytes >= 0 && payloadBytes <= slot.length) {
      // One readv: the header apart, the payload where a raw chunk's plaintext belongs.
      const payload = slot.subarray(0, payloadBytes);
      const n = readvSync(fd, [header, payload], 0);
      const got = n === size ? n : readFully(fd, [header, payload], 0);
      if (got !== size)
        throw new HavenError('CORRUPT', `${what}: truncated (${got} of ${size} bytes could be read)`);
      const h = readChunkHeader(header, size, what);
      if (h.flags === 0) return codec.decodePayloadInto(0, h.plainLength, payload, digest, slot);
      // Compressed or encrypted: the payload moves out of the slot it decodes into.
      if (readBuffer.length < payloadBytes)
        readBuffer = Buffer.alloc(Math.max(payloadBytes, init.slotSize + 4096));
      payload.copy(readBuffer);
      return codec.decodePayloadInto(
        h.flags,
        h.plainLength,
        readBuffer.subarray(0, payloadBytes),
        digest,
        slot,
      );
    }
    // Larger than a slot (an encrypted chunk that did not compress): read whole.
    if (readBuffer.length < size) readBuffer = Buffer.alloc(Math.max(size, init.slotSize + 4096));
    const got = readFully(fd, [readBuffer.subarray(0, size)], 0);
    return codec.decodeInto(readBuffer.subarray(0, got), digest, slot);
  } catch (err) {
    if (err instanceof HavenError) throw err;
    throw fromSystemError(err, `repository ${init.chunkRoot}: cannot read ${chunkKey(digest)}`);
  } finally {
    closeSync(fd);
  }
}

const header = Buffer.alloc(CHUNK_HEADER);

function handle(m: WorkerRequest): WorkerReply {
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
      // Not local: the caller stores it (its repository's own calls); the digest says what.
      if (!init.chunkRoot) return { seq: m.seq, zero: false, digest };
      if (!known.add(digest, m.backup))
        return { seq: m.seq, zero: false, digest, existed: true, storedBytes: 0 };
      return { seq: m.seq, zero: false, digest, ...storeLocal(init.chunkRoot, digest, plain) };
    }
    case 'store': {
      const plain = slot.subarray(0, m.length);
      const digest = Buffer.from(m.digest.buffer, m.digest.byteOffset, m.digest.byteLength);
      if (init.chunkRoot) return { seq: m.seq, ...storeLocal(init.chunkRoot, digest, plain) };
      const stored = codec.encode(plain, digest);
      return { seq: m.seq, existed: false, storedBytes: stored.length, stored };
    }
    case 'load': {
      const digest = Buffer.from(m.digest.buffer, m.digest.byteOffset, m.digest.byteLength);
      if (!m.stored) return { seq: m.seq, loaded: loadLocal(digest, slot) };
      const stored = Buffer.from(m.stored.buffer, m.stored.byteOffset, m.stored.byteLength);
      return { seq: m.seq, loaded: codec.decodeInto(stored, digest, slot) };
    }
  }
}

parentPort!.on('message', (m: WorkerRequest) => {
  let reply: WorkerReply;
  try {
    reply = handle(m);
  } catch (err) {
    reply = { seq: m.seq, error: (err as Error).message, code: (err as { code?: string }).code };
  }
  parentPort!.postMessage(reply);
});
