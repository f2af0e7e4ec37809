/**
 * The chaos run (scripts/chaos, not CI): one site daemon, writers that flush through NBD, and
 * backup, gc, prune, restore, snapshot and live migration run concurrently while the daemon is
 * killed with -9 at random moments. At the end every snapshot in the repository must verify, the
 * newest backup of every volume must restore to a disk of whole, untorn records, and every write
 * a flush acknowledged must be on its volume.
 *
 * Usage: node dist/test/chaos/chaos.js [--minutes 10] [--seed N] [--volumes 3] [--keep]
 */
import { execFile } from 'node:child_process';
import { closeSync, openSync, readSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs, promisify } from 'node:util';
import { setTimeout as sleep } from 'node:timers/promises';
import { connectNbd, type NbdClientDevice } from '../../src/nbd/index.js';
import { HAVEN_BIN, type Running } from '../support/proc.js';
import { startDaemon } from '../support/site.js';
import { patternBytes } from '../support/guest.js';
import { tempDir } from '../support/tmp.js';

const run = promisify(execFile);
const { values: opt } = parseArgs({
  options: {
    minutes: { type: 'string', default: '10' },
    seed: { type: 'string', default: String(Date.now() % 100000) },
    volumes: { type: 'string', default: '3' },
    keep: { type: 'boolean', default: false },
  },
});

const BLOCK = 4096;
const VOLUME_SIZE = 64 * 1024 * 1024;
const SLOTS = VOLUME_SIZE / BLOCK;
const seed = Number(opt.seed);
const endAt = Date.now() + Number(opt.minutes) * 60_000;

// A small deterministic generator (mulberry32), so that a run can be repeated with --seed.
let state = seed >>> 0;
function rand(n: number): number {
  state = (state + 0x6d2b79f5) >>> 0;
  let t = state;
  t = Math.imul(t ^ (t >>> 15), t | 1);
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
  return Math.floor((((t ^ (t >>> 14)) >>> 0) / 4294967296) * n);
}

const tmp = tempDir('haven-chaos-');
const dataDir = join(tmp.path, 'data');
const repo = join(tmp.path, 'repo');
const scratch = join(tmp.path, 'scratch');
const env: NodeJS.ProcessEnv = { ...process.env, HAVEN_DATA: dataDir, HAVEN_CONFIG: join(tmp.path, 'none') };
delete env.HAVEN_API;
delete env.HAVEN_TOKEN;
const socket = join(dataDir, 'run', 'nbd.sock');

let daemon: Running | undefined;
let up = false;
const stats = {
  kills: 0,
  ops: {} as Record<string, { ok: number; failed: number }>,
  acked: 0,
  issued: 0,
  reflushed: 0,
  failures: [] as string[],
};

async function haven(...args: string[]): Promise<string> {
  return (await run(HAVEN_BIN, args, { env, timeout: 300_000, maxBuffer: 64 << 20 })).stdout;
}

function count(kind: string, ok: boolean, err?: unknown): void {
  const o = (stats.ops[kind] ??= { ok: 0, failed: 0 });
  if (ok) o.ok++;
  else {
    o.failed++;
    const msg = String((err as { stderr?: string }).stderr || (err as Error).message || err).trim();
    if (stats.failures.length < 400) stats.failures.push(`${kind}: ${msg.split('\n')[0]}`);
  }
}

// --- writers: durable writes over NBD, each acknowledged by a flush --------------------------------

/** Per volume: the sequence numbers ever issued to each slot, and the newest one a flush covered. */
interface Ledger {
  name: string;
  issued: Map<number, number[]>;
  acked: Map<number, number>;
  seq: number;
}
const ledgers: Ledger[] = [];

async function writer(l: Ledger): Promise<void> {
  let dev: NbdClientDevice | undefined;
  const buf = Buffer.alloc(BLOCK);
  // Writes the server answered whose flush has not been answered yet. After a reconnect they are
  // flushed on the new connection, as QEMU's NBD client does (reconnect-delay): a flush the new
  // daemon answers must cover writes the old one answered before it was killed.
  let unflushed: [number, number][] = [];
  const flushed = () => {
    for (const [slot, seq] of unflushed) if ((l.acked.get(slot) ?? 0) < seq) l.acked.set(slot, seq);
    stats.acked += unflushed.length;
    unflushed = [];
  };
  while (Date.now() < endAt) {
    try {
      if (!up) {
        await sleep(100);
        continue;
      }
      if (!dev) {
        dev = await connectNbd(`nbd+unix:///${l.name}?socket=${socket}`, { timeoutMs: 5000 });
        if (unflushed.length) {
          await dev.flush();
          stats.reflushed += unflushed.length;
          flushed();
        }
      }
      for (let i = 0; i < 16; i++) {
        const slot = rand(SLOTS);
        const seq = ++l.seq;
        const list = l.issued.get(slot) ?? [];
        list.push(seq);
        l.issued.set(slot, list);
        stats.issued++;
        buf.set(patternBytes(seed, seq, slot * BLOCK, BLOCK));
        await dev.write(buf, slot * BLOCK);
        unflushed.push([slot, seq]);
      }
      await dev.flush();
      flushed();
    } catch {
      // the daemon went away (or a move switched under us): reconnect once it is back
      await dev?.close().catch(() => undefined);
      dev = undefined;
      await sleep(200);
    }
  }
  await dev?.close().catch(() => undefined);
}

