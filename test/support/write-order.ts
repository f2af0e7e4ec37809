/**
 * Prefix consistency of disk images written by test guests (`write-pattern` / `stream`, see
 * docs/guest.md): do the disks hold the state after some prefix of each writer's writes? For each
 * writer (a guest: one total order of durable writes over its disks) the checker finds the cut P,
 * the number of its writes in the prefix, such that every slot (a disk range the writer wrote)
 * holds exactly the latest write of the prefix to it — or its initial content when the prefix has
 * none — or reports the first violation: a slot holding a later write while an earlier one is
 * missing, or a slot holding bytes of no write (torn, foreign). Reads only the slots, so disks of
 * any size cost what the writes cost.
 *
 * Across writers in one consistency group nothing orders the writes here: each writer's cut is
 * found on its own. The group's real constraint (a write of guest A completed before guest B
 * issued one: B's write present means A's present) needs a clock shared by the guests, which the
 * test cannot observe; callers who know such pairs pass them as `constraints`.
 */
import { closeSync, openSync, readSync } from 'node:fs';
import { patternBytes } from './guest.js';

/** One write of a writer, as the guest reported it (GuestWrite has these fields). */
export interface OrderedWrite {
  seq: number;
  disk: string;
  offset: number;
  length: number;
}

/** Fills `buf` with the disk's bytes from `offset` (BlockDevice.read has this shape). */
export type DiskReader = (buf: Uint8Array, offset: number) => void | Promise<void>;

export interface Writer {
  /** Names the writer in results and messages (e.g. the guest's name). */
  name: string;
  /** The pattern's seed (`seed=` of the instruction). */
  seed: string | number;
  /** Every write the writer made durable, in its order (the order of its `write` results). */
  writes: readonly OrderedWrite[];
  /** The image of each disk the writes name (`/dev/vdb` → a reader of its replica). */
  disks: Readonly<Record<string, DiskReader>>;
  /** The content before the writes, per disk (default: zeroes). */
  initial?: Readonly<Record<string, DiskReader>>;
}

/** Cross-writer order: when write `after.seq` of `after.writer` is in its cut, so must `before` be. */
export interface Constraint {
  before: { writer: string; seq: number };
  after: { writer: string; seq: number };
}

export interface Cut {
  /** How many of the writer's writes are in the prefix (0: none, writes.length: all). */
  prefix: number;
  /** The seq of the prefix's last write; undefined for the empty prefix. */
  lastSeq: number | undefined;
}

export interface SlotRef {
  writer: string;
  disk: string;
  offset: number;
  /** The write concerned (undefined: the slot's initial content). */
  seq: number | undefined;
}

export type Violation =
  /** `present` is on disk while `missing`, earlier in the writer's order, is not (nor anything after it on its slot). */
  | { kind: 'order'; present: SlotRef; missing: SlotRef }
  /** The slot starts like write `seq` (or its initial content) but is not all of it. */
  | { kind: 'torn'; slot: SlotRef; firstLine: string }
  /** The slot holds neither its initial content nor any write the writer made to it. */
  | { kind: 'foreign'; slot: SlotRef; firstLine: string }
  /** A cross-writer constraint does not hold. */
  | { kind: 'constraint'; constraint: Constraint };

export type Consistency =
  { ok: true; cuts: Record<string, Cut> } | { ok: false; violation: Violation; message: string };

interface Slot {
  disk: string;
  offset: number;
  length: number;
  /** Positions (indices in the writer's order) of the writes to this slot, ascending. */
  positions: number[];
}

const LINE = /^haven seed=(\S+) seq=(\d+) off=(\d+)$/;

