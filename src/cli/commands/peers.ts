import { readFileSync } from 'node:fs';
import type { Command } from 'commander';
import { HavenError, invalidArgument } from '../../common/index.js';
import type { Peer, PeerHealth } from '../../orchestration/index.js';
import { apiOptions, connect, type ApiOpts } from '../api.js';
import { table } from '../args.js';
import { printResult } from '../output.js';

interface PairOpts {
  peerApi: string;
  peerToken?: string;
  peerTokenFile?: string;
  peerFingerprint?: string;
}

/** `haven site pair|pair-token|peers|unpair|ping`: paired sites. */
export function registerPeerCommands(site: Command): void {
  apiOptions(site.command('pair'))
    .description(
      "pair this site with another, both ways: each pins the other's certificate, and only paired sites may open peer links",
    )
    .requiredOption('--peer-api <url>', "the other site's API, e.g. http://HOST:8710")
    .option(
      '--peer-token <token>',
      'its API token or a one-time token from "haven site pair-token" there (better: --peer-token-file)',
    )
    .option('--peer-token-file <file>', 'a file holding that token (keeps it out of the shell history)')
    .option(
      '--peer-fingerprint <sha256>',
      'pair only if its certificate has this fingerprint ("haven site show" there prints it)',
    )
    .option('--json', 'print JSON')
    .action(async (o: ApiOpts & PairOpts) => {
      if ((o.peerToken === undefined) === (o.peerTokenFile === undefined))
        throw invalidArgument(
          "give the other site's token with --peer-token or --peer-token-file (one of them)",
        );
      const token = o.peerTokenFile ? readToken(o.peerTokenFile) : o.peerToken!;
      const p = await connect(o).post<Peer>('/peers', {
        api: o.peerApi,
        token,
        ...(o.peerFingerprint ? { fingerprint: o.peerFingerprint } : {}),
      });
      printResult(
        !!o.json,
        p,
        () => `paired with site ${p.name}: certificate ${p.fingerprint}, link ${p.link ?? 'none'}`,
      );
    });

  apiOptions(site.command('pair-token'))
    .description(
      'make a one-time token another site may pair with ("haven site pair --peer-token-file" there)',
    )
    .option('--ttl <minutes>', 'how long it is valid', '15')
    .option('--json', 'print JSON')
    .action(async (o: ApiOpts & { ttl: string }) => {
      const minutes = Number(o.ttl);
      if (!(minutes > 0 && minutes <= 1440))
        throw invalidArgument(`--ttl must be 1 to 1440 minutes, not ${o.ttl}`);
      const t = await connect(o).post<{ token: string; expiresAt: string }>('/peers/tokens', {
        ttlSeconds: Math.max(1, Math.round(minutes * 60)),
      });
      printResult(!!o.json, t, () => `${t.token}\n(one use, valid until ${t.expiresAt})`);
    });

  apiOptions(site.command('peers'))
    .description(
      'the sites this one is paired with and their health: reachable, unreachable (heartbeats missed) or taken-over',
    )
    .option('--json', 'print JSON')
    .action(async (o: ApiOpts) => {
      const peers = await connect(o).get<(Peer & { health?: PeerHealth })[]>('/peers');
      printResult(!!o.json, peers, () =>
        table([
          ['NAME', 'STATE', 'SINCE', 'LAST SEEN', 'LINK', 'API', 'FINGERPRINT'],
          ...peers.map((p) => [
            p.name,
            p.health
              ? p.health.state === 'taken-over'
                ? `taken-over (${p.health.takenOver?.join(', ') ?? ''}; link ${p.health.link})`
                : p.health.state + (p.health.missed ? ` (${p.health.missed} missed)` : '')
              : '-',
            p.health?.since ?? '-',
            p.health?.lastSeenAt ?? '-',
            p.link ?? '-',
            p.api ?? '-',
            p.fingerprint,
          ]),
        ]),
      );
    });

  apiOptions(site.command('unpair'))
    .description('forget a paired site here (run it on the other site too) and cut its links')
    .argument('<name>')
    .action(async (name: string, o: ApiOpts) => {
      await connect(o).delete(`/peers/${encodeURIComponent(name)}`);
      process.stdout.write(`unpaired site ${name} here\n`);
    });

  apiOptions(site.command('ping'))
    .description('a call to a paired site over the peer link (mutual TLS)')
    .argument('<name>')
    .option('--json', 'print JSON')
    .action(async (name: string, o: ApiOpts) => {
      const r = await connect(o).post<{ site: string; ms: number }>(
        `/peers/${encodeURIComponent(name)}/ping`,
      );
      printResult(!!o.json, r, () => `site ${r.site} answered in ${r.ms} ms`);
    });
}

function readToken(file: string): string {
  let t: string;
  try {
    t = readFileSync(file, 'utf8').trim();
  } catch (err) {
    throw new HavenError('NOT_FOUND', `cannot read the peer token file ${file}: ${(err as Error).message}`);
  }
  if (!t) throw invalidArgument(`the peer token file ${file} is empty`);
  return t;
}
