import type { Command } from 'commander';
import { orchestration } from '../lazy.js';
import { printResult } from '../output.js';
import { readTls, tlsOptions } from './nbd-tls.js';

/** `haven nbd info <uri>`: size, flags, block sizes, meta contexts, exports, map. */
export function registerNbdInfo(nbd: Command): void {
  tlsOptions(
    nbd
      .command('info')
      .description('show what an NBD server says about an export')
      .argument('<uri>', 'nbd://host[:port]/export, nbds://…, nbd+unix:///export?socket=PATH')
      .option('--json', 'print JSON')
      .option('--list', 'also list all exports of the server')
      .option('--map [context]', 'map base:allocation (or the named context, e.g. qemu:dirty-bitmap:b0)'),
  ).action(
    async (
      uri: string,
      o: {
        json?: boolean;
        list?: boolean;
        map?: boolean | string;
        tlsCa?: string;
        tlsCert?: string;
        tlsKey?: string;
      },
    ) => {
      const { formatNbdInfo, nbdInfo } = await orchestration();
      const r = await nbdInfo(uri, { tls: await readTls(o), list: o.list, map: o.map });
      printResult(!!o.json, r, () => formatNbdInfo(r));
    },
  );
}
