/**
 * Reads that run off the event loop (VolumeFamily.readAsync) look the mapping up when they start
 * and read the data file later: a cluster freed meanwhile (its snapshot deleted, say) must not be
 * reused or punched before every read that began before it was freed has ended, or that read
 * would return another block's data. Freed clusters wait here, tagged with the commit that freed
 * them, and are let go once no read that began at or before that commit is still running.
 */
export class ReadLeases<T> {
  /** Commits so far: a read's lease is the count when it began. */
  private commits = 0;
  /** Running reads by lease. */
  private readonly running = new Map<number, number>();
  private readonly held: { commit: number; items: T[] }[] = [];
  private heldItems = 0;

  /** Items freed and not let go yet. */
  get holding(): number {
    return this.heldItems;
  }

  /** Reads running now. */
  get reads(): number {
    let n = 0;
    for (const c of this.running.values()) n += c;
    return n;
  }

  begin(): number {
    this.running.set(this.commits, (this.running.get(this.commits) ?? 0) + 1);
    return this.commits;
  }

  /** A read ended; returns the items that may be let go now. */
  end(lease: number): T[] {
    const left = (this.running.get(lease) ?? 1) - 1;
    if (left > 0) this.running.set(lease, left);
    else this.running.delete(lease);
    return this.releasable();
  }

  /** A commit freed `items` (durably); returns the items that may be let go now (these, when no read runs). */
  committed(items: T[]): T[] {
    if (items.length) {
      this.held.push({ commit: this.commits, items });
      this.heldItems += items.length;
    }
    this.commits++;
    return this.releasable();
  }

  /** The items held (freed, not let go): not to be freed again. */
  heldSet(): Set<T> {
    const out = new Set<T>();
    for (const h of this.held) for (const x of h.items) out.add(x);
    return out;
  }

  private releasable(): T[] {
    if (!this.held.length) return [];
    let oldest = Infinity;
    for (const lease of this.running.keys()) oldest = Math.min(oldest, lease);
    const out: T[] = [];
    while (this.held.length && this.held[0]!.commit < oldest) {
      const h = this.held.shift()!;
      this.heldItems -= h.items.length;
      for (const x of h.items) out.push(x);
    }
    return out;
  }
}
