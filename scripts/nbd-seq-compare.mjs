#!/usr/bin/env node
/**
 * Sequential NBD write and read, Haven vs nbdkit (file plugin) vs qemu-nbd, interleaved
 * (docs/benchmarks.md, the nbd section).
 *
 *   node scripts/nbd-seq-compare.mjs [--size MiB] [--rounds N] [--transport tcp|unix]
 *       [--servers LIST] [--copies N] [--drop] [--fio-seconds S] [--dir DIR] [--haven-env K=V,...]
 *
 * LIST (default haven,nbdkit,qemu-nbd): each entry a server, optionally `:tcp` or `:unix` (its
 * own transport), `+fio` (first the bench's memory phase: fio randrw 4k-1m, 2 jobs at QD64 for
 * --fio-seconds), `@K=V` (an environment variable for that variant) and `!N` (the server and its
 * nbdcopy at nice N), e.g.
 * `haven:tcp,nbdkit:tcp,haven:unix,nbdkit:unix` or `haven,haven@UV_THREADPOOL_SIZE=16,nbdkit`.
 *
 * Each round starts every entry in turn (the order rotates from round to round) on the same
 * fully allocated target file, and for each: `sync` (+ drop_caches with --drop, when writable;
 * that also drops the caches of whoever shares the machine), reads the source and the target
 * once so that both are in the page cache with no dirty pages, times --copies (default 1; the
 * bench's way is 3 with no sync between) `nbdcopy source uri` (write), `sync` untimed, so that
 * the next measurement does not pay for this one's writeback, and times `nbdcopy uri null:`
 * (read). Prints every sample, the median per entry, its ratio to the first nbdkit entry's
 * median and the median of the per-round ratios, the server's CPU seconds per GB
 * (/proc/pid/stat), and how long the server's threads that are still alive at the end waited
 * runnable for a CPU (schedstat; nbdkit's per-connection threads are gone by then, so 0 there).
 * The rounds, the settle and the medians are bench/lib/seq-rounds.ts (the bench's sequential rows
 * use the same code). Uses the compiled dist (bin/haven, dist/bench): run
 * `npx tsc -p tsconfig.json` first. One measurement process at a time on a shared machine.
 */
import { spawn, spawnSync } from 'node:child_process';
import { readFileSync, readdirSync, mkdtempSync, rmSync } from 'node:fs';
import { createServer, connect } from 'node:net';
import { join } from 'node:path';
import { loadavg } from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';
import { URL, fileURLToPath } from 'node:url';
import { createDataFile } from '../dist/bench/lib/image.js';
import { median as med, seqRounds, summarise } from '../dist/bench/lib/seq-rounds.js';

const args = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : dflt;
};
const MiB = 1024 * 1024;
const size = Number(opt('size', '1024')) * MiB;
const rounds = Number(opt('rounds', '3'));
const transport = opt('transport', 'tcp');
const wanted = opt('servers', 'haven,nbdkit,qemu-nbd').split(',');
const drop = args.includes('--drop');
/** Write copies per server per round back to back without a sync between them (the bench's way, 3). */
const copies = Number(opt('copies', '1'));
const havenEnv = Object.fromEntries(
  (opt('haven-env', '') || '')
    .split(',')
    .filter(Boolean)
    .map((kv) => kv.split('=')),
);
const HAVEN_BIN = fileURLToPath(new URL('../bin/haven', import.meta.url));
const EXPORT = 'bench';

const freePort = () =>
  new Promise((res) => {
    const s = createServer();
    s.listen(0, '127.0.0.1', () => {
      const p = s.address().port;
      s.close(() => res(p));
    });
  });
async function waitListen(at, child) {
  for (let i = 0; i < 300; i++) {
    if (child.exitCode !== null) throw new Error(`server exited ${child.exitCode}`);
    const ok = await new Promise((res) => {
      const c = 'path' in at ? connect(at.path) : connect(at.port, at.host);
      c.once('connect', () => (c.destroy(), res(true)));
      c.once('error', () => res(false));
    });
    if (ok) return;
    await sleep(100);
  }
  throw new Error('server did not listen');
}
const specs = {
  haven: (img, at) => [
    process.execPath,
    [
      HAVEN_BIN,
      'nbd',
      'serve',
      img,
      ...('path' in at ? ['--socket', at.path] : ['--listen', `${at.host}:${at.port}`]),
      '--name',
      EXPORT,
    ],
  ],
  nbdkit: (img, at) => [
    'nbdkit',
    [
      '-f',
      ...('path' in at ? ['-U', at.path] : ['-i', at.host, '-p', String(at.port)]),
      '-t',
      '16',
      'file',
      img,
    ],
  ],
  'qemu-nbd': (img, at) => [
    'qemu-nbd',
    [
      '-f',
      'raw',
      '-x',
      EXPORT,
      ...('path' in at ? [`--socket=${at.path}`] : ['-b', at.host, '-p', String(at.port)]),
      '-t',
      '--shared=8',
      '--cache=writeback',
      '--aio=io_uring',
      img,
    ],
  ],
};

