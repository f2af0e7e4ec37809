/**
 * Recovery benchmark: instant recovery and live storage migration, through the site daemon and
 * its CLI, with the real test guest (TCG).
 *
 * For a disk of the benchmark size and one four times as big (2 and 8 GiB by default): a VM
 * backup is recovered instantly and, against it, restored in full to a new volume and booted.
 * Both are timed from the command to the guest agent's first console line; then until the guest
 * has read and hashed the first 64 MiB of its disk, as a boot reads its system — from the backup
 * against from the restored local volume (the hash is checked against the image).
 *
 * Live migration (benchmark size): the VM streams 4 KiB durable writes as fast as it can while
 * its disk moves between two pools, back and forth. The copy throughput against `qemu-img convert`
 * of the same data offline (made durable by a sync), the guest's write rate during the move
 * against the minutes before it, and the switchover pause the move measures.
 */
import { closeSync, existsSync, mkdtempSync, openSync, readSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { run } from '../test/support/proc.js';
import { BenchSite } from './lib/site.js';
import { ensureGuest } from '../test/support/guest.js';
import { runSpan } from './lib/results.js';
import type { Benchmark, BenchOptions, BenchResult, Metric } from './lib/types.js';
import { fmtSize, makeDiskImage, sha256File, warmFile } from './lib/image.js';
import { median } from './lib/timing.js';
import { environment } from './lib/env.js';
import { onInterrupt } from './lib/cleanup.js';
import { ensurePeerTools, toolVersion } from './lib/peers.js';

const HAVEN = 'haven';
const RESTORE = 'restore + boot';
const LOCAL = 'local volume';
const CONVERT = 'qemu-img convert';
const STILL = 'no migration';
const MiB = 1024 * 1024;
const READ_BYTES = 64 * MiB;
const READY = '"event":"ready"';
const HASHED = '"cmd":"hash"';
const cmdline = (cmd: string) => `console=ttyS0 quiet panic=-1 haven.disks=1 haven.cmd="${cmd}"`;
const BOOT_CMD = cmdline(`hash disk=vda offset=0 length=${READ_BYTES}`);
const STREAM_CMD = cmdline('stream disk=vda seed=1 len=4K rate=0 slots=8000 lat=1');

/** Follows a console log as it grows: when each line appeared (host clock). */
class ConsoleWatch {
  readonly lines: { at: number; text: string }[] = [];
  private offset = 0;
  private rest = '';
  private readonly timer: NodeJS.Timeout;
  private readonly buf = Buffer.allocUnsafe(1 << 20);

  constructor(private readonly path: string) {
    this.timer = setInterval(() => this.poll(), 20);
  }

  poll(): void {
    if (!existsSync(this.path)) return;
    const fd = openSync(this.path, 'r');
    try {
      for (;;) {
        const n = readSync(fd, this.buf, 0, this.buf.length, this.offset);
        if (n <= 0) break;
        this.offset += n;
        const text = this.rest + this.buf.toString('latin1', 0, n);
        const parts = text.split('\n');
        this.rest = parts.pop()!;
        const at = Date.now();
        for (const p of parts) if (p.includes('HAVEN-GUEST')) this.lines.push({ at, text: p });
      }
    } finally {
      closeSync(fd);
    }
  }

  /** Resolves with the first line containing `what`, and when it appeared. */
  async waitFor(what: string, timeoutMs = 600_000): Promise<{ at: number; text: string }> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      this.poll();
      const l = this.lines.find((x) => x.text.includes(what));
      if (l) return l;
      if (Date.now() > deadline) throw new Error(`no ${what} on ${this.path} after ${timeoutMs} ms`);
      await sleep(10);
    }
  }

  writes(): { at: number; us: number }[] {
    return this.lines
      .filter((l) => l.text.includes('"event":"write"'))
      .map((l) => ({ at: l.at, us: (JSON.parse(l.text.slice(l.text.indexOf('{'))) as { us: number }).us }));
  }

  close(): void {
    clearInterval(this.timer);
  }
}

function writesIn<W extends { at: number }>(writes: W[], from: number, to: number): W[] {
  return writes.filter((w) => w.at >= from && w.at <= to);
}

/** Writes per second between the first and the last write seen within [from, to]. */
function writeRate(writes: { at: number }[], from: number, to: number): number {
  const inside = writesIn(writes, from, to);
  if (inside.length < 2) return 0;
  return ((inside.length - 1) / (inside.at(-1)!.at - inside[0]!.at)) * 1000;
}

