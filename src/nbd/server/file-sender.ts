import type { NativeIo } from '../../block/index.js';

/** Reads at least this long are sent from the file; shorter ones are cheaper through a buffer. */
export const SEND_FILE_MIN = 64 * 1024;
/** One native job sends at most this many replies (the rest wait for the next job). */
const JOB_MAX = 64;
const EAGAIN = 11;

interface Item {
  header: Buffer;
  offset: number;
  length: number;
}

/** What the sender needs of its connection. */
export interface FileSenderHost {
  /** The socket's own writes (held while a job runs) may go out now; `idle` says when they are sent. */
  resumeWrites(): void;
  /**
   * The rest of a reply the socket would not take in time: to be sent through the socket's own
   * writes, before anything else, and then counted as finished.
   */
  sendRest(header: Buffer, headerDone: number, offset: number, length: number, dataDone: number): void;
  /** A reply left the server (or was dropped because the client is gone). */
  finished(length: number): void;
  /** The socket failed under a job (the client went away): close the connection. */
  failed(errno: number): void;
}

/**
 * Sends large read replies straight from the image file to the socket on the thread pool
 * (native sendFile: sendfile(2), no copy through user space and none on the event loop).
 * The socket has one writer at a time: while a job runs the connection holds its own writes, and
 * a job starts only when the connection has nothing unsent. Descriptors are duplicates, so that
 * neither number can be reused by another file while a job still runs after the connection closed.
 */
export class FileSender {
  private readonly queue: Item[] = [];
  private running = false;
  private closed = false;
  private released = false;
  private receiving = false;

  private constructor(
    private readonly native: NativeIo,
    private readonly sock: number,
    private readonly file: number,
    private readonly host: FileSenderHost,
  ) {}

  /** A sender for a plain socket and a file-backed device, or undefined where there is none. */
  static open(
    native: NativeIo | null,
    socketFd: number | undefined,
    fileFd: number | undefined,
    host: FileSenderHost,
  ): FileSender | undefined {
    if (!native || socketFd === undefined || socketFd < 0 || fileFd === undefined) return undefined;
    const sock = native.dup(socketFd);
    if (sock < 0) return undefined;
    const file = native.dup(fileFd);
    if (file < 0) {
      native.close(sock);
      return undefined;
    }
    return new FileSender(native, sock, file, host);
  }

  /** True while a job owns the socket's writes. */
  get busy(): boolean {
    return this.running;
  }

  get pending(): number {
    return this.queue.length;
  }

  add(header: Buffer, offset: number, length: number): void {
    this.queue.push({ header, offset, length });
  }

  /** Starts a job with what is queued; the caller checks that the socket has nothing unsent. */
  start(): void {
    if (this.running || this.closed || this.queue.length === 0) return;
    const items = this.queue.splice(0, JOB_MAX);
    const hl = items[0]!.header.length;
    const headers = Buffer.allocUnsafe(hl * items.length);
    const offsets = new Float64Array(items.length);
    const lengths = new Float64Array(items.length);
    items.forEach((it, i) => {
      it.header.copy(headers, i * hl);
      offsets[i] = it.offset;
      lengths[i] = it.length;
    });
    this.running = true;
    this.native.sendFile(this.sock, this.file, headers, hl, offsets, lengths, items.length, (sent, errno) =>
      this.done(items, sent, errno),
    );
  }

  /**
   * Receives write payloads from the socket into the file on the thread pool (the caller has
   * stopped reading the socket, and in loop mode holds its own writes): native recvWrites.
   */
  receive(size: number, state: Float64Array, replies: Uint8Array, done: (sockErrno: number) => void): void {
    this.receiving = true;
    this.native.recvWrites(this.sock, this.file, size, state, replies, (sockErrno) => {
      this.receiving = false;
      if (this.closed) this.release();
      done(sockErrno);
    });
  }

  /** Drops what is queued; the descriptors close once no job runs. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const it of this.queue.splice(0)) this.host.finished(it.length);
    if (!this.running && !this.receiving) this.release();
  }

  private done(items: Item[], sent: number, errno: number): void {
    // The job no longer writes the socket. Marked before the rest of a half-sent reply is handed
    // over: when that rest is ready at once (sendRest reads it from the page cache), it must go
    // into the socket's queue now, first. Were the job still marked running, the rest would wait
    // among the held writes while the completions below run the request loop, and the loop would
    // write other replies (or start the next job) into the middle of the half-sent one.
    this.running = false;
    let left = sent;
    let whole = 0; // replies sent completely
    while (whole < items.length && left >= items[whole]!.header.length + items[whole]!.length)
      left -= items[whole]!.header.length + items[whole++]!.length;
    const rest = items.slice(whole);
    if (!this.closed && rest.length > 0 && errno === EAGAIN) {
      // The client did not read for a while: the started reply is finished through the socket's
      // own queue (which waits for the client without holding a thread) before anything else is
      // written; the untouched ones wait for the next job.
      const it = rest.shift()!;
      const headerDone = Math.min(left, it.header.length);
      this.host.sendRest(it.header, headerDone, it.offset, it.length, left - headerDone);
      this.queue.unshift(...rest);
      rest.length = 0;
    }
    for (let i = 0; i < whole; i++) this.host.finished(items[i]!.length);
    if (this.closed) {
      for (const it of rest) this.host.finished(it.length);
      return this.release();
    }
    if (rest.length > 0) {
      for (const it of rest) this.host.finished(it.length);
      return this.host.failed(errno || 5);
    }
    this.host.resumeWrites();
  }

  private release(): void {
    if (this.released || this.running || this.receiving) return;
    this.released = true;
    this.native.close(this.sock);
    this.native.close(this.file);
  }
}
