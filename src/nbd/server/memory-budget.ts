/**
 * The request data a whole server holds at once — write payloads until the device has them, read
 * replies in buffers until the socket has sent them — shared by all its connections, so that
 * memory does not grow with the number of clients. A connection whose next request does not fit
 * stops reading (its client waits, TCP pushes back) until another's bytes are given back. Reads
 * sent straight from the file (file-sender.ts) hold no buffer and are not counted.
 */
export class MemoryBudget {
  private usedBytes = 0;
  private peakBytes = 0;
  private readonly waiting = new Set<() => void>();

  constructor(readonly limit: number) {}

  get used(): number {
    return this.usedBytes;
  }

  /** The most held at once since the server started. */
  get peak(): number {
    return this.peakBytes;
  }

  /** Takes `bytes` if they fit; a request larger than the whole budget fits when nothing else is held. */
  tryTake(bytes: number): boolean {
    if (bytes === 0) return true;
    if (this.usedBytes > 0 && this.usedBytes + bytes > this.limit) return false;
    this.usedBytes += bytes;
    if (this.usedBytes > this.peakBytes) this.peakBytes = this.usedBytes;
    return true;
  }

  give(bytes: number): void {
    if (bytes === 0) return;
    this.usedBytes -= bytes;
    if (this.waiting.size === 0) return;
    const wake = [...this.waiting];
    this.waiting.clear();
    for (const w of wake) w();
  }

  /** Calls `wake` once, at the next give (a connection retries its request then). */
  wait(wake: () => void): void {
    this.waiting.add(wake);
  }

  forget(wake: () => void): void {
    this.waiting.delete(wake);
  }
}
