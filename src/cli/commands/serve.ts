import { join } from 'node:path';
import type { Command } from 'commander';
import { defaultDataDir, errorMessage, invalidArgument, logger } from '../../common/index.js';
import { apiServer, orchestration } from '../lazy.js';
import { dataOption, parseDuration, parseSize } from '../args.js';

export const DEFAULT_API_PORT = 8710;
const log = logger('daemon');

/** `haven serve`: the site daemon in the foreground. */
export function registerServe(program: Command): void {
  dataOption(program.command('serve'))
    .description(
      'run the site daemon: storage (pools, volumes, NBD exports), compute (VMs), jobs, events and the REST API',
    )
    .option(
      '--listen <host:port>',
      `address of the REST API and of Prometheus metrics at /metrics, both with the API token (default: $HAVEN_LISTEN, else 127.0.0.1:${DEFAULT_API_PORT}; ":0" picks a free port)`,
    )
    .option('--site <name>', "the site's name, fixed at the first start (default: the host name)")
    .option(
      '--nbd-listen <host:port>',
      'TCP address of the NBD exports, TLS only: clients authenticate with the site\'s PSK (DATA/nbd-tls/keys.psk) or a client certificate; or "none"',
      '127.0.0.1:10809',
    )
    .option(
      '--peer-listen <host:port>',
      'TCP address where paired sites connect (mutual TLS with the site certificates pinned at pairing; port 0 picks a free one); or "none"',
      '127.0.0.1:10810',
    )
    .option(
      '--peer-advertise <host:port>',
      'the address paired sites are told to dial, when it is not --peer-listen (a proxy or NAT in front of it)',
    )
    .option('--tls-cert <file>', 'certificate (PEM) for an https API')
    .option('--tls-key <file>', 'private key (PEM) for an https API')
    .option('--nbd-tls-cert <file>', 'certificate (PEM) of the NBD TCP listener, for X.509 clients')
    .option('--nbd-tls-key <file>', 'private key (PEM) of the NBD TCP listener')
    .option('--nbd-tls-ca <file>', 'CA (PEM): NBD clients may also authenticate with a certificate it signed')
    .option(
      '--nbd-listen-plain <host:port>',
      'ALSO serve NBD on plain TCP WITHOUT AUTHENTICATION: anyone who reaches it reads and writes every volume (warned at start)',
    )
    .option(
      '--nbd-handshake-timeout <seconds>',
      'an NBD client that has not finished its handshake by then is dropped',
      '10',
    )
    .option(
      '--api-request-timeout <seconds>',
      'an API request whose headers and body have not all arrived by then is answered 408 and closed',
      '30',
    )
    .option('--max-transfers-per-host <n>', 'concurrent backup transfers per host; more wait for a slot', '4')
    .option(
      '--transports <list>',
      'transports backups may use, comma-separated (default: all the site offers)',
    )
    .option(
      '--recovery-max-iops <n>',
      'reads per second each disk of a VM running from a backup may make of it (default: unlimited)',
    )
    .option(
      '--recovery-max-bandwidth <size>',
      'bytes per second each such disk may read from its backup, e.g. 200M (default: unlimited)',
    )
    .option('--recovery-warn-after <hours>', 'warn about a VM that runs from a backup longer than this', '24')
    .option(
      '--alert-check-every <duration>',
      'how often the alert rules look at pools, repositories, replication and recoveries',
      '60s',
    )
    .option(
      '--alert-full-percent <n>',
      'a pool or repository file system this full (percent) fires an alert',
      '90',
    )
    .option(
      '--peer-heartbeat <duration>',
      'how often each paired site is sent a heartbeat over the peer link',
      '1s',
    )
    .option('--peer-missed <n>', 'heartbeats missed in a row that make a paired site unreachable', '3')
    .action(
      async (o: {
        data?: string;
        listen?: string;
        site?: string;
        nbdListen: string;
        peerListen: string;
        peerAdvertise?: string;
        tlsCert?: string;
        tlsKey?: string;
        nbdTlsCert?: string;
        nbdTlsKey?: string;
        nbdTlsCa?: string;
        nbdListenPlain?: string;
        nbdHandshakeTimeout: string;
        apiRequestTimeout: string;
        maxTransfersPerHost: string;
        transports?: string;
        recoveryMaxIops?: string;
        recoveryMaxBandwidth?: string;
        recoveryWarnAfter: string;
        alertCheckEvery: string;
        alertFullPercent: string;
        peerHeartbeat: string;
        peerMissed: string;
      }) => {
        if (!!o.tlsCert !== !!o.tlsKey) throw invalidArgument('give both --tls-cert and --tls-key');
        if (!!o.nbdTlsCert !== !!o.nbdTlsKey)
          throw invalidArgument('give both --nbd-tls-cert and --nbd-tls-key');
        if (o.nbdTlsCa && !o.nbdTlsCert)
          throw invalidArgument(
            '--nbd-tls-ca needs --nbd-tls-cert and --nbd-tls-key (the listener proves itself too)',
          );
        const seconds = (v: string, flag: string) => {
          const n = Number(v);
          if (!(n > 0 && n <= 3600))
            throw invalidArgument(`${flag} must be seconds from 0 to 3600, not ${v}`);
          return n;
        };
        const handshakeSeconds = seconds(o.nbdHandshakeTimeout, '--nbd-handshake-timeout');
        const requestSeconds = seconds(o.apiRequestTimeout, '--api-request-timeout');
        const maxTransfers = Number(o.maxTransfersPerHost);
        if (!Number.isInteger(maxTransfers) || maxTransfers < 1)
          throw invalidArgument(
            `--max-transfers-per-host must be a whole number from 1, not ${o.maxTransfersPerHost}`,
          );
        const transports = o.transports?.split(',').map((t) => t.trim());
        const iops = o.recoveryMaxIops === undefined ? undefined : Number(o.recoveryMaxIops);
        if (iops !== undefined && !(Number.isInteger(iops) && iops > 0))
          throw invalidArgument(
            `--recovery-max-iops must be a whole number from 1, not ${o.recoveryMaxIops}`,
          );
        const bandwidth =
          o.recoveryMaxBandwidth === undefined
            ? undefined
            : parseSize(o.recoveryMaxBandwidth, '--recovery-max-bandwidth');
        if (bandwidth === 0) throw invalidArgument('--recovery-max-bandwidth must be more than 0');
        const warnHours = Number(o.recoveryWarnAfter);
        if (!(warnHours > 0))
          throw invalidArgument(
            `--recovery-warn-after must be a positive number of hours, not ${o.recoveryWarnAfter}`,
          );
        const listen = (await orchestration()).parseHostPort(
          o.listen ?? process.env.HAVEN_LISTEN ?? `127.0.0.1:${DEFAULT_API_PORT}`,
        );
        const { startSiteDaemon } = await apiServer();
        const dataDir = o.data ?? defaultDataDir();
        // The handlers go in before the start: a signal that comes while the daemon starts (or
        // just after it wrote api.json) must stop it cleanly too, once it can be stopped.
        // SIGHUP too (the terminal closed, `make start`'s shell went away): its default action
        // would end the process without removing api.json, and the CLI would find a dead site.
        // A second signal while stopping takes the default action: the operator insists.
        const running: { daemon?: Awaited<ReturnType<typeof startSiteDaemon>>; pending?: NodeJS.Signals } =
          {};
        const stop = (signal: NodeJS.Signals) => {
          if (!running.daemon) {
            running.pending = signal;
            return;
          }
          log.info({ signal }, 'stopping');
          void running.daemon.stop().then(
            () => process.exit(0),
            (err: unknown) => {
              log.error({ err: errorMessage(err) }, 'the site daemon did not stop cleanly');
              process.exit(1);
            },
          );
        };
        for (const signal of ['SIGTERM', 'SIGINT', 'SIGHUP'] as const) process.once(signal, stop);
        const d = await startSiteDaemon(
          {
            dataDir,
            nbdListen: o.nbdListen,
            peerListen: o.peerListen,
            ...(o.peerAdvertise ? { peerAdvertise: o.peerAdvertise } : {}),
            maxTransfersPerHost: maxTransfers,
            ...(o.site ? { name: o.site } : {}),
            ...(transports ? { transports } : {}),
            ...(iops !== undefined || bandwidth !== undefined
              ? {
                  recoveryLimits: {
                    ...(iops !== undefined ? { iops } : {}),
                    ...(bandwidth !== undefined ? { bytesPerSecond: bandwidth } : {}),
                  },
                }
              : {}),
            recoveryWarnAfterSeconds: warnHours * 3600,
            alerts: {
              checkIntervalSeconds: parseDuration(o.alertCheckEvery, '--alert-check-every'),
              fullPercent: Number(o.alertFullPercent),
            },
            peerHeartbeat: {
              intervalMs: parseDuration(o.peerHeartbeat, '--peer-heartbeat') * 1000,
              missed: Number(o.peerMissed),
            },
            nbdHandshakeTimeoutMs: handshakeSeconds * 1000,
            ...(o.nbdListenPlain ? { nbdListenPlain: o.nbdListenPlain } : {}),
            ...(o.nbdTlsCert
              ? {
                  nbdTls: {
                    cert: o.nbdTlsCert,
                    key: o.nbdTlsKey!,
                    ...(o.nbdTlsCa ? { ca: o.nbdTlsCa } : {}),
                  },
                }
              : {}),
          },
          {
            host: listen.host,
            port: listen.port,
            requestTimeoutMs: requestSeconds * 1000,
            ...(o.tlsCert ? { tls: { cert: o.tlsCert, key: o.tlsKey! } } : {}),
          },
        );
        const info = d.site.info();
        process.stdout.write(
          `haven: site ${info.name} serving its API on ${d.url} (token in ${join(dataDir, 'api-token')}); ` +
            `NBD on ${info.nbd.socket}` +
            (info.nbd.tcp
              ? ` and ${info.nbd.tcp} (TLS; PSK ${info.nbd.pskIdentity} in ${info.nbd.pskFile})`
              : '') +
            (info.nbd.plain ? ` and ${info.nbd.plain} (plain TCP, NO AUTHENTICATION)` : '') +
            (info.peer.link ? `; peer link on ${info.peer.link}` : '') +
            '\n',
        );
        running.daemon = d;
        if (running.pending) stop(running.pending);
      },
    );
}
