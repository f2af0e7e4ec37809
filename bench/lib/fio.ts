import { run } from '../../test/support/proc.js';

export interface FioResult {
  iops: number;
  /** Bytes per second. */
  bandwidth: number;
  /** Mean completion latency in microseconds. */
  meanLatencyUs: number;
  /** 99th percentile completion latency in microseconds, when fio reported it. */
  p99LatencyUs: number | null;
  /** The command line, for the record. */
  args: string[];
}

interface FioSide {
  iops: number;
  bw_bytes?: number;
  bw: number;
  clat_ns?: { mean: number; percentile?: Record<string, number> };
}

/** Extracts the first JSON document from fio's output (fio may print warnings before it). */
export function parseFioJson(stdout: string, rw: 'read' | 'write'): Omit<FioResult, 'args'> {
  const start = stdout.indexOf('{');
  if (start < 0) throw new Error(`fio printed no JSON:\n${stdout.slice(0, 500)}`);
  const doc = JSON.parse(stdout.slice(start)) as { jobs?: Array<Record<string, FioSide | unknown>> };
  const job = doc.jobs?.[0];
  if (!job) throw new Error('fio JSON has no jobs');
  if (typeof job.error === 'number' && job.error !== 0) throw new Error(`fio job error ${job.error}`);
  const side = job[rw] as FioSide | undefined;
  if (!side) throw new Error(`fio JSON has no ${rw} section`);
  const p99 = side.clat_ns?.percentile?.['99.000000'];
  return {
    iops: side.iops,
    bandwidth: side.bw_bytes ?? side.bw * 1024,
    meanLatencyUs: (side.clat_ns?.mean ?? 0) / 1000,
    p99LatencyUs: p99 == null ? null : p99 / 1000,
  };
}

/** Runs one time-based fio job against an NBD URI with fio's nbd engine (libnbd). */
export async function fioNbd(opts: {
  uri: string;
  rw: 'randread' | 'randwrite' | 'randrw' | 'read' | 'write';
  /** A block size (`4k`) or a range (`4k-1m`). */
  bs: string;
  iodepth: number;
  runtime: number;
  /** Clients at once, each its own NBD connection (reported as one group). */
  numjobs?: number;
  /** A rate cap in bytes per second (fio's `--rate`). */
  rate?: number;
  /** Fresh random data for every write (incompressible: fio otherwise reuses its buffers). */
  refill?: boolean;
}): Promise<FioResult> {
  const jobs = opts.numjobs ?? 1;
  const args = [
    '--name=bench',
    '--ioengine=nbd',
    `--uri=${opts.uri}`,
    `--rw=${opts.rw}`,
    opts.bs.includes('-') ? `--bsrange=${opts.bs}` : `--bs=${opts.bs}`,
    `--iodepth=${opts.iodepth}`,
    `--runtime=${opts.runtime}`,
    '--time_based',
    '--norandommap',
    '--randrepeat=0',
    '--output-format=json',
    ...(jobs > 1 ? [`--numjobs=${jobs}`, '--group_reporting'] : []),
    ...(opts.rate ? [`--rate=${Math.round(opts.rate)}`] : []),
    ...(opts.refill ? ['--refill_buffers'] : []),
  ];
  const { stdout } = await run('fio', args, { timeout: (opts.runtime + 60) * 1000 });
  return { ...parseFioJson(stdout, opts.rw.endsWith('write') ? 'write' : 'read'), args };
}
