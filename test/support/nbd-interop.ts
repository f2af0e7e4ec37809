/**
 * The NBD interop matrix: every real peer (qemu-img map and convert, qemu-io, nbdinfo --map,
 * nbdcopy, Haven's own client) against one export of a Haven server, expecting the content of
 * `writeInteropSource`. Servers register it once per way in (named export, default export,
 * plain, TLS), so a path only one of them takes cannot break unseen (issue 14: the default
 * export lost its block status while every test named the export).
 */
import { it } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { openSync, readFileSync, closeSync, writeSync, ftruncateSync } from 'node:fs';
import { join } from 'node:path';
import { HAVEN_BIN, run } from './proc.js';

const MiB = 1024 * 1024;
export const INTEROP_SIZE = 8 * MiB;
/** What every peer must see of the source, as merged [offset, length, data | zero] runs. */
export const INTEROP_MAP: [number, number, 'data' | 'zero'][] = [
  [0, 3 * MiB, 'data'],
  [3 * MiB, 4 * MiB, 'zero'],
  [7 * MiB, MiB, 'data'],
];

/** A sparse 8 MiB raw image: random data, a 0x5a run, a 4 MiB hole, random data. */
export function writeInteropSource(path: string): void {
  const fd = openSync(path, 'w');
  try {
    ftruncateSync(fd, INTEROP_SIZE);
    writeSync(fd, randomBytes(MiB), 0, MiB, 0);
    writeSync(fd, Buffer.alloc(2 * MiB, 0x5a), 0, 2 * MiB, MiB);
    writeSync(fd, randomBytes(MiB), 0, MiB, 7 * MiB);
  } finally {
    closeSync(fd);
  }
}

/** One way into an export, as each peer spells it. */
export interface NbdEndpoint {
  /** libnbd URI (nbdinfo, nbdcopy). */
  uri: string;
  /** qemu-img / qemu-io: the options before the image (`-f raw`, or `--object … --image-opts`) and the image. */
  qemu: { args: string[]; image: string };
  /** Haven's client: the URI and its TLS options. */
  haven: string[];
}

/** A plain endpoint reached by URI alone. */
export function plainEndpoint(uri: string): NbdEndpoint {
  return { uri, qemu: { args: ['-f', 'raw'], image: uri }, haven: [uri] };
}

export interface InteropOptions {
  /** Where the peers write their copies. */
  scratch: string;
  /** The source file the export holds (by hash). */
  source: string;
  /** Skip the qemu-io writes (read-only exports). */
  readOnly?: boolean;
}

const sha = (f: string) => createHash('sha256').update(readFileSync(f)).digest('hex');

type Run = [number, number, 'data' | 'zero'];
/** Merges neighbouring runs of the same kind (servers may split them differently). */
function merged(runs: Run[]): Run[] {
  const out: Run[] = [];
  for (const r of runs) {
    const last = out[out.length - 1];
    if (last && last[2] === r[2] && last[0] + last[1] === r[0]) last[1] += r[1];
    else out.push([...r]);
  }
  return out;
}

/**
 * Registers the matrix's cases under `label` (call inside a describe whose `before` makes the
 * endpoint). The qemu-io writes come last and put back what they changed.
 */
