import { protocol as P, type NbdRequestObserver, type NbdRequestRecorder } from '../../nbd/index.js';

/** The NBD commands timed, by command number, as the `op` label says them. */
const OPS: [number, string][] = [
  [P.CMD_READ, 'read'],
  [P.CMD_WRITE, 'write'],
  [P.CMD_FLUSH, 'flush'],
  [P.CMD_TRIM, 'trim'],
  [P.CMD_CACHE, 'cache'],
  [P.CMD_WRITE_ZEROES, 'write_zeroes'],
  [P.CMD_BLOCK_STATUS, 'block_status'],
];
const MAX_CMD = Math.max(...OPS.map(([c]) => c));

/** A sample as prom-client's registry formats it (the shape its own metrics' get() returns). */
interface Sample {
  metricName: string;
  labels: Record<string, string | number>;
  value: number;
}

/** Seconds: 10 µs (a page-cache read) to 10 s (a stalled disk). */
export const NBD_LATENCY_BUCKETS = [
  0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
  0.5, 1, 2.5, 10,
];

/** One export's counts for one op: a bucket per bound, then +Inf, then the sum. */
class Cell {
  readonly counts = new Float64Array(NBD_LATENCY_BUCKETS.length + 2);
  observe(seconds: number): void {
    const c = this.counts;
    const n = NBD_LATENCY_BUCKETS.length;
    let i = 0;
    while (i < n && seconds > NBD_LATENCY_BUCKETS[i]!) i++;
    c[i]!++;
    c[n + 1]! += seconds;
  }
}

/**
 * `haven_nbd_request_duration_seconds`: a histogram per NBD server, export and op, kept
 * allocation-free on the NBD hot path. prom-client's own Histogram builds label objects and a
 * hash per observation; here each connection gets, when it opens, its export's cells (one per
 * command, resolved by command number), and a request adds to a Float64Array. The exposition
 * is built only when Prometheus scrapes (this object is registered as a custom metric).
 */
export class NbdLatency {
  readonly name = 'haven_nbd_request_duration_seconds';
  readonly help =
    'NBD requests from their arrival to their reply being queued, per server, export and op (reads sent from the file and natively received writes excepted)';
  readonly type = 'histogram';
  readonly aggregator = 'sum';
  /** server → export → cells indexed by command number. */
  private readonly cells = new Map<string, Map<string, (Cell | undefined)[]>>();

  /** The observer for one NBD server (`server` becomes the label). */
  observer(server: string): NbdRequestObserver {
    return {
      forExport: (name: string): NbdRequestRecorder => {
        const byCmd = this.cellsOf(server, name);
        return {
          record(type, seconds) {
            byCmd[type]?.observe(seconds);
          },
        };
      },
    };
  }

  /**
   * Forgets the histograms of exports no longer served (deleted volumes, the snapshots backups
   * read through): their series would otherwise grow without bound.
   */
  retain(live: ReadonlySet<string>): void {
    for (const m of this.cells.values())
      for (const name of [...m.keys()]) if (!live.has(name)) m.delete(name);
  }

  /** What prom-client's registry asks of a metric when it builds the exposition. */
  get(): Promise<{ name: string; help: string; type: string; values: Sample[]; aggregator: string }> {
    const values: Sample[] = [];
    for (const [server, exports] of this.cells)
      for (const [exp, byCmd] of exports)
        for (const [cmd, op] of OPS) {
          const c = byCmd[cmd]!.counts;
          const labels = { server, export: exp, op };
          let cumulative = 0;
          NBD_LATENCY_BUCKETS.forEach((le, i) => {
            cumulative += c[i]!;
            values.push({ metricName: `${this.name}_bucket`, labels: { ...labels, le }, value: cumulative });
          });
          cumulative += c[NBD_LATENCY_BUCKETS.length]!;
          values.push({
            metricName: `${this.name}_bucket`,
            labels: { ...labels, le: '+Inf' },
            value: cumulative,
          });
          values.push({ metricName: `${this.name}_sum`, labels, value: c[NBD_LATENCY_BUCKETS.length + 1]! });
          values.push({ metricName: `${this.name}_count`, labels, value: cumulative });
        }
    return Promise.resolve({
      name: this.name,
      help: this.help,
      type: this.type,
      values,
      aggregator: 'sum',
    });
  }

  private cellsOf(server: string, exp: string): (Cell | undefined)[] {
    let exports = this.cells.get(server);
    if (!exports) this.cells.set(server, (exports = new Map()));
    let byCmd = exports.get(exp);
    if (!byCmd) {
      byCmd = new Array<Cell | undefined>(MAX_CMD + 1).fill(undefined);
      for (const [cmd] of OPS) byCmd[cmd] = new Cell();
      exports.set(exp, byCmd);
    }
    return byCmd;
  }
}
