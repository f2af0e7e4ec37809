import { readFileSync } from 'node:fs';
import type { Command } from 'commander';
import { invalidArgument, fromSystemError } from '../../common/index.js';
import type { TlsCredentials } from '../../orchestration/index.js';
import { orchestration } from '../lazy.js';

/** The --tls-ca/--tls-cert/--tls-key/--tls-psk-file options shared by the NBD client commands. */
export function tlsOptions(cmd: Command): Command {
  return cmd
    .option('--tls-ca <file>', 'CA certificate (PEM) to verify the server; enables TLS')
    .option('--tls-cert <file>', 'client certificate (PEM)')
    .option('--tls-key <file>', 'client private key (PEM)')
    .option('--tls-psk-file <file>', 'TLS with a pre-shared key instead: a file of identity:hex-key lines')
    .option('--tls-psk-identity <name>', 'which identity of the PSK file (default: its first)');
}

export async function readTls(o: {
  tlsCa?: string;
  tlsCert?: string;
  tlsKey?: string;
  tlsPskFile?: string;
  tlsPskIdentity?: string;
}): Promise<TlsCredentials | undefined> {
  if (o.tlsPskFile) {
    if (o.tlsCa || o.tlsCert || o.tlsKey)
      throw invalidArgument('give either --tls-psk-file or certificates (--tls-ca …), not both');
    const keys = (await orchestration()).readPskFile(o.tlsPskFile);
    const identity = o.tlsPskIdentity ?? keys.keys().next().value!;
    const key = keys.get(identity);
    if (!key) throw invalidArgument(`PSK file ${o.tlsPskFile} has no identity ${identity}`);
    return { psk: { identity, key } };
  }
  if (o.tlsPskIdentity) throw invalidArgument('--tls-psk-identity needs --tls-psk-file');
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