export function interopCases(label: string, ep: () => NbdEndpoint, opts: InteropOptions): void {
  const out = (name: string) => join(opts.scratch, `${label.replace(/\W+/g, '-')}-${name}`);

  it(`${label}: qemu-img map`, async () => {
    const { args, image } = ep().qemu;
    const { stdout } = await run('qemu-img', ['map', '--output=json', ...args, image]);
    const ext = JSON.parse(stdout) as { start: number; length: number; zero: boolean }[];
    assert.deepEqual(merged(ext.map((e) => [e.start, e.length, e.zero ? 'zero' : 'data'])), INTEROP_MAP);
  });

  it(`${label}: qemu-img convert, same bytes as the source`, async () => {
    const { args, image } = ep().qemu;
    const copy = out('convert.raw');
    await run('qemu-img', ['convert', ...args, '-O', 'raw', image, copy]);
    assert.equal(sha(copy), sha(opts.source));
  });

  it(`${label}: nbdinfo --map`, async () => {
    const { stdout } = await run('nbdinfo', ['--map', ep().uri]);
    const rows = stdout
      .trim()
      .split('\n')
      .map((l) => l.trim().split(/\s+/).map(Number))
      .map(([o, l, t]): Run => [o!, l!, t! & 2 ? 'zero' : 'data']);
    assert.deepEqual(merged(rows), INTEROP_MAP);
  });

  it(`${label}: nbdcopy to null: and to a file, same bytes as the source`, async () => {
    await run('nbdcopy', [ep().uri, 'null:']);
    const copy = out('nbdcopy.raw');
    await run('nbdcopy', [ep().uri, copy]);
    assert.equal(sha(copy), sha(opts.source));
  });

  it(`${label}: haven nbd info --map and haven nbd copy`, async () => {
    const [uri, ...tls] = ep().haven;
    const info = JSON.parse(
      (await run(process.execPath, [HAVEN_BIN, 'nbd', 'info', uri!, '--map', '--json', ...tls])).stdout,
    ) as { map: { extents: { offset: number; length: number; flags: number }[] } };
    assert.deepEqual(
      merged(info.map.extents.map((e) => [e.offset, e.length, e.flags & 2 ? 'zero' : 'data'])),
      INTEROP_MAP,
    );
    const copy = out('haven-copy.raw');
    await run(process.execPath, [HAVEN_BIN, 'nbd', 'copy', uri!, copy, ...tls]);
    assert.equal(sha(copy), sha(opts.source));
  });

  it(`${label}: qemu-io ${opts.readOnly ? 'reads' : 'writes and reads back'}`, async () => {
    const { args, image } = ep().qemu;
    const cmds = opts.readOnly
      ? ['read -P 0x5a 1M 2M', 'read -P 0 3M 4M']
      : [
          'write -P 0xa5 1M 64k',
          'read -P 0xa5 1M 64k',
          'write -P 0x5a 1M 64k', // back to the source's bytes
          'read -P 0x5a 1M 2M',
          'write -z -u 4M 64k', // may punch: the map stays as it was
          'discard 5M 64k',
          'read -P 0 3M 4M',
          'flush',
        ];
    const ro = opts.readOnly ? ['-r'] : [];
    const { stdout, stderr } = await run('qemu-io', [
      ...ro,
      ...args,
      ...cmds.flatMap((c) => ['-c', c]),
      image,
    ]);
    assert.doesNotMatch(stdout + stderr, /Pattern verification failed|error|fail/i);
  });
}

/**
 * For servers that have no default export: every peer that names none is refused (qemu-img and
 * Haven's client show the server's message, which says how to name one; libnbd says "no export
 * named ''"), and `nbdinfo --list` on the same URI shows the names to use.
 */
export function defaultRefusedCases(
  label: string,
  ep: () => NbdEndpoint,
  message: RegExp,
  lists: string,
): void {
  const fails = async (cmd: string, args: string[]) => {
    const r = await run(cmd, args).then(
      () => undefined,
      (e: Error) => e.message,
    );
    assert.ok(r !== undefined, `${cmd} ${args.join(' ')} should have been refused`);
    return r;
  };
  it(`${label}: refused with a message naming the fix; nbdinfo --list shows the names`, async () => {
    const { args, image } = ep().qemu;
    assert.match(await fails('qemu-img', ['map', ...args, image]), message);
    const [uri, ...tls] = ep().haven;
    assert.match(await fails(process.execPath, [HAVEN_BIN, 'nbd', 'info', uri!, '--map', ...tls]), message);
    assert.match(await fails('nbdinfo', ['--map', ep().uri]), /no export named ''/);
    assert.match(await fails('nbdcopy', [ep().uri, 'null:']), /no export named ''/);
    assert.match((await run('nbdinfo', ['--list', ep().uri])).stdout, new RegExp(`export="${lists}"`));
  });
}