async function runRecovery(opts: BenchOptions): Promise<BenchResult> {
  const startedAt = new Date();
  const { log } = opts;
  const sizes = [opts.size, 4 * opts.size];
  const repeat = opts.repeat;
  const subjects = [HAVEN, RESTORE, LOCAL, CONVERT, STILL];
  const values = () => Object.fromEntries(subjects.map((s) => [s, null])) as Record<string, number | null>;
  // Each value is the median of `repeat` samples unless said otherwise.
  const metric = (m: Omit<Metric, 'values' | 'samples'>): Metric => ({
    method: `median of ${repeat}`,
    ...m,
    values: values(),
    samples: {},
  });
  const firstLine = sizes.map((size) =>
    metric({
      key: `first-line-${fmtSize(size).replace(' ', '')}`,
      label: `${fmtSize(size)}: command to the guest's first line`,
      unit: 's',
      better: 'lower',
    }),
  );
  const growth = metric({
    key: 'first-line-growth',
    label: `first line: ${fmtSize(sizes[1]!)} / ${fmtSize(sizes[0]!)}`,
    unit: '×',
    better: 'lower',
    method: 'ratio of the medians',
  });
  const boot = sizes.map((size) =>
    metric({
      key: `boot-${fmtSize(size).replace(' ', '')}`,
      label: `${fmtSize(size)}: boot and read ${fmtSize(READ_BYTES)} of the disk`,
      unit: 's',
      better: 'lower',
      target: { kind: 'ratio', peer: LOCAL, min: 1.3 },
    }),
  );
  const copy = metric({
    key: 'migration-copy',
    label: `live migration copy, ${fmtSize(sizes[0]!)} disk`,
    unit: 'MiB/s',
    better: 'higher',
    target: { kind: 'ratio', peer: CONVERT, min: 0.8 },
  });
  const guestRate = metric({
    key: 'guest-writes-during-migration',
    label: 'guest 4 KiB durable writes while migrating',
    unit: 'writes/s',
    better: 'higher',
    target: { kind: 'ratio', peer: STILL, min: 0.9 },
  });
  const pause = metric({
    key: 'switchover-pause',
    label: 'switchover pause',
    unit: 'ms',
    better: 'lower',
    target: { kind: 'max', value: 10 },
  });
  const maxLatency = metric({
    key: 'guest-max-write-latency',
    label: 'guest max write latency while migrating',
    unit: 'ms',
    better: 'lower',
    target: { kind: 'max', value: 20 },
  });
  const errors: Record<string, string> = {};
  const raw: Record<string, unknown> = {};
  /** `--only instant` or `--only migration` runs one part. */
  const part = (name: 'instant' | 'migration') => !opts.only || opts.only.includes(name);

  const dir = mkdtempSync(join(opts.workdir, 'haven-bench-recovery-'));
  const site = new BenchSite(dir, 3_600_000);
  const { data } = site;
  const repo = join(dir, 'repo');
  const haven = (...args: string[]) => site.haven(...args);
  const json = async <T>(...args: string[]) => JSON.parse(await haven(...args, '--json')) as T;
  const watches: ConsoleWatch[] = [];
  const watch = async (vm: string) => {
    const { id } = await json<{ id: string }>('vm', 'show', vm);
    const w = new ConsoleWatch(join(data, 'vms', id, 'console.log'));
    watches.push(w);
    return w;
  };
  const unregister = onInterrupt(() => {
    for (const w of watches) w.close();
    void site.stop();
    rmSync(dir, { recursive: true, force: true });
  });
  try {
    ensurePeerTools([{ command: 'qemu-img', pkg: 'qemu-utils' }], opts.install, log);
    const guest = ensureGuest();
    const vmArgs = ['--memory', '192M', '--kernel', guest.kernel, '--initrd', guest.initrd];
    await site.start();
    await haven('pool', 'create', 'fast');
    await haven('repo', 'init', '--repo', repo);
    const imageOf = (size: number) => join(dir, `disk-${size / MiB}m.img`);
    const image = imageOf(sizes[0]!); // kept for qemu-img convert

    // A VM on a disk of that size: an image (40% zeros, 30% random, 30% repeated), imported.
    const prepare = async (size: number) => {
      const tag = `${size / MiB}m`;
      log(`${fmtSize(size)}: a disk image, imported as a VM's disk`);
      makeDiskImage(imageOf(size), size);
      const wantHash = sha256File(imageOf(size), READ_BYTES);
      await haven('volume', 'import', imageOf(size), '--name', `src-${tag}`);
      if (size !== sizes[0]) rmSync(imageOf(size));
      await haven('vm', 'create', `src-${tag}`, '--disk', `src-${tag}`, ...vmArgs, '--cmdline', STREAM_CMD);
      return { tag, wantHash };
    };
    for (const [i, size] of sizes.entries()) {
      if (!part('instant')) break;
      const { tag, wantHash } = await prepare(size);
      const before = new Set((await json<{ id: string }[]>('repo', 'list', '--repo', repo)).map((s) => s.id));
      await haven('backup', `vm:src-${tag}`, '--repo', repo);
      const snap = (await json<{ id: string }[]>('repo', 'list', '--repo', repo)).find(
        (s) => !before.has(s.id),
      )!;

      const checkHash = (line: string, what: string) => {
        if (!line.includes(`"sha256":"${wantHash}"`))
          throw new Error(`${what}: the guest read other data than the image holds: ${line}`);
      };
      const first: Record<string, number[]> = { [HAVEN]: [], [RESTORE]: [] };
      const booted: Record<string, number[]> = { [HAVEN]: [], [LOCAL]: [] };
      for (let r = 0; r < repeat; r++) {
        // Instant recovery: one command, the VM runs from the backup.
        let t0 = Date.now();
        await haven('recover', 'instant', snap.id, '--repo', repo, '--name', 'ir', '--cmdline', BOOT_CMD);
        let w = await watch('ir');
        first[HAVEN]!.push(((await w.waitFor(READY)).at - t0) / 1000);
        const fromBackup = await w.waitFor(HASHED);
        checkHash(fromBackup.text, 'from the backup');
        booted[HAVEN]!.push((fromBackup.at - t0) / 1000);
        w.close();
        await haven('recover', 'discard', 'ir');

        // Full restore to a new volume, then a VM on it.
        t0 = Date.now();
        await haven('restore', snap.id, '--repo', repo, '--to', 'volume:rs');
        await haven('vm', 'create', 'rs', '--disk', 'rs', ...vmArgs, '--cmdline', BOOT_CMD);
        w = await watch('rs');
        const t1 = Date.now();
        await haven('vm', 'start', 'rs');
        first[RESTORE]!.push(((await w.waitFor(READY)).at - t0) / 1000);
        const local = await w.waitFor(HASHED);
        checkHash(local.text, 'from the restored volume');
        booted[LOCAL]!.push((local.at - t1) / 1000);
        w.close();
        await haven('vm', 'stop', 'rs', '--force');
        await haven('vm', 'delete', 'rs');
        await haven('volume', 'delete', 'rs');
        log(
          `${fmtSize(size)}: first line ${first[HAVEN]!.at(-1)!.toFixed(1)} s instant, ${first[RESTORE]!.at(-1)!.toFixed(1)} s restore + boot; ` +
            `boot and read ${booted[HAVEN]!.at(-1)!.toFixed(1)} s from backup, ${booted[LOCAL]!.at(-1)!.toFixed(1)} s local`,
        );
      }
      for (const [s, xs] of Object.entries(first)) {
        firstLine[i]!.values[s] = median(xs);
        firstLine[i]!.samples![s] = xs;
      }
      for (const [s, xs] of Object.entries(booted)) {
        boot[i]!.values[s] = median(xs);
        boot[i]!.samples![s] = xs;
      }
      if (i > 0) {
        await haven('vm', 'delete', `src-${tag}`);
        for (const x of await json<{ name: string }[]>('snapshot', 'list', `src-${tag}`))
          await haven('snapshot', 'delete', `src-${tag}`, x.name); // the backup's checkpoint
        await haven('volume', 'delete', `src-${tag}`);
      }
    }
    for (const s of [HAVEN, RESTORE]) {
      const [a, b] = firstLine.map((m) => m.values[s]);
      if (a && b) growth.values[s] = b / a;
    }

    // Live migration of the first size's disk while its VM streams writes.
    if (!part('migration')) throw new Error('skipped: migration (--only)');
    if (!part('instant')) await prepare(sizes[0]!);
    const vm = `src-${sizes[0]! / MiB}m`;
    await haven('vm', 'start', vm);
    const w = await watch(vm);
    await w.waitFor('"seq":10,');
    const moves: { copy: number; still: number; during: number; pause: number; maxMs: number }[] = [];
    const pools = ['fast', 'default'];
    for (let r = 0; r < repeat; r++) {
      const quiet0 = Date.now();
      await sleep(opts.runtime * 1000);
      const still = writeRate(w.writes(), quiet0, Date.now());
      const job = await json<{
        startedAt: string;
        endedAt: string;
        result: { volumes: { copiedBytes: number; copySeconds: number; seconds: number; pauseMs: number }[] };
      }>('vm', 'move-storage', vm, '--pool', pools[r % 2]!);
      const moved = job.result.volumes[0]!;
      const from = Date.parse(job.startedAt);
      const to = Date.parse(job.endedAt);
      w.poll();
      const writes = w.writes(); // parsed once: every line of the guest's log
      const maxMs = (a: number, b: number) => Math.max(0, ...writesIn(writes, a, b).map((x) => x.us / 1000));
      const meanMs = (a: number, b: number) => {
        const xs = writesIn(writes, a, b);
        return xs.reduce((n, x) => n + x.us, 0) / Math.max(1, xs.length) / 1000;
      };
      const m = {
        copy: moved.copiedBytes / MiB / moved.copySeconds,
        still,
        during: writeRate(writes, from, to),
        pause: moved.pauseMs,
        maxMs: maxMs(from, to + 100),
      };
      moves.push(m);
      const switched = from + moved.copySeconds * 1000;
      log(
        `  guest writes/s until the switch ${writeRate(writes, from, switched).toFixed(1)}, while the source is removed ${writeRate(writes, switched, to).toFixed(1)}; ` +
          `mean write latency ${meanMs(quiet0, from).toFixed(1)} ms before, ${meanMs(from, switched).toFixed(1)} ms until the switch, ${meanMs(switched, to).toFixed(1)} ms after; ` +
          `max ${maxMs(quiet0, from).toFixed(0)} ms before`,
      );
      log(
        `move ${r + 1}: ${(moved.copiedBytes / MiB).toFixed(0)} MiB durable in ${moved.copySeconds.toFixed(1)} s = ${m.copy.toFixed(0)} MiB/s (${moved.seconds.toFixed(1)} s with the source removed); ` +
          `guest ${m.during.toFixed(1)} writes/s (${m.still.toFixed(1)} before); pause ${m.pause.toFixed(1)} ms; max write ${m.maxMs.toFixed(0)} ms`,
      );
    }
    w.close();
    await haven('vm', 'stop', vm, '--force');
    const converts: number[] = [];
    let out = '';
    for (let r = 0; r < repeat; r++) {
      // A new file each time: removing the last one would discard a gigabyte under the next run.
      out = join(dir, `convert-${r}.img`);
      warmFile(image);
      const t0 = performance.now();
      await run('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', image, out], { timeout: 3_600_000 });
      await run('sync', [out]);
      const seconds = (performance.now() - t0) / 1000;
      const allocated = statSync(out).blocks * 512;
      converts.push(allocated / MiB / seconds);
      log(`qemu-img convert: ${(allocated / MiB).toFixed(0)} MiB in ${seconds.toFixed(1)} s`);
    }
    const put = (mt: Metric, s: string, xs: number[]) => {
      mt.values[s] = median(xs);
      mt.samples![s] = xs;
    };
    put(
      copy,
      HAVEN,
      moves.map((m) => m.copy),
    );
    put(copy, CONVERT, converts);
    put(
      guestRate,
      HAVEN,
      moves.map((m) => m.during),
    );
    put(
      guestRate,
      STILL,
      moves.map((m) => m.still),
    );
    put(
      pause,
      HAVEN,
      moves.map((m) => m.pause),
    );
    put(
      maxLatency,
      HAVEN,
      moves.map((m) => m.maxMs),
    );
    raw.moves = moves;
  } catch (e) {
    const msg = (e as Error).message;
    if (msg.startsWith('skipped')) errors[HAVEN] = msg;
    else errors[HAVEN] = (e as Error).stack ?? String(e);
  } finally {
    for (const w of watches) w.close();
    await site.stop();
    rmSync(dir, { recursive: true, force: true });
    unregister();
  }
  return {
    name: 'recovery',
    title: 'Instant recovery and live storage migration',
    ...runSpan(startedAt),
    haven: HAVEN,
    subjects,
    errors,
    metrics: [...firstLine, growth, ...boot, copy, guestRate, pause, maxLatency],
    settings: {
      sizes: sizes.map(fmtSize),
      repeat,
      quietSeconds: opts.runtime,
      guest: 'the test guest, 1 CPU, 192 MiB, TCG',
      boot: `to the agent's first line, then until it has hashed the first ${fmtSize(READ_BYTES)} of its disk`,
      stream: '4 KiB writes, each made durable (dd conv=fsync), as fast as the guest can',
      convert: 'qemu-img convert -f raw -O raw IMAGE OUT; sync OUT (source warm in the page cache)',
    },
    environment: {
      ...environment({ 'qemu-system-x86_64': ['--version'] }),
      qemuImg: toolVersion('qemu-img', ['--version']),
    },
    raw,
    notes: [
      'instant: "haven recover instant" to the first line; restore + boot: "haven restore --to volume:" + "vm create" + "vm start" to the first line',
      'boot from backup counts from "recover instant"; from the local (restored) volume from "vm start"',
      'migration copy: bytes of data copied (zeros are skipped by both) per second until durable: Haven until the running VM switched to its copy (the source is removed after), qemu-img offline until its sync',
      'guest writes: rate during each move against the same guest in the quiet seconds just before it',
    ],
  };
}

export const recoveryBenchmark: Benchmark = {
  name: 'recovery',
  title: 'Instant recovery and live storage migration',
  description:
    'Instant recovery against a full restore followed by a boot at two disk sizes, boot from backup against from a local volume, and live migration of a running VM: copy throughput against qemu-img convert, guest write rate against no migration, switchover pause.',
  run: runRecovery,
};
