import { readFileSync } from 'node:fs';
import type { Command } from 'commander';
import { invalidArgument, fromSystemError } from '../../common/index.js';
import type { TlsCredentials } from '../../nbd/index.js';

/** The --tls-ca/--tls-cert/--tls-key options shared by the NBD client commands. */
export function tlsOptions(cmd: Command): Command {
  return cmd
    .option('--tls-ca <file>', 'CA certificate (PEM) to verify the server; enables TLS')
    .option('--tls-cert <file>', 'client certificate (PEM)')
    .option('--tls-key <file>', 'client private key (PEM)');
}

export function readTls(o: {
  tlsCa?: string;
  tlsCert?: string;
  tlsKey?: string;
}): TlsCredentials | undefined {
  if (!o.tlsCa) {
    if (o.tlsCert || o.tlsKey) throw invalidArgument('--tls-cert and --tls-key need --tls-ca');
    return undefined;
  }
  if (!!o.tlsCert !== !!o.tlsKey) throw invalidArgument('give both --tls-cert and --tls-key, or neither');
  const read = (f: string) => {
    try {
      return readFileSync(f);
    } catch (e) {
      throw fromSystemError(e, `cannot read ${f}`);
    }
  };
  return {
    ca: read(o.tlsCa),
    cert: o.tlsCert ? read(o.tlsCert) : undefined,
    key: o.tlsKey ? read(o.tlsKey) : undefined,
  };
}
