import { copyBlocks, type CopyOptions, type CopyResult } from '../block/index.js';
import { isPromise } from '../common/index.js';
import type { TlsCredentials } from './client/index.js';
import { openDestination, openSource, type Endpoint } from './endpoints.js';

/**
 * `haven nbd copy SRC DST`: copies a disk between local files and NBD exports with the copy
 * routine (block/copy.ts: sparse, parallel, verified). A file destination appears only complete
 * and verified (it is written under a temporary name).
 */
export interface NbdCopyOptions extends Omit<
  CopyOptions,
  'fresh' | 'readBack' | 'sourceName' | 'targetName'
> {
  tls?: TlsCredentials;
  /** NBD connections per endpoint (default 4; one when the server cannot do multi-conn). */
  connections?: number;
  /** Replace an existing file, or write over an existing block device. */
  force?: boolean;
}

export async function nbdCopy(
  source: string,
  destination: string,
  opts: NbdCopyOptions = {},
): Promise<CopyResult> {
  const ep = { tls: opts.tls, connections: opts.connections ?? 4 };
  const src = await openSource(source, ep);
  let dst: Endpoint | undefined;
  let ok = false;
  try {
    dst = await openDestination(destination, src.device.size, { ...ep, force: opts.force });
    const r = await copyEndpoints(src, dst, opts);
    ok = true;
    return r;
  } finally {
    const close = async (e?: Endpoint) => {
      const r = e?.device.close();
      if (isPromise(r)) await r;
    };
    await Promise.allSettled([close(src), close(dst)]);
    dst?.finish?.(ok);
  }
}

/** The copy routine between two open endpoints (which stay open). */
export function copyEndpoints(src: Endpoint, dst: Endpoint, opts: CopyOptions = {}): Promise<CopyResult> {
  return copyBlocks(src.device, dst.device, {
    ...opts,
    fresh: dst.fresh,
    readBack: dst.kind !== 'null',
    sourceName: src.name,
    targetName: dst.name,
  });
}
