/**
 * Reuses large reply buffers. Without it every 256 KiB read reply is a fresh ArrayBuffer, and
 * they pile up between garbage collections (measured: +120 MiB RSS during one nbdcopy). Buffers
 * are keyed by exact size: a client reads with one or two request sizes at a time.
 */
export class BufferPool {
  private readonly free = new Map<number, Buffer[]>();
  private retained = 0;

  constructor(
    private readonly minSize = 64 * 1024,
    private readonly maxRetained = 32 * 1024 * 1024,
  ) {}

  acquire(size: number): Buffer {
    if (size < this.minSize) return Buffer.allocUnsafe(size);
    const list = this.free.get(size);
    const b = list?.pop();
    if (b) {
      this.retained -= size;
      return b;
    }
    return Buffer.allocUnsafeSlow(size);
  }

  /** Gives a buffer back once nothing refers to it any more (e.g. the socket has written it). */
  release(b: Buffer): void {
    if (b.length < this.minSize || this.retained + b.length > this.maxRetained) return;
    let list = this.free.get(b.length);
    if (!list) this.free.set(b.length, (list = []));
    list.push(b);
    this.retained += b.length;
  }
}