const dir = mkdtempSync(join(opt('dir', '/work/tmp'), 'nbd-seq-'));
const target = join(dir, 'target.raw');
const source = join(dir, 'source.raw');
// A server may name its own transport (haven:unix,nbdkit:tcp); otherwise --transport.
// `+fio`: the server first serves the bench's memory phase (fio randrw 4k-1m, 2 jobs at QD64,
// --fio-seconds), as bench/nbd.ts does before its sequential runs.
const names = wanted.filter((w) => specs[w.split(/[:+@!]/)[0]]);
const fioSeconds = Number(opt('fio-seconds', '10'));
/** Seconds the server's threads spent runnable but waiting for a CPU (/proc/pid/task/x/schedstat). */
function rqWait(pid) {
  let t = 0;
  try {
    for (const tid of readdirSync(`/proc/${pid}/task`))
      t += Number(readFileSync(`/proc/${pid}/task/${tid}/schedstat`, 'utf8').split(' ')[1]) / 1e9;
  } catch {
    return NaN;
  }
  return t;
}
/** The server's user+system CPU seconds so far (/proc/pid/stat; clock ticks of 100 Hz). */
function cpu(pid) {
  try {
    const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
    return (Number(f[11]) + Number(f[12])) / 100;
  } catch {
    return NaN;
  }
}
let res;
let dropWorks = false;
try {
  createDataFile(target, size);
  createDataFile(source, size);
  const entries = names.map((name) => {
    // `@K=V`: an environment variable for this variant (haven@UV_THREADPOOL_SIZE=16).
    // `!N`: the server and its nbdcopy run at nice N (haven!-10: ahead of the machine's other work).
    const [plain, nice] = name.split('!');
    const [base, ...envs] = plain.split('@');
    const niced = (c, a) => (nice ? ['nice', ['-n', nice, c, ...a]] : [c, a]);
    const [server, tr = transport] = base.replace('+fio', '').split(':');
    const env = {
      ...process.env,
      ...(server === 'haven' ? havenEnv : {}),
      ...Object.fromEntries(envs.map((e) => e.split('='))),
    };
    return {
      name,
      wrap: niced,
      async start() {
        const at =
          tr === 'tcp' ? { host: '127.0.0.1', port: await freePort() } : { path: join(dir, 'nbd.sock') };
        if ('path' in at) rmSync(at.path, { force: true });
        const uri =
          'path' in at ? `nbd+unix:///${EXPORT}?socket=${at.path}` : `nbd://${at.host}:${at.port}/${EXPORT}`;
        const [cmd, argv] = niced(...specs[server](target, at));
        const child = spawn(cmd, argv, { stdio: ['ignore', 'ignore', 'inherit'], env });
        const stop = async () => {
          child.kill('SIGTERM');
          await new Promise((r) => (child.exitCode !== null ? r() : child.once('exit', r)));
        };
        try {
          await waitListen(at, child);
        } catch (e) {
          await stop();
          throw e;
        }
        return { uri, pid: child.pid, stop };
      },
      // `+fio`: first the bench's memory phase (fio randrw 4k-1m, 2 jobs at QD64, --fio-seconds).
      before: base.endsWith('+fio')
        ? async ({ uri }) => {
            const f = spawnSync(
              'fio',
              [
                '--name=mem',
                '--ioengine=nbd',
                `--uri=${uri}`,
                '--rw=randrw',
                '--bsrange=4k-1m',
                '--iodepth=64',
                `--runtime=${fioSeconds}`,
                '--time_based',
                '--norandommap',
                '--randrepeat=0',
                '--numjobs=2',
                '--group_reporting',
                '--output-format=terse',
              ],
              { stdio: 'ignore', timeout: 120000 },
            );
            if (f.status !== 0) throw new Error(`fio failed: ${f.status}`);
          }
        : undefined,
    };
  });
  const out = await seqRounds({
    entries,
    rounds,
    source,
    target,
    size,
    copies,
    drop,
    probes: { cpu, wait: rqWait },
    onSample: (name, x) =>
      console.log(
        `round ${x.round} ${name.padEnd(8)} write ${x.write.toFixed(2)} GB/s (${x.writeProbes.cpu.toFixed(2)} cpu-s/GB)  read ${x.read.toFixed(2)} GB/s (${x.readProbes.cpu.toFixed(2)} cpu-s/GB)`,
      ),
  });
  res = out.samples;
  dropWorks = out.dropped;
} finally {
  rmSync(dir, { recursive: true, force: true });
}
console.log(
  `\n${transport}, ${size / MiB} MiB, ${rounds} rounds interleaved, ${copies} write copies, drop_caches ${dropWorks ? 'yes' : 'no'}, load ${loadavg()
    .map((x) => x.toFixed(1))
    .join(' ')}; medians (GB/s) and ratio to nbdkit:`,
);
for (const op of ['write', 'read']) {
  const peer = names.find((n) => n.startsWith('nbdkit'));
  const p = op === 'write' ? 'writeProbes' : 'readProbes';
  for (const n of names) {
    // Ratio of medians, and the same round's ratio (the two measured minutes apart at most), median over rounds.
    const { median: m, ratio, perRoundRatio } = summarise(res, n, peer, op);
    console.log(
      `  ${op.padEnd(5)} ${n.padEnd(8)} ${m.toFixed(2)}  (${res[n].map((x) => x[op].toFixed(2)).join(', ')})  ${ratio.toFixed(2)}x ${peer} (per-round ratio median ${perRoundRatio.toFixed(2)}x);  server cpu ${med(res[n].map((x) => x[p].cpu)).toFixed(2)} s/GB, threads alive at the end waited for a cpu ${med(res[n].map((x) => x[p].wait)).toFixed(2)} s/GB`,
    );
  }
}
