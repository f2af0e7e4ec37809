/**
 * The test guest harness: builds data disks, boots the tiny test guest (guest/init, built by
 * scripts/build-guest) under QEMU TCG with given drives, talks to its agent over the serial
 * console and collects its `HAVEN-GUEST {json}` result lines. Every wait has a time-out; a
 * time-out kills QEMU and the error carries the guest's console. No QEMU outlives the test
 * process (kill on exit as a safety net). Command syntax and result lines: docs/guest.md.
 */
import { spawn, execFile, execFileSync, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { EventEmitter, once } from 'node:events';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { truncate, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const REPO = fileURLToPath(new URL('../../../', import.meta.url));

export interface GuestPaths {
  kernel: string;
  initrd: string;
}

/** Where scripts/build-guest puts the guest (it may not exist yet: see ensureGuest). */
export function buildGuestPaths(): GuestPaths {
  const dir = join(REPO, '.cache', 'guest');
  return { kernel: join(dir, 'vmlinuz'), initrd: join(dir, 'initramfs.cpio') };
}

let ensured: GuestPaths | undefined;
/** Builds the guest when it is missing or its sources changed (once per process); returns its paths. */
export function ensureGuest(): GuestPaths {
  if (ensured) return ensured;
  const paths = buildGuestPaths();
  try {
    execFileSync(join(REPO, 'scripts', 'build-guest'), { stdio: 'pipe', cwd: REPO });
  } catch (e) {
    const err = e as { stdout?: Buffer; stderr?: Buffer; message: string };
    throw new Error(`scripts/build-guest failed: ${err.message}\n${err.stdout ?? ''}${err.stderr ?? ''}`);
  }
  if (!existsSync(paths.kernel) || !existsSync(paths.initrd))
    throw new Error(`scripts/build-guest left no guest in ${dirname(paths.kernel)}`);
  ensured = paths;
  return paths;
}

// --- pattern bytes, exactly as the agent makes them (`yes LINE | head -c LENGTH`) ---------------

function repeatLine(line: string, length: number): Buffer {
  const unit = Buffer.from(`${line}\n`);
  const out = Buffer.alloc(length);
  for (let at = 0; at < length; at += unit.length) unit.copy(out, at, 0, Math.min(unit.length, length - at));
  return out;
}

/** The bytes of write number `seq` of `write-pattern`/`stream` with `seed`, at `offset`. */
export function patternBytes(seed: string | number, seq: number, offset: number, length: number): Buffer {
  return repeatLine(`haven seed=${seed} seq=${seq} off=${offset}`, length);
}

/** The content of a file written by the `fs` instruction. */
export function fileBytes(seed: string | number, path: string, length: number): Buffer {
  return repeatLine(`haven seed=${seed} file=${path}`, length);
}

export function sha256(data: Buffer | string): string {
  return createHash('sha256').update(data).digest('hex');
}

// --- data disks -------------------------------------------------------------------------------------

/** A sparse raw image of `size` bytes, all zeroes. */
export async function makeBlankDisk(path: string, size: number): Promise<void> {
  await writeFile(path, '');
  await truncate(path, size);
}

/** A raw image of `size` bytes holding an ext4 file system with `files` (path → content). */
export async function makeExt4Disk(
  path: string,
  size: number,
  files: Record<string, string | Buffer> = {},
): Promise<void> {
  const src = mkdtempSync(`${path}.d-`);
  try {
    for (const [name, content] of Object.entries(files)) {
      const p = join(src, name);
      mkdirSync(dirname(p), { recursive: true });
      writeFileSync(p, content);
    }
    await makeBlankDisk(path, size);
    await promisify(execFile)('mkfs.ext4', ['-q', '-F', '-E', 'root_owner=0:0', '-d', src, path]);
  } finally {
    rmSync(src, { recursive: true, force: true });
  }
}

// --- the running guest --------------------------------------------------------------------------------

export interface GuestDrive {
  /** An image file, or … */
  path?: string;
  /** … a URI QEMU opens itself: nbd://127.0.0.1:PORT/export, nbd+unix:///export?socket=PATH. */
  uri?: string;
  format?: 'raw' | 'qcow2';
  readOnly?: boolean;
  /** QEMU's cache mode; files default to writeback (guest flushes become host fdatasync). */
  cache?: 'none' | 'writeback' | 'writethrough' | 'directsync' | 'unsafe';
}

export interface LaunchOptions {
  /** Attached in order as /dev/vda, /dev/vdb, … */
  drives?: GuestDrive[];
  /** Instructions for the kernel command line, run before the console is read ("a; b" or [a, b]). */
  command?: string | string[];
  /** Lifetime limit: QEMU is killed after this long, whatever happens (default 120 s). */
  timeoutMs?: number;
  /** Guest memory in MiB (default 192). */
  memory?: number;
  /** A QMP unix socket for tests that drive QEMU itself (migration, block jobs). */
  qmpSocket?: string;
  /** More QEMU arguments, appended as given. */
  extraArgs?: string[];
}

/** One `HAVEN-GUEST {json}` line. */
export interface GuestResult {
  event: string;
  cmd?: string;
  [field: string]: unknown;
}

/** A write reported by `write-pattern` or `stream`. */
export interface GuestWrite extends GuestResult {
  event: 'write';
  seq: number;
  disk: string;
  offset: number;
  length: number;
  sha256: string;
}

/** The `started` result of `stream`: `disks` in the order writes cycle through them. */
export interface GuestStreamStarted extends GuestResult {
  event: 'started';
  cmd: 'stream';
  /** The disks, comma-separated (one disk: its name, as before multi-disk streams). */
  disk: string;
  disks: string[];
}

/**
 * Where a stream puts its write number `k` (counted from its first seq), as the agent computes it:
 * disk k mod n of its n disks, at start + (floor(k / n) mod slots) · len.
 */
export function streamTarget(
  stream: { disks: readonly string[]; len: number; start?: number; slots: number },
  k: number,
): { disk: string; offset: number } {
  const n = stream.disks.length;
  return {
    disk: stream.disks[k % n]!,
    offset: (stream.start ?? 0) + (Math.floor(k / n) % stream.slots) * stream.len,
  };
}

/** A failure of the guest or of waiting for it; `console` is everything the guest printed. */
export class GuestError extends Error {
  constructor(
    message: string,
    readonly console: string,
    readonly result?: GuestResult,
  ) {
    super(`${message}\n--- guest console ---\n${console.trimEnd()}\n--- end of guest console ---`);
    this.name = 'GuestError';
  }
}

const live = new Set<ChildProcess>();
process.on('exit', () => {
  for (const child of live) child.kill('SIGKILL');
});

/** Escapes a value for a QEMU `-drive` option list. */
const optValue = (v: string) => v.replace(/,/g, ',,');

export function qemuArgs(paths: GuestPaths, opts: LaunchOptions): string[] {
  const drives = opts.drives ?? [];
  const commands = Array.isArray(opts.command) ? opts.command.join('; ') : (opts.command ?? '');
  if (commands.includes('"')) throw new Error('guest commands cannot contain double quotes');
  const append = ['console=ttyS0', 'quiet', 'panic=-1', `haven.disks=${drives.length}`];
  if (commands) append.push(`haven.cmd="${commands}"`);
  const args = [
    ...['-machine', 'pc', '-accel', 'tcg', '-m', String(opts.memory ?? 192)],
    ...['-nodefaults', '-display', 'none', '-serial', 'stdio', '-nic', 'none', '-no-reboot'],
    ...['-kernel', paths.kernel, '-initrd', paths.initrd, '-append', append.join(' ')],
  ];
  for (const d of drives) {
    const file = d.uri ?? d.path;
    if (!file || (d.uri && d.path)) throw new Error('a guest drive needs exactly one of path and uri');
    const o = [`file=${optValue(file)}`, `format=${d.format ?? 'raw'}`, 'if=virtio'];
    if (d.cache ?? (d.path ? 'writeback' : undefined)) o.push(`cache=${d.cache ?? 'writeback'}`);
    if (d.readOnly) o.push('readonly=on');
    args.push('-drive', o.join(','));
  }
  if (opts.qmpSocket) args.push('-qmp', `unix:${opts.qmpSocket},server=on,wait=off`);
  args.push(...(opts.extraArgs ?? []));
  return args;
}

export class Guest extends EventEmitter {
  /** Every result so far, in order. */
  readonly results: GuestResult[] = [];
  /** Resolves when QEMU has exited (never rejects). */
  readonly exit: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  readonly child: ChildProcess;
  private out = '';
  private partial = '';
  private exited = false;
  /** Lines sent before the agent's `ready`: the console is not read yet, so they wait here. */
  private pending: string[] | undefined = [];
  private lifetime: NodeJS.Timeout;

  constructor(paths: GuestPaths, opts: LaunchOptions = {}) {
    super();
    this.setMaxListeners(100);
    const args = qemuArgs(paths, opts);
    this.child = spawn('qemu-system-x86_64', args, { stdio: ['pipe', 'pipe', 'pipe'] });
    live.add(this.child);
    this.child.stdout?.on('data', (d: Buffer) => this.onOutput(d.toString('latin1')));
    this.child.stderr?.on('data', (d: Buffer) => (this.out += d.toString()));
    this.child.stdin?.on('error', () => undefined); // EPIPE once QEMU is gone
    this.child.on('error', (e) => (this.out += `\nspawn error: ${e.message}\n`));
    this.exit = new Promise((resolve) => {
      this.child.on('close', (code, signal) => {
        this.exited = true;
        live.delete(this.child);
        clearTimeout(this.lifetime);
        this.out += `\n[qemu exited: ${signal ?? code}]\n`;
        this.emit('exit', code, signal);
        resolve({ code, signal });
      });
    });
    const limit = opts.timeoutMs ?? 120_000;
    this.lifetime = setTimeout(() => {
      this.out += `\n[harness: lifetime of ${limit} ms over, killing qemu]\n`;
      this.child.kill('SIGKILL');
    }, limit);
    this.lifetime.unref();
  }

  private onOutput(text: string) {
    this.out += text;
    const lines = (this.partial + text).split('\n');
    this.partial = lines.pop() ?? '';
    for (const raw of lines) {
      const line = raw.replace(/\r/g, '');
      const at = line.indexOf('HAVEN-GUEST {');
      if (at < 0) continue;
      let result: GuestResult;
      try {
        result = JSON.parse(line.slice(at + 'HAVEN-GUEST '.length)) as GuestResult;
      } catch {
        continue; // a result garbled by kernel messages stays in the console text only
      }
      this.results.push(result);
      if (result.event === 'ready' && this.pending) {
        for (const l of this.pending) this.child.stdin?.write(l);
        this.pending = undefined;
      }
      this.emit('result', result);
    }
  }

  /** Everything the guest printed so far (and QEMU's own messages). */
  console(): string {
    return this.out + this.partial;
  }

  get running(): boolean {
    return !this.exited;
  }

  /** Sends one instruction line to the agent over the serial console (held back until `ready`). */
  send(line: string): void {
    if (line.includes('\n')) throw new Error('one instruction per send');
    if (this.exited) throw new GuestError(`cannot send "${line}": the guest has exited`, this.console());
    if (this.pending) this.pending.push(`${line}\n`);
    else this.child.stdin?.write(`${line}\n`);
  }

  /**
   * The first result at index `from` (default 0) or later that satisfies `predicate`. Rejects with
   * the console when QEMU exits first or after `timeoutMs` (which also kills QEMU); rejects on an
   * `error` result when `failOnError` is set.
   */
  waitFor(
    predicate: (r: GuestResult) => boolean,
    opts: { timeoutMs?: number; from?: number; what?: string; failOnError?: boolean } = {},
  ): Promise<GuestResult> {
    const { timeoutMs = 30_000, from = 0, what = 'a result', failOnError = false } = opts;
    const failure = (r: GuestResult) =>
      new GuestError(`guest error while waiting for ${what}: ${String(r.message)}`, this.console(), r);
    for (const r of this.results.slice(from)) {
      if (predicate(r)) return Promise.resolve(r);
      if (failOnError && r.event === 'error') return Promise.reject(failure(r));
    }
    if (this.exited) return Promise.reject(new GuestError(`guest exited before ${what}`, this.console()));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        finish();
        this.child.kill('SIGKILL');
        reject(
          new GuestError(`timed out after ${timeoutMs} ms waiting for ${what}; qemu killed`, this.console()),
        );
      }, timeoutMs);
      const onResult = (r: GuestResult) => {
        if (predicate(r)) {
          finish();
          resolve(r);
        } else if (failOnError && r.event === 'error') {
          finish();
          reject(failure(r));
        }
      };
      const onExit = () => {
        finish();
        reject(new GuestError(`guest exited before ${what}`, this.console()));
      };
      const finish = () => {
        clearTimeout(timer);
        this.off('result', onResult);
        this.off('exit', onExit);
      };
      this.on('result', onResult);
      this.on('exit', onExit);
    });
  }

  /** Waits for the agent's `ready` line (the guest booted and found its disks). */
  ready(timeoutMs = 30_000): Promise<GuestResult> {
    return this.waitFor((r) => r.event === 'ready', { timeoutMs, what: 'the ready line' });
  }

  /**
   * Sends an instruction and waits for its `done`; returns it with every result it produced.
   * Rejects with a GuestError on an `error` result, an exit of QEMU or the time-out.
   */
  async run(line: string, timeoutMs = 30_000): Promise<{ done: GuestResult; results: GuestResult[] }> {
    const from = this.results.length;
    const verb = line.trim().split(/\s+/)[0];
    this.send(line);
    const done = await this.waitFor((r) => r.event === 'done' && r.cmd === verb, {
      timeoutMs,
      from,
      what: `"${line}" to finish`,
      failOnError: true,
    });
    return { done, results: this.results.slice(from, this.results.indexOf(done, from) + 1) };
  }

  /** The results of the kernel command line's instructions: waits until `count` of them are done. */
  async commandLineDone(count = 1, timeoutMs = 30_000): Promise<GuestResult[]> {
    let seen = 0;
    const last = await this.waitFor((r) => r.event === 'done' && ++seen === count, {
      timeoutMs,
      what: `${count} command line instruction(s) to finish`,
      failOnError: true,
    });
    return this.results.slice(0, this.results.indexOf(last) + 1);
  }

  /** Write results (write-pattern and stream) from index `from` on. */
  writes(from = 0): GuestWrite[] {
    return this.results.slice(from).filter((r): r is GuestWrite => r.event === 'write');
  }

  /** Async iteration over results, from the first one, until QEMU exits. */
  async *lines(): AsyncGenerator<GuestResult> {
    let i = 0;
    while (true) {
      while (i < this.results.length) yield this.results[i++]!;
      if (this.exited) return;
      await Promise.race([once(this, 'result'), once(this, 'exit')]);
    }
  }

  /** Asks the agent to power off; kills QEMU if it has not exited after `timeoutMs`. */
  async poweroff(timeoutMs = 15_000): Promise<void> {
    if (this.exited) return;
    this.send('poweroff');
    const timer = setTimeout(() => this.child.kill('SIGKILL'), timeoutMs);
    const { code, signal } = await this.exit;
    clearTimeout(timer);
    if (code !== 0)
      throw new GuestError(`guest did not power off cleanly (${signal ?? code})`, this.console());
  }

  /** Kills QEMU at once; resolves when it is gone. Safe to call at any time, repeatedly. */
  async kill(): Promise<void> {
    if (!this.exited) this.child.kill('SIGKILL');
    await this.exit;
  }
}

/** Boots the test guest (building it first if needed). Wait for `ready()` before sending. */
export function launchGuest(opts: LaunchOptions = {}): Guest {
  return new Guest(ensureGuest(), opts);
}
