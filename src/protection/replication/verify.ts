import { HavenError } from '../../common/index.js';
import type { StorageService, TapDevice } from '../../storage/index.js';
import {
  DIGEST_BYTES,
  checkExtentBytes,
  checksumDevice,
  decodeChecksums,
  type ChecksumList,
  type ChecksumRequest,
} from './checksums.js';

/** A range where the replica differs from its source (whole extents; neighbours merged). */
export interface ExtentDifference {
  /** The volume's number in the group. */
  volume: number;
  /** Its name at the source, when the gateway knows it. */
  name?: string;
  offset: number;
  length: number;
}

export interface VerifyOptions {
  /** Resend what differs through the journal, then take a checkpoint `repair`. */
  repair?: boolean;
  /** After a repair, verify again (at a checkpoint after it) and report that as `recheck`. */
  recheck?: boolean;
  /** Extent size of the checksums (default 1 MiB; a multiple of 4 KiB). */
  extentBytes?: number;
  /** How long to wait for the target to apply the verify checkpoint (default 10 min). */
  timeoutMs?: number;
}

export interface VerifyReport {
  group: string;
  /** The checkpoint both sides were compared at (named `verify`). */
  checkpoint: number;
  extentBytes: number;
  /** Bytes compared: the sum of the volumes' sizes. */
  comparedBytes: number;
  differences: ExtentDifference[];
  elapsedMs: number;
  /**
   * What a repair sent, and the checkpoint after it; `skipped` says why nothing was sent (the
   * group left journal mode while it was compared: verify with repair again once it replicates).
   */
  repair?: { bytes: number; checkpoint?: number; skipped?: string };
  recheck?: VerifyReport;
}

/**
 * The extents whose sums differ, per volume, adjacent ones merged into one range. `ours` and
 * `theirs` are concatenated 32-byte sums of volumes of `sizes` bytes in extents of `extentBytes`.
 */
export function diffSums(
  ours: readonly Buffer[],
  theirs: readonly Buffer[],
  sizes: readonly number[],
  extentBytes: number,
  names?: readonly string[],
): ExtentDifference[] {
  const out: ExtentDifference[] = [];
  sizes.forEach((size, v) => {
    const a = ours[v]!;
    const b = theirs[v]!;
    let open: ExtentDifference | undefined;
    for (let i = 0, at = 0; at < size; i++, at += extentBytes) {
      const same =
        a.compare(b, i * DIGEST_BYTES, (i + 1) * DIGEST_BYTES, i * DIGEST_BYTES, (i + 1) * DIGEST_BYTES) ===
        0;
      if (same) {
        open = undefined;
        continue;
      }
      const length = Math.min(extentBytes, size - at);
      if (open && open.offset + open.length === at) open.length += length;
      else {
        open = { volume: v, ...(names?.[v] ? { name: names[v] } : {}), offset: at, length };
        out.push(open);
      }
    }
  });
  return out;
}

/** What verify needs of the source gateway. */
export interface VerifyHost {
  group: string;
  storage: StorageService;
  /** The source volumes, in the group's order, and their taps. */
  volumes: readonly string[];
  taps: readonly TapDevice[];
  remoteChecksums: (req: ChecksumRequest) => Promise<ChecksumList>;
  /** Throws (CONFLICT) unless the group is replicating; `what`: "verified", "repaired". */
  refuse(what: string): void;
  /** Appends a checkpoint; undefined when the group has no consistent point. */
  checkpoint(name: string): number | undefined;
  /** Why there is no consistent point. */
  why(): string;
  /** Resolves once the target has applied checkpoint `seq` or a later one. */
  waitApplied(seq: number, timeoutMs: number): Promise<void>;
  /** Appends the ranges' current content to the journal (a scan); resolves with the bytes. */
  resend(ranges: readonly ExtentDifference[]): Promise<number>;
}

