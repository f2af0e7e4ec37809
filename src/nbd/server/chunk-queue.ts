/**
 * Bytes received from a socket, kept as the chunks they arrived in: nothing is concatenated.
 * Headers are copied out (a few bytes); payloads are handed on as views of the chunks.
 */
export class ChunkQueue {
  private chunks: Buffer[] = [];
  private head = 0; // read position in chunks[0]
  private total = 0;

  get length(): number {
    return this.total;
  }

  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.total += chunk.length;
  }

  /** Copies the next `n` bytes into `out` (from 0) without consuming them. */
  peek(out: Buffer, n: number): void {
    let copied = 0;
    let i = 0;
    let at = this.head;
    while (copied < n) {
      const c = this.chunks[i]!;
      const take = Math.min(n - copied, c.length - at);
      c.copy(out, copied, at, at + take);
      copied += take;
      i++;
      at = 0;
    }
  }

  /** Consumes `n` bytes, returning them as views of the received chunks (no copy). */
  take(n: number): Buffer[] {
    const out: Buffer[] = [];
    while (n > 0) {
      const c = this.chunks[0]!;
      const take = Math.min(n, c.length - this.head);
      out.push(this.head === 0 && take === c.length ? c : c.subarray(this.head, this.head + take));
      this.advance(take);
      n -= take;
    }
    return out;
  }

  /** Consumes `n` bytes into one buffer (for option data and other small things). */
  takeCopy(n: number): Buffer {
    const out = Buffer.allocUnsafe(n);
    this.peek(out, n);
    this.skip(n);
    return out;
  }

  skip(n: number): void {
    while (n > 0) {
      const take = Math.min(n, this.chunks[0]!.length - this.head);
      this.advance(take);
      n -= take;
    }
  }

  /** Whether any queued bytes are views of `buf`. */
  references(buf: ArrayBufferLike): boolean {
    for (const c of this.chunks) if (c.buffer === buf) return true;
    return false;
  }

  /** Removes and returns whatever is buffered (e.g. bytes that arrived before a TLS upgrade). */
  drain(): Buffer[] {
    const rest = this.take(this.total);
    return rest;
  }

  private advance(n: number): void {
    this.head += n;
    this.total -= n;
    if (this.head === this.chunks[0]!.length) {
      this.chunks.shift();
      this.head = 0;
    }
  }
}