/** Groups a writer's writes by slot; rejects what the checker cannot judge (overlaps, unknown disks). */
function slotsOf(w: Writer): Slot[] {
  const byKey = new Map<string, Slot>();
  const seqs = new Set<number>();
  w.writes.forEach((x, i) => {
    if (seqs.has(x.seq)) throw new Error(`writer ${w.name}: seq ${x.seq} appears twice in its writes`);
    seqs.add(x.seq);
    if (!w.disks[x.disk])
      throw new Error(`writer ${w.name}: write ${x.seq} is to ${x.disk}, which has no reader`);
    if (!(x.length > 0)) throw new Error(`writer ${w.name}: write ${x.seq} has length ${x.length}`);
    const key = `${x.disk}\0${x.offset}`;
    const s = byKey.get(key);
    if (!s) byKey.set(key, { disk: x.disk, offset: x.offset, length: x.length, positions: [i] });
    else if (s.length !== x.length)
      throw new Error(
        `writer ${w.name}: writes to ${x.disk} at ${x.offset} differ in length (${s.length}, ${x.length}): slots must be fixed`,
      );
    else s.positions.push(i);
  });
  const slots = [...byKey.values()].sort((a, b) =>
    a.disk < b.disk ? -1 : a.disk > b.disk ? 1 : a.offset - b.offset,
  );
  for (let i = 1; i < slots.length; i++) {
    const [a, b] = [slots[i - 1]!, slots[i]!];
    if (a.disk === b.disk && a.offset + a.length > b.offset)
      throw new Error(`writer ${w.name}: slots ${a.offset} and ${b.offset} of ${a.disk} overlap`);
  }
  return slots;
}

/**
 * What the slot holds: the position (index in the writer's order) of the write, -1 for its initial
 * content, or a torn/foreign violation. `initial` is a scratch buffer of the slot's length.
 */
async function identify(w: Writer, slot: Slot, buf: Buffer, initial: Buffer): Promise<number | Violation> {
  await w.disks[slot.disk]!(buf, slot.offset);
  const nl = buf.indexOf(10);
  const firstLine = buf.subarray(0, nl < 0 ? Math.min(buf.length, 80) : nl).toString('latin1');
  const ref = (seq: number | undefined): SlotRef => ({
    writer: w.name,
    disk: slot.disk,
    offset: slot.offset,
    seq,
  });
  const m = LINE.exec(firstLine);
  if (m && m[1] === String(w.seed) && Number(m[3]) === slot.offset) {
    const seq = Number(m[2]);
    const pos = slot.positions.find((p) => w.writes[p]!.seq === seq);
    if (pos !== undefined) {
      if (buf.equals(patternBytes(w.seed, seq, slot.offset, slot.length))) return pos;
      return { kind: 'torn', slot: ref(seq), firstLine };
    }
  }
  const readInitial = w.initial?.[slot.disk];
  if (readInitial) await readInitial(initial, slot.offset);
  else initial.fill(0);
  if (buf.equals(initial)) return -1;
  // A slot shorter than its pattern line has no whole line to parse: compare with each write.
  for (const p of slot.positions)
    if (buf.equals(patternBytes(w.seed, w.writes[p]!.seq, slot.offset, slot.length))) return p;
  // Starting like the initial content (its first 512 bytes) but not all of it: torn too.
  const head = Math.min(buf.length, 512);
  if (buf.subarray(0, head).equals(initial.subarray(0, head)))
    return { kind: 'torn', slot: ref(undefined), firstLine };
  return { kind: 'foreign', slot: ref(undefined), firstLine };
}

const where = (r: SlotRef) =>
  `${r.seq === undefined ? 'initial content' : `write ${r.seq}`} of ${r.writer} on ${r.disk} at ${r.offset}`;

function explain(v: Violation): string {
  switch (v.kind) {
    case 'order':
      return `not a prefix: ${where(v.present)} is there, but the earlier ${where(v.missing)} is missing (its slot holds an older state)`;
    case 'torn':
      return `torn slot: ${v.slot.writer}'s slot on ${v.slot.disk} at ${v.slot.offset} starts as ${v.slot.seq === undefined ? 'its initial content' : `write ${v.slot.seq}`} but is not all of it`;
    case 'foreign':
      return `foreign slot: ${v.slot.writer}'s slot on ${v.slot.disk} at ${v.slot.offset} holds none of its writes nor its initial content (first line "${v.firstLine}")`;
    case 'constraint':
      return `cross-writer order broken: write ${v.constraint.after.seq} of ${v.constraint.after.writer} is there, but write ${v.constraint.before.seq} of ${v.constraint.before.writer}, which precedes it, is not`;
  }
}

