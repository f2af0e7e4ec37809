import { execFileSync } from 'node:child_process';
import { mkdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { HavenError, errorMessage } from '../../common/index.js';
import { QmpClient } from '../../compute/index.js';

export interface QmpPullOptions {
  /** The VM's QMP unix socket. */
  qmpSocket: string;
  /** Block node of the disk (a qcow2 node: persistent bitmaps need qcow2). */
  node: string;
  /** Where the fleecing image and the NBD socket go. */
  workDir: string;
  /** Bitmaps are named `${prefix}${n}`, n increasing (default "haven-"). */
  bitmapPrefix?: string;
}

export interface QmpPullSession {
  /** nbd+unix URI of the point-in-time export (read-only). */
  uri: string;
  size: number;
  /**
   * The previous epoch's bitmap, exported as qemu:dirty-bitmap:<name>, when it can be trusted:
   * the backup reads only what it marks. Undefined: read everything allocated.
   */
  incrementalBitmap?: string;
  /** The bitmap that records changes from this point on (the next backup's incrementalBitmap). */
  nextBitmap: string;
  /** Ends the session: success drops the old epoch; failure merges it into the new one. */
  finish(success: boolean): Promise<void>;
}

interface NodeInfo {
  'node-name'?: string;
  image?: { 'virtual-size'?: number };
  'dirty-bitmaps'?: { name: string; recording?: boolean; inconsistent?: boolean; persistent?: boolean }[];
}

/**
 * Pull-mode backup of a running QEMU VM that Haven does not manage, through QMP (the sequence
 * in docs and shared/notes/qemu-pull-backup.md): a fleecing image keeps the point in time while
 * the VM writes, QEMU's own NBD server exports it with the previous epoch's dirty bitmap, and a
 * persistent bitmap on the qcow2 disk carries the changes to the next backup.
 */
export async function startQmpPull(opts: QmpPullOptions): Promise<QmpPullSession> {
  const prefix = opts.bitmapPrefix ?? 'haven-';
  const qmp = await QmpClient.connect(opts.qmpSocket);
  const run = async <T = unknown>(cmd: string, args?: Record<string, unknown>): Promise<T> => {
    try {
      return await qmp.execute<T>(cmd, args);
    } catch (err) {
      throw new HavenError('IO', `QMP ${cmd} on ${opts.qmpSocket}: ${errorMessage(err)}`);
    }
  };
  const tag = Math.random().toString(36).slice(2, 8);
  const fleece = `haven-fleece-${tag}`;
  const job = `haven-backup-${tag}`;
  const exportId = `haven-export-${tag}`;
  mkdirSync(opts.workDir, { recursive: true });
  const fleeceFile = join(opts.workDir, `${fleece}.qcow2`);
  const socket = join(opts.workDir, `${tag}.nbd.sock`);
  const steps: (() => Promise<unknown>)[] = [];
  try {
    const nodes = await run<NodeInfo[]>('query-named-block-nodes', { flat: true });
    const node = nodes.find((n) => n['node-name'] === opts.node);
    if (!node) throw new HavenError('NOT_FOUND', `the VM has no block node named ${opts.node}`);
    const size = node.image?.['virtual-size'];
    if (!size) throw new HavenError('IO', `block node ${opts.node} reports no size`);
    const ours = (node['dirty-bitmaps'] ?? [])
      .filter((b) => b.name.startsWith(prefix) && /^\d+$/.test(b.name.slice(prefix.length)))
      .sort((a, b) => Number(a.name.slice(prefix.length)) - Number(b.name.slice(prefix.length)));
    // Bitmaps left inconsistent (QEMU was killed) or by a backup that never finished are dropped.
    let old = ours.at(-1);
    for (const b of ours)
      if (b !== old || b.inconsistent || b.recording === false)
        await run('block-dirty-bitmap-remove', { node: opts.node, name: b.name });
    if (old && (old.inconsistent || old.recording === false)) old = undefined;
    const next = `${prefix}${old ? Number(old.name.slice(prefix.length)) + 1 : 0}`;

    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', fleeceFile, String(size)]);
    steps.push(async () => rmSync(fleeceFile, { force: true }));
    await run('blockdev-add', {
      driver: 'qcow2',
      'node-name': fleece,
      file: { driver: 'file', filename: fleeceFile },
      backing: opts.node,
    });
    steps.push(() => run('blockdev-del', { 'node-name': fleece }));
    // One transaction: the point in time and the switch of epochs are atomic.
    await run('transaction', {
      actions: [
        { type: 'blockdev-backup', data: { 'job-id': job, device: opts.node, target: fleece, sync: 'none' } },
        ...(old ? [{ type: 'block-dirty-bitmap-disable', data: { node: opts.node, name: old.name } }] : []),
        { type: 'block-dirty-bitmap-add', data: { node: opts.node, name: next, persistent: true } },
      ],
    });
    steps.push(async () => {
      const cancelled = qmp.waitForEvent('BLOCK_JOB_CANCELLED', (e) => e.data.device === job, 30_000);
      await run('block-job-cancel', { device: job });
      await cancelled;
    });
    await run('nbd-server-start', { addr: { type: 'unix', data: { path: socket } } });
    steps.push(() => run('nbd-server-stop'));
    await run('block-export-add', {
      type: 'nbd',
      id: exportId,
      'node-name': fleece,
      name: fleece,
      writable: false,
      ...(old ? { bitmaps: [old.name] } : {}),
    });
    steps.push(async () => {
      const deleted = qmp.waitForEvent('BLOCK_EXPORT_DELETED', (e) => e.data.id === exportId, 30_000);
      await run('block-export-del', { id: exportId });
      await deleted;
    });

    let finished = false;
    return {
      uri: `nbd+unix:///${fleece}?socket=${socket}`,
      size,
      ...(old ? { incrementalBitmap: old.name } : {}),
      nextBitmap: next,
      async finish(success: boolean) {
        if (finished) return;
        finished = true;
        try {
          await teardown(steps);
          if (old) {
            if (!success)
              // Nothing is lost: the old epoch's changes join the new epoch.
              await run('block-dirty-bitmap-merge', { node: opts.node, target: next, bitmaps: [old.name] });
            await run('block-dirty-bitmap-remove', { node: opts.node, name: old.name });
          } else if (!success)
            // No snapshot holds this point: the next backup must read everything.
            await run('block-dirty-bitmap-remove', { node: opts.node, name: next });
        } finally {
          qmp.close();
        }
      },
    };
  } catch (err) {
    await teardown(steps).catch(() => undefined);
    qmp.close();
    throw err;
  }
}

/** Undoes the steps taken, last first; the first error is thrown once all have been tried. */
async function teardown(steps: (() => Promise<unknown>)[]): Promise<void> {
  let first: unknown;
  while (steps.length) {
    const step = steps.pop()!;
    try {
      await step();
    } catch (err) {
      first ??= err;
    }
  }
  if (first) throw first;
}
