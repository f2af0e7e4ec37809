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
  /** What each holder (a connection) holds now. */
  private readonly held = new Map<object, number>();

  constructor(readonly limit: number) {}

  get used(): number {
    return this.usedBytes;
  }

  /** The most held at once since the server started. */
  get peak(): number {
    return this.peakBytes;
  }

  /**
   * Takes `bytes` for `holder` if they fit. A holder that holds nothing may always take one
   * request, whatever the others hold: a client that stops reading its replies then holds up only
   * itself, never the other clients (a VM beside a stuck backup). So the most held is the limit
   * plus one request per connection, still bounded.
   */
  tryTake(bytes: number, holder: object): boolean {
    if (bytes === 0) return true;
    const mine = this.held.get(holder) ?? 0;
    if (mine > 0 && this.usedBytes + bytes > this.limit) return false;
    this.usedBytes += bytes;
    this.held.set(holder, mine + bytes);
    if (this.usedBytes > this.peakBytes) this.peakBytes = this.usedBytes;
    return true;
  }

  give(bytes: number, holder: object): void {
    if (bytes === 0) return;
    this.usedBytes -= bytes;
    const left = (this.held.get(holder) ?? 0) - bytes;
    if (left > 0) this.held.set(holder, left);
    else this.held.delete(holder);
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
