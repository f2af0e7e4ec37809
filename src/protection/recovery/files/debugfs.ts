import { spawn } from 'node:child_process';
import { HavenError, unsupported } from '../../../common/index.js';

export type FileType = 'file' | 'directory' | 'symlink' | 'char-device' | 'block-device' | 'fifo' | 'socket';

/** A directory entry as debugfs's `ls -p` gives it. */
export interface DirEntry {
  name: string;
  inode: number;
  type: FileType;
  /** Permission bits, with setuid, setgid and sticky (mode & 0o7777). */
  mode: number;
  size: number;
}

/** An inode's times and, for a fast symlink, its target. */
export interface InodeInfo {
  /** Seconds since the epoch, with the nanoseconds of a large inode as the fraction. */
  mtime: number;
  /** The target of a symlink stored in the inode itself; longer ones are read with `cat`. */
  fastLink?: string;
}

const TYPES: Record<number, FileType> = {
  0o040000: 'directory',
  0o100000: 'file',
  0o120000: 'symlink',
  0o020000: 'char-device',
  0o060000: 'block-device',
  0o010000: 'fifo',
  0o140000: 'socket',
};

// Lines debugfs writes to stderr that are not errors: its banner, and what -c says it skips.
const CHATTER = /^(debugfs \d[^\n]*|.*catastrophic mode.*)$/;

/**
 * An ext2/3/4 filesystem read through e2fsprogs' debugfs, opened read-only in catastrophic mode
 * (no bitmaps read: only files and directories are looked at). Every command names inodes as
 * `<N>`, so no file name is ever quoted for debugfs's command parser. Each call runs one debugfs
 * process with its commands on stdin; in that mode debugfs echoes `debugfs: COMMAND` before each
 * command's output, which is what splits a batch's output per command. The journal is not
 * replayed: a filesystem backed up while mounted shows what its last checkpoint holds.
 */
export class Debugfs {
  /** `image` is a file path; `offset` the filesystem's byte offset in it (a partition's start). */
  constructor(
    private readonly image: string,
    private readonly offset = 0,
    private readonly what = image,
    private readonly signal?: AbortSignal,
  ) {}

  /** The entries of directory inode `dir`, without `.` and `..`. */
  async list(dir: number): Promise<DirEntry[]> {
    return (await this.listMany([dir])).get(dir)!;
  }

  /** The entries of several directories, in one debugfs run. */
  async listMany(dirs: number[]): Promise<Map<number, DirEntry[]>> {
    const out = new Map<number, DirEntry[]>();
    if (!dirs.length) return out;
    const parts = await this.batch(dirs.map((d) => `ls -p <${d}>`));
    for (const [i, d] of dirs.entries()) {
      const entries: DirEntry[] = [];
      // /INODE/MODE/UID/GID/NAME/SIZE/ — a name holds no "/" (but may hold a newline).
      for (const m of parts[i]!.matchAll(/^\/(\d+)\/(\d+)\/\d*\/\d*\/([^/]*)\/(\d*)\/$/gm)) {
        const [inode, mode, name, size] = [Number(m[1]), parseInt(m[2]!, 8), m[3]!, m[4]!];
        if (name === '.' || name === '..' || !inode) continue;
        const type = TYPES[mode & 0o170000];
        if (!type) continue;
        entries.push({ name, inode, type, mode: mode & 0o7777, size: size === '' ? 0 : Number(size) });
      }
      out.set(d, entries);
    }
    return out;
  }

  /** The times (and fast symlink targets) of inodes, in one debugfs run. */
  async stat(inodes: number[]): Promise<Map<number, InodeInfo>> {
    const out = new Map<number, InodeInfo>();
    if (!inodes.length) return out;
    const parts = await this.batch(inodes.map((n) => `stat <${n}>`));
    for (const [i, n] of inodes.entries()) {
      const text = parts[i]!;
      const m = /^\s*mtime: 0x([0-9a-f]+)(?::([0-9a-f]+))?/m.exec(text);
      if (!m) throw new HavenError('CORRUPT', `${this.what}: debugfs could not read inode ${n}`);
      const lo = parseInt(m[1]!, 16) | 0; // signed 32-bit seconds
      const extra = m[2] ? parseInt(m[2], 16) : 0;
      const mtime = lo + (extra & 3) * 2 ** 32 + (extra >>> 2) / 1e9;
      const link = /^Fast link dest: "(.*)"$/m.exec(text);
      out.set(n, { mtime, ...(link ? { fastLink: link[1]! } : {}) });
    }
    return out;
  }

