import type { Command } from 'commander';
import type { CopyProgress } from '../../orchestration/index.js';
import { orchestration } from '../lazy.js';
import { invalidArgument } from '../../common/index.js';
import { runLocal } from '../jobs.js';
import { readTls, tlsOptions } from './nbd-tls.js';

/** `haven nbd copy <src> <dst>`: sparse-aware, parallel, verified copy between files and NBD exports. */
export function registerNbdCopy(nbd: Command): void {
  tlsOptions(
    nbd
      .command('copy')
      .description('copy a disk between files and NBD exports (sparse-aware, parallel, verified)')
      .argument('<src>', 'a file or an NBD URI')
      .argument('<dst>', "a new file (appears only complete and verified), an NBD URI, or 'null:' to discard")
      .option('--force', 'replace an existing file (or write over a block device)')
      .option('--json', 'print JSON')
      .option('--progress', 'show progress on stderr (a bar on a terminal, else a line every 10%)')
      .option('--no-verify', 'skip reading the destination back to compare hashes')
      .option('--connections <n>', 'NBD connections per endpoint', '4')
      .option('--requests <n>', 'chunks in flight', '16')
      .option('--chunk-size <bytes>', 'bytes per chunk', String(4 * 1024 * 1024)),
  ).action(
    async (
      src: string,
      dst: string,
      o: {
        json?: boolean;
        progress?: boolean;
        verify: boolean;
        force?: boolean;
        connections: string;
        requests: string;
        chunkSize: string;
        tlsCa?: string;
        tlsCert?: string;
        tlsKey?: string;
      },
    ) => {
      const int = (name: string, v: string) => {
        const n = Number(v);
        if (!Number.isInteger(n) || n < 1)
          throw invalidArgument(`--${name} must be a positive integer, not '${v}'`);
        return n;
      };
      const { human, nbdCopy } = await orchestration();
      const tls = await readTls(o);
      await runLocal(
        o,
        { kind: 'nbd.copy', target: dst, progress: !!o.progress },
        (onProgress) =>
          nbdCopy(src, dst, {
            tls,
            verify: o.verify,
            ...(o.force ? { force: true } : {}),
            connections: int('connections', o.connections),
            requests: int('requests', o.requests),
            chunkSize: int('chunk-size', o.chunkSize),
            onProgress: (p: CopyProgress) => onProgress(p.done, p.total, p.phase),
          }),
        (r) =>
          `copied ${human(r.size)} from ${r.source} to ${r.destination} in ${r.seconds.toFixed(2)} s ` +
          `(${human(r.rate)}/s): ${human(r.dataBytes)} data, ${human(r.zeroBytes)} zero` +
          (r.verified ? ', verified' : ', not verified'),
      );
    },
  );
}