function fail(violation: Violation): Consistency {
  return { ok: false, violation, message: explain(violation) };
}

/**
 * Whether the writers' disks hold the state after some prefix of each writer's writes; the cut per
 * writer, or the first violation. Throws (naming the writer) on writes it cannot judge: duplicate
 * seqs, disks without a reader, overlapping slots, a slot written with different lengths.
 */
export async function checkPrefixConsistency(
  writers: readonly Writer[],
  constraints: readonly Constraint[] = [],
): Promise<Consistency> {
  const cuts: Record<string, Cut> = {};
  for (const w of writers) {
    if (cuts[w.name]) throw new Error(`two writers are named ${w.name}`);
    // Each slot bounds the cut: holding write p (or the initial content, p = -1) with its next
    // write at q (none: the end), the prefix takes p and not q, so p + 1 <= cut <= q.
    let lo = 0;
    let hi = w.writes.length;
    let loRef: SlotRef | undefined;
    let hiRef: SlotRef | undefined;
    const scratch = new Map<number, [Buffer, Buffer]>();
    for (const slot of slotsOf(w)) {
      let bufs = scratch.get(slot.length);
      if (!bufs) scratch.set(slot.length, (bufs = [Buffer.alloc(slot.length), Buffer.alloc(slot.length)]));
      const held = await identify(w, slot, ...bufs);
      if (typeof held !== 'number') return fail(held);
      const next = held < 0 ? slot.positions[0]! : slot.positions[slot.positions.indexOf(held) + 1];
      if (held + 1 > lo) {
        lo = held + 1;
        loRef = { writer: w.name, disk: slot.disk, offset: slot.offset, seq: w.writes[held]!.seq };
      }
      if (next !== undefined && next < hi) {
        hi = next;
        hiRef = { writer: w.name, disk: slot.disk, offset: slot.offset, seq: w.writes[next]!.seq };
      }
    }
    // lo > hi: the write at hi is missing while the one at lo - 1, later, is there.
    if (lo > hi) return fail({ kind: 'order', present: loRef!, missing: hiRef! });
    // lo == hi here whenever lo <= hi: every write between them would bound its own slot tighter.
    cuts[w.name] = { prefix: lo, lastSeq: lo > 0 ? w.writes[lo - 1]!.seq : undefined };
  }
  for (const c of constraints) {
    const inCut = (r: { writer: string; seq: number }) => {
      const w = writers.find((x) => x.name === r.writer);
      if (!w) throw new Error(`constraint names writer ${r.writer}, which is not among the writers`);
      const pos = w.writes.findIndex((x) => x.seq === r.seq);
      if (pos < 0) throw new Error(`constraint names write ${r.seq} of ${r.writer}, which it did not make`);
      return pos < cuts[r.writer]!.prefix;
    };
    if (inCut(c.after) && !inCut(c.before)) return fail({ kind: 'constraint', constraint: c });
  }
  return { ok: true, cuts };
}

/**
 * A DiskReader of an image file (raw), with its close. Bytes past the end of the file read as
 * zeroes (a sparse image truncated short).
 */
export function fileReader(path: string): { read: DiskReader; close: () => void } {
  const fd = openSync(path, 'r');
  return {
    read: (buf, offset) => {
      let done = 0;
      while (done < buf.length) {
        const n = readSync(fd, buf, done, buf.length - done, offset + done);
        if (n === 0) break;
        done += n;
      }
      buf.fill(0, done);
    },
    close: () => closeSync(fd),
  };
}
