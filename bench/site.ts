/**
 * Site benchmark: what the site daemon adds to starting a VM, and what it costs at rest.
 * "haven vm start" (CLI → API → job → QEMU with its disk over the daemon's NBD socket) is timed
 * to the test guest's first agent line, against launching the very same QEMU command line by
 * hand (same kernel, same kind of disk: a volume on the same NBD socket). Then, with 10 VMs
 * defined and 3 running, the daemon's resident memory and CPU use while idle.
 */
import { spawn, execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { BenchSite } from './lib/site.js';
import { ensureGuest } from '../test/support/guest.js';
import { qemuCommandLine } from '../src/compute/index.js';
import { runSpan } from './lib/results.js';
import type { Benchmark, BenchOptions, BenchResult, Metric } from './lib/types.js';
import { procStatusBytes } from './lib/server.js';
import { median } from './lib/timing.js';
import { environment } from './lib/env.js';
import { onInterrupt } from './lib/cleanup.js';

const HAVEN = 'haven vm start';
const HAND = 'qemu by hand';
const READY = 'HAVEN-GUEST {"event":"ready"';
const CLOCK_TICKS = 100;

async function waitForLine(file: string, timeoutMs = 60_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (existsSync(file) && readFileSync(file, 'utf8').includes(READY)) return;
    await sleep(20);
  }
  throw new Error(`no "${READY}" in ${file} after ${timeoutMs} ms`);
}

function cpuTicks(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return Number(f[11]) + Number(f[12]); // utime + stime
}

