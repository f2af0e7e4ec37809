import { DIGEST_BYTES } from './checksums.js';

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
  /** What a repair sent, and the checkpoint after it (absent when the group left journal mode meanwhile). */
  repair?: { bytes: number; checkpoint?: number };
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