/**
 * Verify (decision 0014): a checkpoint `verify`, with a snapshot `replication-verify-SEQ` of every source
 * volume taken in the same synchronous stretch; the source sums its snapshots while the target
 * applies the checkpoint, then the target sums its `cp-SEQ` snapshots, and the sums are compared.
 * With `repair`, the differing extents' current content goes through the journal like a resync,
 * so the next checkpoint has it right, and a checkpoint `repair` follows.
 */
export async function verifyGroup(
  host: VerifyHost,
  opts: VerifyOptions & { extentBytes: number },
): Promise<VerifyReport> {
  const { storage, volumes, group } = host;
  const { extentBytes } = opts;
  checkExtentBytes(extentBytes);
  const started = performance.now();
  const sizes = host.taps.map((t) => t.size);
  const seq = await stableCheckpoint(host);
  const snapshot = `replication-verify-${seq}`;
  const abort = new AbortController();
  let differences: ExtentDifference[];
  try {
    const local = Promise.all(
      volumes.map(async (v) => {
        const dev = storage.openDevice(`${v}@${snapshot}`, { readOnly: true });
        try {
          return await checksumDevice(dev, extentBytes, { signal: abort.signal });
        } finally {
          await dev.close();
        }
      }),
    );
    const remote = host
      .waitApplied(seq, opts.timeoutMs ?? 600_000)
      .then(async () =>
        decodeChecksums(await host.remoteChecksums({ checkpoint: seq, extentBytes }), sizes, extentBytes),
      );
    const [ours, theirs] = await Promise.all([local, remote]);
    differences = diffSums(ours, theirs, sizes, extentBytes, volumes);
  } finally {
    abort.abort();
    for (const v of volumes) storage.deleteSnapshot(v, snapshot);
  }
  const report: VerifyReport = {
    group,
    checkpoint: seq,
    extentBytes,
    comparedBytes: sizes.reduce((a, b) => a + b, 0),
    differences,
    elapsedMs: Math.round(performance.now() - started),
  };
  if (!opts.repair || !differences.length) return report;
  // Left journal mode while comparing (a full journal, say): the differences stand, unrepaired.
  try {
    host.refuse('repaired');
  } catch (err) {
    report.repair = { bytes: 0, skipped: (err as Error).message };
    return report;
  }
  const bytes = await host.resend(differences);
  const checkpoint = host.checkpoint('repair');
  report.repair = { bytes, ...(checkpoint !== undefined ? { checkpoint } : {}) };
  if (opts.recheck && checkpoint !== undefined)
    report.recheck = await verifyGroup(host, {
      extentBytes,
      ...(opts.timeoutMs !== undefined ? { timeoutMs: opts.timeoutMs } : {}),
    });
  return report;
}

/**
 * A checkpoint `verify` and a snapshot `replication-verify-SEQ` of every source volume at it. The pool
 * devices complete synchronously, so between two changes nothing is in flight, and the
 * checkpoint record and the snapshots, taken in one synchronous stretch, see the same image. A
 * change in flight (an asynchronous device below a tap) could be in a snapshot and after the
 * checkpoint at once: wait until none is.
 */
async function stableCheckpoint(host: VerifyHost): Promise<number> {
  const { storage, volumes, taps, group } = host;
  for (let busy = taps.filter((t) => t.busy); busy.length; busy = taps.filter((t) => t.busy))
    await Promise.all(busy.map((t) => t.settled()));
  // From here to the return nothing awaits.
  const seq = host.checkpoint('verify');
  if (seq === undefined)
    throw new HavenError(
      'CONFLICT',
      `replication group ${group} has no consistent point now (${host.why()}): verify once it is replicating`,
    );
  const taken: string[] = [];
  try {
    for (const v of volumes) {
      storage.snapshot(v, `replication-verify-${seq}`);
      taken.push(v);
    }
  } catch (err) {
    for (const v of taken) storage.deleteSnapshot(v, `replication-verify-${seq}`);
    throw new HavenError(
      'CONFLICT',
      `replication group ${group}: verify could not snapshot its volumes: ${(err as Error).message}`,
      { cause: err },
    );
  }
  return seq;
}