async function runSite(opts: BenchOptions): Promise<BenchResult> {
  const startedAt = new Date();
  const { log } = opts;
  const repeat = Math.max(opts.repeat, opts.quick ? 1 : 3);
  const idleSeconds = opts.quick ? 3 : Math.max(opts.runtime, 10);
  const subjects = [HAVEN, HAND];
  const values = () => Object.fromEntries(subjects.map((s) => [s, null])) as Record<string, number | null>;
  const m: Record<string, Metric> = {
    boot: {
      key: 'start-to-first-line',
      label: 'start to the guest agent first line',
      unit: 's',
      better: 'lower',
      values: values(),
      samples: {},
      method: `median of ${repeat}`,
      target: { kind: 'ratio', peer: HAND, min: 1.1 },
    },
    rss: {
      key: 'idle-rss',
      label: 'daemon RSS, 10 VMs defined, 3 running',
      unit: 'MiB',
      better: 'lower',
      values: values(),
      target: { kind: 'max', value: 200 },
    },
    cpu: {
      key: 'idle-cpu',
      label: `daemon CPU while idle (${idleSeconds} s)`,
      unit: '% of a core',
      better: 'lower',
      values: values(),
      target: { kind: 'max', value: 2 },
    },
  };
  const errors: Record<string, string> = {};
  const dir = mkdtempSync(join(opts.workdir, 'haven-bench-site-'));
  const site = new BenchSite(dir, 300_000);
  const { data } = site;
  const haven = (...args: string[]) => site.haven(...args);
  const unregister = onInterrupt(() => {
    void site.stop();
    rmSync(dir, { recursive: true, force: true });
  });
  try {
    const guest = ensureGuest();
    const daemon = await site.start();
    const pid = daemon.child.pid!;
    const cmdline = 'console=ttyS0 quiet panic=-1 haven.disks=1 haven.cmd=ping';
    log('defining 10 VMs on 10 volumes, and a volume for the QEMU started by hand');
    for (let i = 0; i < 10; i++) {
      await haven('volume', 'create', `v${i}`, '--size', '64M');
      await haven(
        'vm',
        'create',
        `vm${i}`,
        '--disk',
        `v${i}`,
        '--memory',
        '192M',
        '--kernel',
        guest.kernel,
        '--initrd',
        guest.initrd,
        '--cmdline',
        cmdline,
      );
    }
    await haven('volume', 'create', 'hand', '--size', '64M');
    const info = JSON.parse(await haven('site', 'show', '--json')) as { nbd: { socket: string } };
    const ids = new Map(
      (JSON.parse(await haven('vm', 'list', '--json')) as { name: string; id: string }[]).map((v) => [
        v.name,
        v.id,
      ]),
    );

    const viaHaven = async (): Promise<number> => {
      const t0 = performance.now();
      await haven('vm', 'start', 'vm9');
      await waitForLine(join(data, 'vms', ids.get('vm9')!, 'console.log'));
      const t = (performance.now() - t0) / 1000;
      await haven('vm', 'stop', 'vm9', '--force');
      return t;
    };
    const byHand = async (n: number): Promise<number> => {
      const runDir = join(dir, `hand-${n}`);
      const args = qemuCommandLine(
        {
          id: `hand-${n}`,
          name: `hand-${n}`,
          cpus: 1,
          memoryMiB: 192,
          disks: [{ source: `nbd+unix:///hand?socket=${info.nbd.socket}` }],
          nics: [],
          boot: { kind: 'kernel', kernel: guest.kernel, initrd: guest.initrd, cmdline },
        },
        runDir,
      );
      execFileSync('mkdir', ['-p', runDir]);
      const t0 = performance.now();
      const child = spawn('qemu-system-x86_64', args, { stdio: 'ignore' });
      await new Promise((r) => child.once('exit', r));
      await waitForLine(join(runDir, 'console.log'));
      const t = (performance.now() - t0) / 1000;
      process.kill(Number(readFileSync(join(runDir, 'qemu.pid'), 'utf8')), 'SIGKILL');
      return t;
    };
    const samples: Record<string, number[]> = { [HAVEN]: [], [HAND]: [] };
    for (let i = 0; i < repeat; i++) {
      // Alternate, so that both see the same machine state.
      samples[HAND]!.push(await byHand(i));
      samples[HAVEN]!.push(await viaHaven());
      log(
        `start to first line: haven ${samples[HAVEN]!.at(-1)!.toFixed(2)} s, by hand ${samples[HAND]!.at(-1)!.toFixed(2)} s`,
      );
    }
    for (const s of subjects) {
      m.boot!.values[s] = median(samples[s]!);
      m.boot!.samples![s] = samples[s]!;
    }

    log('starting 3 VMs and measuring the idle daemon');
    for (let i = 0; i < 3; i++) await haven('vm', 'start', `vm${i}`);
    for (let i = 0; i < 3; i++) await waitForLine(join(data, 'vms', ids.get(`vm${i}`)!, 'console.log'));
    await sleep(1000);
    const c0 = cpuTicks(pid);
    const t0 = performance.now();
    await sleep(idleSeconds * 1000);
    const cpu = ((cpuTicks(pid) - c0) / CLOCK_TICKS / ((performance.now() - t0) / 1000)) * 100;
    m.cpu!.values[HAVEN] = cpu;
    m.rss!.values[HAVEN] = (procStatusBytes(pid, 'VmRSS') ?? NaN) / 2 ** 20;
    log(`idle: ${cpu.toFixed(2)} % CPU, ${m.rss!.values[HAVEN]!.toFixed(1)} MiB RSS`);
    for (let i = 0; i < 3; i++) await haven('vm', 'stop', `vm${i}`, '--force');
  } catch (e) {
    errors[HAVEN] = (e as Error).message;
  } finally {
    await site.stop();
    rmSync(dir, { recursive: true, force: true });
    unregister();
  }
  return {
    name: 'site',
    title: 'Site daemon: VM start overhead and idle cost',
    ...runSpan(startedAt),
    haven: HAVEN,
    subjects,
    errors,
    metrics: Object.values(m),
    settings: {
      repeat,
      idleSeconds,
      guest: 'the test guest, 1 CPU, 192 MiB, TCG',
      disk: 'a 64 MiB volume over the daemon NBD socket',
    },
    environment: environment({ 'qemu-system-x86_64': ['--version'] }),
    notes: [
      'both start the same QEMU command line (qemuCommandLine); "by hand" skips the CLI, the API, the job and the database',
      'the guest boots under TCG (no KVM here): boot time dominates both',
    ],
  };
}

export const siteBenchmark: Benchmark = {
  name: 'site',
  title: 'Site daemon: VM start overhead and idle cost',
  description:
    'Time from "haven vm start" to the guest agent first line against launching the same QEMU command by hand, and the daemon RSS and CPU at rest with 10 VMs defined and 3 running.',
  run: runSite,
};
