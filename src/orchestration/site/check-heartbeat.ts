import { invalidArgument } from '../../common/index.js';

/**
 * How a recoverability check knows the recovered guest is up:
 * - `agent`: its guest agent answers a ping;
 * - `console:REGEX`: its serial console log matches REGEX (JavaScript syntax, multi-line);
 * - `tcp:HOST:PORT`: a TCP connection to HOST:PORT from the site's host succeeds — only on a
 *   network the host is on: the check's own isolated network (a segment of the VMs only) is not.
 */
export type Heartbeat =
  | { kind: 'agent' }
  | { kind: 'console'; pattern: RegExp; source: string }
  | { kind: 'tcp'; host: string; port: number };

export function parseHeartbeat(spec: string | undefined): Heartbeat {
  const s = spec ?? 'agent';
  if (s === 'agent') return { kind: 'agent' };
  if (s.startsWith('console:')) {
    const source = s.slice('console:'.length);
    if (!source) throw invalidArgument('heartbeat console: needs a pattern, e.g. console:login:');
    try {
      return { kind: 'console', pattern: new RegExp(source, 'm'), source };
    } catch (err) {
      throw invalidArgument(
        `heartbeat console:${source} is not a regular expression: ${(err as Error).message}`,
      );
    }
  }
  if (s.startsWith('tcp:')) {
    const m = /^tcp:(?:(\[[0-9a-fA-F:]+\]|[^:\s]+):)?(\d{1,5})$/.exec(s);
    const port = m ? Number(m[2]) : NaN;
    if (!m || !(port >= 1 && port <= 65535))
      throw invalidArgument(`heartbeat ${s} is not tcp:HOST:PORT (e.g. tcp:10.0.0.5:22)`);
    if (!m[1])
      throw invalidArgument(
        `heartbeat ${s} names no host: the check's isolated network is not reachable from this host, so give tcp:HOST:PORT with --network a network the host is on (docs/recovery.md)`,
      );
    return { kind: 'tcp', host: m[1].replace(/^\[|\]$/g, ''), port };
  }
  throw invalidArgument(`heartbeat "${s}" is not agent, console:REGEX or tcp:HOST:PORT`);
}
