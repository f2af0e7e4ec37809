/**
 * The contract between the benchmark runner (`bench/run.ts`) and each benchmark.
 *
 * A benchmark measures Haven beside peer tools in one run and returns a `BenchResult`: one value
 * per metric and subject (Haven first, then the peers), plus the targets the issue sets. The runner
 * prints it as a table with the ratios Haven/peer and writes it as JSON; benchmarks never print
 * tables themselves.
 */

/** Options shared by every benchmark; each may read only those that apply to it. */
export interface BenchOptions {
  /** Bytes of test data (image size), e.g. 2 GiB. */
  size: number;
  /** Whether `size` was asked for (--size), rather than the runner's default. */
  sizeGiven?: boolean;
  /** Seconds of each time-based run (fio). */
  runtime: number;
  /** How many times each timed copy is repeated; the median is reported. */
  repeat: number;
  /** Whether `repeat` was asked for (--repeat), rather than the runner's default. */
  repeatGiven?: boolean;
  /** Short development run (small image, short runs). */
  quick: boolean;
  /** Subjects to run (e.g. `haven`, `qemu-nbd`); all when undefined. */
  only?: string[];
  /** Folder for temporary files; removed afterwards. */
  workdir: string;
  /** How clients reach servers, where a benchmark has a choice (default unix). */
  transport: 'unix' | 'tcp';
  /** Install missing peer tools with apt-get. */
  install: boolean;
  /** Progress lines (stderr). */
  log(msg: string): void;
}

/** Whether a bigger value is better (throughput) or a smaller one (memory, latency). */
export type Better = 'higher' | 'lower';

/** What Haven must reach on a metric. */
export type Target =
  /**
   * Haven / peer must be ≥ min (higher-is-better metric) or ≤ min (lower-is-better metric).
   * `subject`: another Haven subject (a variant, e.g. `haven-cbt`) held to it instead of the
   * result's `haven`; its ratio to the peer gets a column of its own.
   */
  | { kind: 'ratio'; peer: string; min: number; subject?: string }
  /** Haven's value must be ≤ value. */
  | { kind: 'max'; value: number }
  /** Haven's value must be ≥ value. */
  | { kind: 'min'; value: number };

export interface Metric {
  /** Stable identifier, e.g. `seq-read`. */
  key: string;
  /** Human label, e.g. `sequential read (nbdcopy)`. */
  label: string;
  /** Unit of the values, e.g. `GB/s`, `k IOPS`, `MiB`. */
  unit: string;
  better: Better;
  /** One value per subject; null when the subject did not produce one. */
  values: Record<string, number | null>;
  /** Every sample taken, per subject, when the value summarises several. */
  samples?: Record<string, number[]>;
  /** How the value was obtained, e.g. `median of 3`. */
  method?: string;
  /** What Haven must reach; several: all of them (e.g. a ratio to each of two peers). */
  target?: Target | Target[];
}

export interface BenchResult {
  name: string;
  title: string;
  startedAt: string;
  finishedAt: string;
  durationSeconds: number;
  /** The subject that is Haven (always first in `subjects`). */
  haven: string;
  /** Every subject in column order: Haven, then the peers. */
  subjects: string[];
  /** Subjects that failed or were skipped, with the reason; their values are null. */
  errors: Record<string, string>;
  metrics: Metric[];
  /** The settings that shaped the numbers (sizes, queue depths, peer command lines …). */
  settings: Record<string, unknown>;
  /** Machine, tool versions and load, so numbers can be compared across runs. */
  environment: Record<string, unknown>;
  /** Raw per-subject measurements (e.g. fio's bandwidth and latencies) for the record. */
  raw?: Record<string, unknown>;
  notes: string[];
}

export interface Benchmark {
  name: string;
  title: string;
  /** One paragraph: what is measured and against whom. */
  description: string;
  run(opts: BenchOptions): Promise<BenchResult>;
}
