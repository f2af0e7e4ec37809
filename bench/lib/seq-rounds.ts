/**
 * Sequential NBD write and read in interleaved rounds: the method of the nbd section of
 * docs/benchmarks.md, shared by bench/nbd.ts (its sequential rows) and
 * scripts/nbd-seq-compare.mjs (which imports the compiled copy from dist/).
 *
 * Each round starts every entry in turn, the order rotating from round to round, so that a slow
 * minute of a shared machine falls on a different server each round rather than on one. For each
 * entry: start the server; `settle` (`sync`, then the source and the target read once, so both
 * are in the page cache with nothing dirty); time `copies` `nbdcopy SOURCE URI` back to back
 * (write); `settle` the target (the `sync` is untimed, so that the next measurement does not pay
 * for this one's writeback); time `nbdcopy URI null:` (read); stop the server. The summary is the
 * median per entry and, against a peer, the median of the per-round ratios (each ratio between
 * two measurements at most a minute or two apart).
 */
import { writeFileSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { warmFile } from './image.js';
import { median } from './timing.js';

export { median };

/** One started server, listening. */
export interface SeqServer {
  uri: string;
  /** The server's pid, for `probes`. */
  pid?: number;
  stop(): Promise<void>;
}

export interface SeqEntry {
  name: string;
  /** Starts a fresh server on the target for this entry's turn in a round. */
  start(): Promise<SeqServer>;
  /** Runs after the server listens and before the settle (e.g. a fio warm-up phase). */
  before?(server: SeqServer): Promise<void>;
  /** Wraps every timed nbdcopy command line (e.g. in `nice`). */
  wrap?(cmd: string, args: string[]): [string, string[]];
}

export interface SeqSample {
  round: number;
  /** GB/s (10⁹ bytes/s). */
  write: number;
  read: number;
  /** Per probe: its increase per GB during the write copies and during the read. */
  writeProbes: Record<string, number>;
  readProbes: Record<string, number>;
}

export interface SeqOptions {
  entries: SeqEntry[];
  rounds: number;
  source: string;
  target: string;
  /** Bytes of both files. */
  size: number;
  /** Write copies per entry per round, back to back with no sync between (default 1). */
  copies?: number;
  /** Bound on one nbdcopy, ms. */
  timeoutMs?: number;
  /** `echo 1 > /proc/sys/vm/drop_caches` in every settle, when writable (it drops other tenants' caches too). */
  drop?: boolean;
  /** Counters read from the server's pid before and after each timed phase (CPU seconds …). */
  probes?: Record<string, (pid: number) => number>;
  /** Called with each sample as it is taken (progress lines). */
  onSample?(name: string, s: SeqSample): void;
  /** Called when an entry fails in a round; without it the error is thrown. */
  onError?(name: string, round: number, e: Error): void;
}

export interface SeqResult {
  samples: Record<string, SeqSample[]>;
  /** Whether drop_caches was written (only with `drop`). */
  dropped: boolean;
}

/** Runs `cmd` to completion; its wall-clock seconds. */
function timed(cmd: string, args: string[], timeoutMs: number): number {
  const t0 = process.hrtime.bigint();
  const r = spawnSync(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'], timeout: timeoutMs });
  const s = Number(process.hrtime.bigint() - t0) / 1e9;
  if (r.status !== 0)
    throw new Error(`${cmd} ${args.join(' ')}: ${r.status ?? r.signal} ${String(r.stderr).slice(-500)}`);
  return s;
}

/** The rotating order of round `r` (0-based): entries shifted left by r. */
export function roundOrder<T>(items: T[], r: number): T[] {
  return items.map((_, i) => items[(i + r) % items.length]!);
}

export async function seqRounds(o: SeqOptions): Promise<SeqResult> {
  const copies = o.copies ?? 1;
  const timeoutMs = o.timeoutMs ?? 300000;
  const probes = Object.entries(o.probes ?? {});
  let dropped = false;
  const settle = (files: string[]) => {
    spawnSync('sync');
    if (o.drop) {
      try {
        writeFileSync('/proc/sys/vm/drop_caches', '1');
        dropped = true;
      } catch {
        /* not root: the files stay cached from earlier runs */
      }
    }
    for (const f of files) warmFile(f);
  };
  const read = (pid: number | undefined) => probes.map(([, f]) => (pid === undefined ? NaN : f(pid)));
  const perGB = (a: number[], b: number[], bytes: number) =>
    Object.fromEntries(probes.map(([k], i) => [k, ((b[i]! - a[i]!) * 1e9) / bytes]));

  const samples: Record<string, SeqSample[]> = Object.fromEntries(o.entries.map((e) => [e.name, []]));
  for (let r = 0; r < o.rounds; r++) {
    for (const e of roundOrder(o.entries, r)) {
      const wrap = e.wrap ?? ((c: string, a: string[]): [string, string[]] => [c, a]);
      let server: SeqServer | undefined;
      try {
        server = await e.start();
        await e.before?.(server);
        settle([o.source, o.target]);
        let p0 = read(server.pid);
        let wt = 0;
        for (let k = 0; k < copies; k++) wt += timed(...wrap('nbdcopy', [o.source, server.uri]), timeoutMs);
        const writeProbes = perGB(p0, read(server.pid), copies * o.size);
        const write = (copies * o.size) / wt / 1e9;
        settle([o.target]);
        p0 = read(server.pid);
        const rd = o.size / timed(...wrap('nbdcopy', [server.uri, 'null:']), timeoutMs) / 1e9;
        const s: SeqSample = {
          round: r + 1,
          write,
          read: rd,
          writeProbes,
          readProbes: perGB(p0, read(server.pid), o.size),
        };
        samples[e.name]!.push(s);
        o.onSample?.(e.name, s);
      } catch (err) {
        if (!o.onError) throw err;
        o.onError(e.name, r + 1, err as Error);
      } finally {
        await server?.stop();
      }
    }
  }
  return { samples, dropped };
}

export interface SeqSummary {
  /** Median GB/s. */
  median: number;
  /** This entry's median over the peer's. */
  ratio: number;
  /** The median over rounds of this entry's value over the peer's in the same round. */
  perRoundRatio: number;
}

/** Medians of `name` and its ratios to `peer` for `op`; NaN where either has no samples. */
export function summarise(
  samples: Record<string, SeqSample[]>,
  name: string,
  peer: string | undefined,
  op: 'write' | 'read',
): SeqSummary {
  const mine = samples[name] ?? [];
  const theirs = peer ? (samples[peer] ?? []) : [];
  const m = mine.length ? median(mine.map((s) => s[op])) : NaN;
  const base = theirs.length ? median(theirs.map((s) => s[op])) : NaN;
  // Pair by round: an entry that failed in a round has no sample for it.
  const byRound = new Map(theirs.map((s) => [s.round, s[op]]));
  const pairs = mine.filter((s) => byRound.has(s.round)).map((s) => s[op] / byRound.get(s.round)!);
  return { median: m, ratio: m / base, perRoundRatio: pairs.length ? median(pairs) : NaN };
}
