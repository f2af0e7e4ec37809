import type { Command } from 'commander';
import type { CopyProgress } from '../../orchestration/index.js';
import { orchestration } from '../lazy.js';
import { invalidArgument } from '../../common/index.js';
import { printResult } from '../output.js';
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
      .option('--progress', 'show progress on stderr')
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
      let last = 0;
      const onProgress = o.progress
        ? (p: CopyProgress) => {
            const now = Date.now();
            if (now - last < 250 && p.done < p.total) return;
            last = now;
            const pct = p.total ? ((100 * p.done) / p.total).toFixed(1) : '100.0';
            process.stderr.write(`\r${p.phase} ${pct}% (${human(p.done)} of ${human(p.total)})   `);
            if (p.done >= p.total) process.stderr.write('\n');
          }
        : undefined;
      const r = await nbdCopy(src, dst, {
        tls: await readTls(o),
        verify: o.verify,
        ...(o.force ? { force: true } : {}),
        connections: int('connections', o.connections),
        requests: int('requests', o.requests),
        chunkSize: int('chunk-size', o.chunkSize),
        onProgress,
      });
      printResult(
        !!o.json,
        r,
        () =>
          `copied ${human(r.size)} from ${r.source} to ${r.destination} in ${r.seconds.toFixed(2)} s ` +
          `(${human(r.rate)}/s): ${human(r.dataBytes)} data, ${human(r.zeroBytes)} zero` +
          (r.verified ? ', verified' : ', not verified'),
      );
    },
  );
}
