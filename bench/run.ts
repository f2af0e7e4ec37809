/**
 * `npm run bench -- [name ...] [options]`: runs the named benchmarks (all written ones without a
 * name), prints each result as a table with Haven beside the peers, the ratios and the targets,
 * and writes it as JSON under bench-results/ (git-ignored).
 */
import { Command, InvalidArgumentError } from 'commander';
import { tmpdir } from 'node:os';
import { fileURLToPath } from 'node:url';
import { registry } from './index.js';
import { formatResult } from './lib/table.js';
import { roundedLoad } from './lib/env.js';
import { writeResult } from './lib/results.js';
import { fmtSize, parseSize } from './lib/image.js';
import type { BenchOptions } from './lib/types.js';

const REPO = fileURLToPath(new URL('../../', import.meta.url));

function positiveInt(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError('a positive integer');
  return n;
}

function size(v: string): number {
  try {
    return parseSize(v);
  } catch (e) {
    throw new InvalidArgumentError((e as Error).message);
  }
}

const program = new Command('bench')
  .description('Haven benchmarks: Haven beside peer tools, measured in the same run')
  .argument('[names...]', `benchmarks to run (default: all written ones)`)
  .option('--size <size>', 'test data size, e.g. 2G, 256M (default 2G; 256M with --quick)', size)
  .option('--runtime <seconds>', 'seconds per time-based run (default 10; 3 with --quick)', positiveInt)
  .option(
    '--repeat <n>',
    'repetitions of each timed copy, median reported (default 3; 1 with --quick; nbd: sequential rounds, default 3)',
    positiveInt,
  )
  .option('--quick', 'short development run')
  .option('--only <subjects>', 'comma-separated subjects to run, e.g. haven,nbdkit')
  .option('--workdir <dir>', 'folder for temporary files', tmpdir())
  .option('--results <dir>', 'folder for JSON results', `${REPO}bench-results`)
  .option('--transport <kind>', 'unix or tcp (127.0.0.1), where a benchmark serves over NBD', (v) => {
    if (v !== 'unix' && v !== 'tcp') throw new InvalidArgumentError('unix or tcp');
    return v;
  })
  .option('--no-install', 'do not apt-get install missing peer tools')
  .option('--list', 'list the benchmarks and exit')
  .action(async (names: string[], o: Record<string, unknown>) => {
    if (o.list) {
      for (const e of registry) process.stdout.write(`${e.name.padEnd(10)} ${e.summary}\n`);
      return;
    }
    // A name also selects its family: `ceph` runs ceph-s3 and ceph-rbd.
    const picks = (e: { name: string }, n: string) => e.name === n || e.name.startsWith(`${n}-`);
    const unknown = names.filter((n) => !registry.some((e) => picks(e, n)));
    if (unknown.length) throw new Error(`unknown benchmark(s): ${unknown.join(', ')} (see --list)`);
    const entries = names.length
      ? registry.filter((e) => names.some((n) => picks(e, n)))
      : registry.filter((e) => e.load);
    const quick = Boolean(o.quick);
    const opts: BenchOptions = {
      size: (o.size as number | undefined) ?? (quick ? 256 * 2 ** 20 : 2 * 2 ** 30),
      sizeGiven: o.size !== undefined,
      runtime: (o.runtime as number | undefined) ?? (quick ? 3 : 10),
      repeat: (o.repeat as number | undefined) ?? (quick ? 1 : 3),
      repeatGiven: o.repeat !== undefined,
      quick,
      only:
        typeof o.only === 'string'
          ? o.only
              .toLowerCase()
              .split(',')
              .map((s) => s.trim())
          : undefined,
      workdir: o.workdir as string,
      transport: (o.transport as 'unix' | 'tcp' | undefined) ?? 'unix',
      install: o.install !== false,
      log: (msg) => process.stderr.write(`[bench] ${msg}\n`),
    };
    opts.log(
      `size ${fmtSize(opts.size)}, runtime ${opts.runtime} s, repeat ${opts.repeat}, ${opts.transport}`,
    );
    let failed = 0;
    for (const e of entries) {
      if (!e.load) {
        process.stderr.write(`${e.name}: not written yet\n`);
        failed++;
        continue;
      }
      try {
        const bench = await e.load();
        opts.log(`${bench.name}: ${bench.title}`);
        const loadAverageAtStart = roundedLoad();
        const result = await bench.run(opts);
        // The machine's load around the run (it is shared): recorded here, for every benchmark alike.
        result.environment = { ...result.environment, loadAverageAtStart, loadAverageAtEnd: roundedLoad() };
        process.stdout.write(`\n${formatResult(result)}\n`);
        const path = writeResult(o.results as string, result);
        process.stdout.write(`written to ${path}\n`);
      } catch (err) {
        failed++;
        process.stderr.write(`${e.name}: failed: ${(err as Error).stack ?? String(err)}\n`);
      }
    }
    if (failed) process.exitCode = 1;
  });

program.parseAsync(process.argv).catch((err: unknown) => {
  process.stderr.write(`bench: ${(err as Error).message}\n`);
  process.exitCode = 2;
});