  /**
   * Streams the contents of inodes, one after another in one debugfs run: `onData(i, bytes)` for
   * each piece of item i (awaited: the stream waits for a slow writer), `onEnd(i)` once it has
   * all `size` bytes. A size that does not match what debugfs writes fails the whole call.
   */
  async cat(
    items: { inode: number; size: number }[],
    onData: (i: number, bytes: Buffer) => Promise<void>,
    onEnd: (i: number) => Promise<void>,
  ): Promise<void> {
    if (!items.length) return;
    let i = 0;
    let header = Buffer.from(`debugfs: cat <${items[0]!.inode}>\n`);
    let headerSeen = 0;
    let left = items[0]!.size;
    const advance = async () => {
      while (i < items.length && headerSeen === header.length && left === 0) {
        await onEnd(i);
        i++;
        if (i < items.length) {
          header = Buffer.from(`debugfs: cat <${items[i]!.inode}>\n`);
          headerSeen = 0;
          left = items[i]!.size;
        }
      }
    };
    await this.run(
      items.map((x) => `cat <${x.inode}>`),
      async (chunk) => {
        let at = 0;
        while (at < chunk.length) {
          if (i >= items.length) throw this.mismatch('more bytes than the files hold');
          if (headerSeen < header.length) {
            const n = Math.min(header.length - headerSeen, chunk.length - at);
            if (!chunk.subarray(at, at + n).equals(header.subarray(headerSeen, headerSeen + n)))
              throw this.mismatch(`inode ${items[i]!.inode} is not ${items[i]!.size} bytes`);
            headerSeen += n;
            at += n;
          } else {
            const n = Math.min(left, chunk.length - at);
            await onData(i, chunk.subarray(at, at + n));
            left -= n;
            at += n;
          }
          await advance();
        }
      },
    );
    await advance();
    if (i < items.length) throw this.mismatch(`inode ${items[i]!.inode} ended early`);
  }

  /**
   * The output of each command of a batch. A name or symlink target can hold a line that looks
   * like debugfs's echo of a command; if the echoes are not exactly the commands, in order, each
   * command runs on its own instead, where only the first line is the echo.
   */
  private async batch(commands: string[]): Promise<string[]> {
    const stdout = await this.run(commands);
    const echoes = [...stdout.matchAll(/^debugfs: (.*)\n/gm)];
    if (echoes.length === commands.length && echoes.every((e, i) => e[1] === commands[i]))
      return echoes.map((e, i) => stdout.slice(e.index + e[0].length, echoes[i + 1]?.index ?? stdout.length));
    const out: string[] = [];
    for (const c of commands) {
      const one = await this.run([c]);
      out.push(one.slice(one.indexOf('\n') + 1));
    }
    return out;
  }

  private mismatch(why: string): HavenError {
    return new HavenError('CORRUPT', `${this.what}: debugfs's output does not match the directory: ${why}`);
  }

  /**
   * Runs `commands` in one debugfs process. With `onStdout` the output streams to it (and the
   * returned text is empty); else it is collected. Any error debugfs reports fails the call.
   */
  private run(commands: string[], onStdout?: (chunk: Buffer) => Promise<void>): Promise<string> {
    const signal = this.signal;
    const spec = this.offset ? `${this.image}?offset=${this.offset}` : this.image;
    return new Promise((resolve, reject) => {
      const child = spawn('debugfs', ['-c', '-f', '-', spec], {
        stdio: ['pipe', 'pipe', 'pipe'],
        ...(signal ? { signal } : {}),
      });
      const out: Buffer[] = [];
      let err = '';
      let failure: unknown;
      child.stderr.on('data', (d: Buffer) => (err += d.toString()));
      child.on('error', (e: NodeJS.ErrnoException) => {
        failure ??=
          e.code === 'ENOENT'
            ? unsupported('file-level restore needs debugfs (Debian package e2fsprogs): run scripts/setup')
            : e;
      });
      child.stdin.on('error', () => undefined); // debugfs gone early: its exit says why
      child.stdin.end(commands.join('\n') + '\n');
      const pump = (async () => {
        for await (const chunk of child.stdout as AsyncIterable<Buffer>) {
          if (failure) continue; // drain, so that debugfs can exit
          if (!onStdout) out.push(chunk);
          else
            await onStdout(chunk).catch((e: unknown) => {
              failure = e;
              child.kill();
            });
        }
      })();
      child.on('close', () => {
        void pump.then(() => {
          if (failure)
            return reject(
              signal?.aborted ? new HavenError('CANCELLED', `${this.what}: interrupted`) : failure,
            );
          const errors = err.split('\n').filter((l) => l.trim() && !CHATTER.test(l));
          if (errors.length) return reject(this.error(errors));
          resolve(Buffer.concat(out).toString('utf8'));
        }, reject);
      });
    });
  }

  private error(lines: string[]): HavenError {
    const text = lines.join('; ');
    if (/while (trying to open|opening filesystem)|Bad magic number|Filesystem not open/.test(text))
      return new HavenError(
        'UNSUPPORTED',
        `${this.what} holds no readable ext2/3/4 filesystem: ${lines[0]!.replace(/^debugfs: /, '')}`,
      );
    return new HavenError('IO', `${this.what}: debugfs: ${text}`);
  }
}
