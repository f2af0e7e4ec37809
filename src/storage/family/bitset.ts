/** A growable set of small non-negative integers, one bit each (1 TiB of 64 KiB clusters: 2 MiB). */
export class BitSet {
  private words = new Uint32Array(64);

  has(i: number): boolean {
    const w = i >>> 5;
    return w < this.words.length && (this.words[w]! & (1 << (i & 31))) !== 0;
  }

  add(i: number): void {
    const w = i >>> 5;
    if (w >= this.words.length) this.grow(w + 1);
    this.words[w]! |= 1 << (i & 31);
  }

  delete(i: number): void {
    const w = i >>> 5;
    if (w < this.words.length) this.words[w]! &= ~(1 << (i & 31));
  }

  /** Calls fn for every member, ascending. */
  forEach(fn: (i: number) => void): void {
    const words = this.words;
    for (let w = 0; w < words.length; w++) {
      let bits = words[w]!;
      while (bits !== 0) {
        const b = 31 - Math.clz32(bits & -bits);
        fn(w * 32 + b);
        bits &= bits - 1;
      }
    }
  }

  count(): number {
    let n = 0;
    this.forEach(() => n++);
    return n;
  }

  private grow(min: number): void {
    let len = this.words.length;
    while (len < min) len *= 2;
    const next = new Uint32Array(len);
    next.set(this.words);
    this.words = next;
  }
}