/** The sequence number whose record a block holds, 0 for zeroes, -1 for anything else (torn). */
function seqOf(block: Buffer, offset: number): number {
  if (block.every((b) => b === 0)) return 0;
  const m = /^haven seed=(\d+) seq=(\d+) off=(\d+)\n/.exec(block.subarray(0, 80).toString('latin1'));
  if (!m || Number(m[1]) !== seed || Number(m[3]) !== offset) return -1;
  const seq = Number(m[2]);
  return block.equals(patternBytes(seed, seq, offset, BLOCK)) ? seq : -1;
}

// --- operations ------------------------------------------------------------------------------------

const volumes = (): string[] => ledgers.map((l) => l.name);
let restores = 0;

const operations: Record<string, () => Promise<void>> = {
  backup: async () => {
    await haven('backup', `volume:${volumes()[rand(ledgers.length)]}`, '--repo', repo);
  },
  gc: async () => {
    await haven('repo', 'gc', '--repo', repo, '--grace', '0');
  },
  prune: async () => {
    // Retention is per source; prune one that has snapshots (a source with none is an error).
    const list = JSON.parse(await haven('repo', 'list', '--repo', repo, '--json')) as {
      source: { kind: string; name: string };
    }[];
    if (list.length === 0) return;
    const s = list[rand(list.length)]!.source;
    await haven('repo', 'prune', '--repo', repo, '--keep-last', '2', '--source', `${s.kind}:${s.name}`);
  },
  restore: async () => {
    const list = JSON.parse(await haven('repo', 'list', '--repo', repo, '--json')) as { id: string }[];
    if (list.length === 0) return;
    const snap = list[rand(list.length)]!.id;
    const file = join(scratch, `restore-${++restores}.raw`);
    try {
      await haven('restore', snap, '--repo', repo, '--to', file);
      checkWhole(file, snap);
    } finally {
      rmSync(file, { force: true });
    }
  },
  snapshot: async () => {
    const v = volumes()[rand(ledgers.length)]!;
    // A kill between create and delete leaves a snapshot behind (and moves refused): clear it.
    const left = JSON.parse(await haven('snapshot', 'list', v, '--json')) as { name: string }[];
    for (const x of left) if (/^c\d+$/.test(x.name)) await haven('snapshot', 'delete', v, x.name);
    const name = `c${Date.now()}`;
    await haven('snapshot', 'create', v, name);
    await haven('snapshot', 'delete', v, name);
  },
  move: async () => {
    const v = volumes()[rand(ledgers.length)]!;
    const info = JSON.parse(await haven('volume', 'list', '--json')) as { name: string; pool: string }[];
    const pool = info.find((i) => i.name === v)?.pool === 'p2' ? 'default' : 'p2';
    await haven('volume', 'move', v, '--pool', pool);
  },
};

/** Every block of a restored disk is zeroes or one whole record of this run: nothing torn. */
function checkWhole(file: string, snap: string): void {
  const fd = openSync(file, 'r');
  const block = Buffer.alloc(BLOCK);
  try {
    for (let slot = 0; slot < SLOTS; slot++) {
      readSync(fd, block, 0, BLOCK, slot * BLOCK);
      if (seqOf(block, slot * BLOCK) < 0)
        throw new Error(`restore of ${snap}: block ${slot} is torn or foreign`);
    }
  } finally {
    closeSync(fd);
  }
}

async function operator(): Promise<void> {
  const kinds = Object.keys(operations);
  while (Date.now() < endAt) {
    if (!up) {
      await sleep(100);
      continue;
    }
    const kind = kinds[rand(kinds.length)]!;
    const wasUp = stats.kills;
    try {
      await operations[kind]!();
      count(kind, true);
    } catch (e) {
      // Failures while the daemon was killed are expected; the rest are listed for review.
      count(stats.kills === wasUp ? kind : `${kind} (daemon killed)`, false, e);
      if (String((e as Error).message).includes('torn')) throw e;
    }
  }
}

async function killer(): Promise<void> {
  while (Date.now() < endAt - 20_000) {
    await sleep(15_000 + rand(30_000));
    if (Date.now() > endAt - 20_000) break;
    up = false;
    daemon!.child.kill('SIGKILL');
    await daemon!.stop();
    stats.kills++;
    daemon = await startDaemon(dataDir);
    up = true;
  }
}

// --- the run ---------------------------------------------------------------------------------------

