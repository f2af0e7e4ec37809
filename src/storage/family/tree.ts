import { FANOUT } from './format.js';

/**
 * One page of a mapping tree, in memory. Level 0 is a leaf (entries point at data clusters);
 * above it, entries point at child pages. `children` caches loaded or new child nodes: a child
 * present there wins over the page number in `entries` (which is only brought up to date when
 * the child is written at commit).
 */
export class TreeNode {
  /** Page holding this node in the meta file; 0 while it has never been written. */
  page = 0;
  dirty = false;
  children: (TreeNode | undefined)[] | undefined;

  constructor(
    readonly level: number,
    /** Generation this node was born in; a member may change it in place only if it equals its writeGen. */
    readonly birth: number,
    readonly entries: Uint32Array = new Uint32Array(FANOUT * 2),
  ) {
    if (level > 0) this.children = new Array<TreeNode | undefined>(FANOUT);
  }

  /** A private copy for a member writing in generation `birth` (copy on write). */
  copy(birth: number): TreeNode {
    const n = new TreeNode(this.level, birth, this.entries.slice());
    if (this.children) n.children = this.children.slice();
    n.dirty = true;
    return n;
  }
}

/** FANOUT^level for every level a tree can have (40-bit pointers need at most 5 levels). */
export const SPANS: readonly number[] = [1, FANOUT, FANOUT ** 2, FANOUT ** 3, FANOUT ** 4, FANOUT ** 5];
