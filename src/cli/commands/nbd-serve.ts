import type { Command } from 'commander';
import { invalidArgument } from '../../common/index.js';
import { serveImageTool } from '../lazy.js';

/** `haven nbd serve <image>`: serve an image file in the foreground until SIGTERM/SIGINT. */
export function registerNbdServe(nbd: Command): void {
  nbd
    .command('serve')
    .description('serve a raw image file over NBD in the foreground')
    .argument('<image>', 'raw image file')
    .option('--listen <host:port>', 'TCP address to listen on (default 127.0.0.1:10809)')
    .option('--socket <path>', 'unix socket to listen on instead of TCP')
    .option('--name <name>', 'export name (also the default export: nbd://host:port reaches it)', 'disk')
    .option('--read-only', 'refuse writes')
    .option('--max-connections <n>', 'clients allowed at once')
    .option('--tls-cert <file>', 'server certificate (PEM); makes the server TLS-only')
    .option('--tls-key <file>', 'server private key (PEM)')
    .option(
      '--tls-ca <file>',
      'CA (PEM) that client certificates must be signed by; requires client certificates',
    )
    .action(
      async (
        image: string,
        o: {
          listen?: string;
          socket?: string;
          name: string;
          readOnly?: boolean;
          maxConnections?: string;
          tlsCert?: string;
          tlsKey?: string;
          tlsCa?: string;
        },
      ) => {
        if (!!o.tlsCert !== !!o.tlsKey) throw invalidArgument('give both --tls-cert and --tls-key');
        if (o.tlsCa && !o.tlsCert) throw invalidArgument('--tls-ca needs --tls-cert and --tls-key');
        const max = o.maxConnections === undefined ? undefined : Number(o.maxConnections);
        if (max !== undefined && (!Number.isInteger(max) || max < 1))
          throw invalidArgument(
            `--max-connections must be a positive whole number, not "${o.maxConnections}"`,
          );
        const { serveImage } = await serveImageTool();
        const serving = await serveImage({
          image,
          name: o.name,
          readOnly: !!o.readOnly,
          ...(o.listen ? { listen: o.listen } : {}),
          ...(o.socket ? { socket: o.socket } : {}),
          ...(max ? { maxConnections: max } : {}),
          ...(o.tlsCert
            ? { tls: { cert: o.tlsCert, key: o.tlsKey!, ...(o.tlsCa ? { ca: o.tlsCa } : {}) } }
            : {}),
        });
        process.stdout.write(`haven: serving ${image} as "${serving.name}" on ${serving.uri}\n`);
        stopOnSignal(serving);
      },
    );
}

/** A foreground server: SIGTERM or SIGINT stops it (in-flight requests finish), then exits. */
export function stopOnSignal(serving: { stop(): Promise<void> }): void {
  const stop = () => {
    process.off('SIGTERM', stop);
    process.off('SIGINT', stop);
    void serving.stop().then(() => process.exit(0));
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}