async function main(): Promise<number> {
  console.log(`chaos: seed ${seed}, ${opt.minutes} min, ${opt.volumes} volumes of 64 MiB, in ${tmp.path}`);
  daemon = await startDaemon(dataDir);
  up = true;
  await run('mkdir', ['-p', scratch]);
  await haven('pool', 'create', 'p2');
  await haven('repo', 'init', '--repo', repo, '--chunk-size', '64K');
  for (let i = 0; i < Number(opt.volumes); i++) {
    const name = `v${i}`;
    await haven('volume', 'create', name, '--size', '64M');
    ledgers.push({ name, issued: new Map(), acked: new Map(), seq: 0 });
  }
  const t0 = Date.now();
  await Promise.all([...ledgers.map(writer), operator(), operator(), killer()]);
  const seconds = (Date.now() - t0) / 1000;

  // Settle: one clean restart, then the checks.
  await daemon.stop();
  daemon = await startDaemon(dataDir);
  let bad = 0;
  const verify = await run(HAVEN_BIN, ['repo', 'verify', '--repo', repo, '--json'], {
    env,
    maxBuffer: 64 << 20,
  }).then(
    (r) => ({ ok: true, out: r.stdout }),
    (e: { stdout?: string; stderr?: string }) => ({ ok: false, out: `${e.stdout ?? ''}${e.stderr ?? ''}` }),
  );
  const snaps = JSON.parse(await haven('repo', 'list', '--repo', repo, '--json')) as {
    id: string;
    source: { name: string };
  }[];
  if (!verify.ok) {
    bad++;
    console.log(`FAIL repo verify:\n${verify.out.slice(0, 4000)}`);
  }
  for (const l of ledgers) {
    const newest = snaps.filter((s) => s.source.name === l.name).at(-1);
    if (newest) {
      const file = join(scratch, `final-${l.name}.raw`);
      try {
        await haven('restore', newest.id, '--repo', repo, '--to', file);
        checkWhole(file, newest.id);
      } catch (e) {
        bad++;
        console.log(`FAIL restore of ${l.name}'s newest backup ${newest.id}: ${(e as Error).message}`);
      } finally {
        rmSync(file, { force: true });
      }
    }
    const dev = await connectNbd(`nbd+unix:///${l.name}?socket=${socket}`, { readOnly: true });
    const block = Buffer.alloc(BLOCK);
    let lost = 0;
    for (const [slot, acked] of l.acked) {
      await dev.read(block, slot * BLOCK);
      const seq = seqOf(block, slot * BLOCK);
      // Not lost: the acknowledged record, or a later one issued to the same slot.
      if (seq < acked || !l.issued.get(slot)!.includes(seq)) lost++;
    }
    await dev.close();
    if (lost) {
      bad++;
      console.log(`FAIL ${l.name}: ${lost} of ${l.acked.size} acknowledged blocks lost or torn`);
    }
  }
  await daemon.stop();

  console.log(`chaos: ${seconds.toFixed(0)} s, ${stats.kills} kill -9 of the daemon`);
  console.log(
    `chaos: ${stats.acked} flushed writes of ${stats.issued} issued (${ledgers.length} volumes); ${stats.reflushed} answered by a killed daemon and flushed by the next`,
  );
  for (const [k, v] of Object.entries(stats.ops).sort())
    console.log(`chaos: ${k}: ${v.ok} ok, ${v.failed} failed`);
  console.log(`chaos: ${snaps.length} snapshots in the repository, verify ${verify.ok ? 'clean' : 'FAILED'}`);
  // Refusals of one operation because another runs (conflict) are the system working; the rest
  // are listed, each kind of message once, for review.
  const unexpected = stats.failures.filter((f) => !f.includes('(daemon killed)'));
  const refused = unexpected.filter((f) => / conflict: /.test(f));
  console.log(`chaos: ${refused.length} operations refused as conflicting with one running (conflict)`);
  const ids = /[0-9a-f]{8}-[0-9a-f-]{27}|\d{8}T\d{6}Z-[0-9a-f]{6}|c\d{13}/g;
  const other = [
    ...new Set(unexpected.filter((f) => !/ conflict: /.test(f)).map((f) => f.replace(ids, '…'))),
  ];
  if (other.length) {
    console.log(`chaos: other failures while the daemon stayed up (review):`);
    for (const f of other.slice(0, 40)) console.log(`  ${f.slice(0, 400)}`);
  }
  console.log(
    bad ? `chaos: FAILED (${bad} checks)` : 'chaos: every snapshot verifies and every flushed write is there',
  );
  return bad ? 1 : 0;
}

const code = await main().catch(async (e: unknown) => {
  console.error(`chaos: ${(e as Error).stack ?? String(e)}`);
  await daemon?.stop();
  return 1;
});
if (!opt.keep) tmp.cleanup();
else console.log(`chaos: kept ${tmp.path}`);
await run('pkill', ['-9', '-f', `qemu-nbd .*${tmp.path}`]).catch(() => undefined);
process.exit(code);
