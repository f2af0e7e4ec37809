import { connect } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { HavenError, invalidArgument } from '../../common/index.js';
import type { ComputeService } from './compute.js';

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

const POLL_MS = 250;
const CONSOLE_BYTES = 256 * 1024;

export function describeHeartbeat(hb: Heartbeat): string {
  return hb.kind === 'agent'
    ? 'guest agent ping'
    : hb.kind === 'console'
      ? `console /${hb.source}/`
      : `tcp ${hb.host}:${hb.port}`;
}

/**
 * Resolves with what was seen once VM `vm` shows heartbeat `hb`; rejects with why not as soon as
 * it is clear — the VM stopped, `failIf` names a reason (CORRUPT), or the time ran out (TIMEOUT).
 */
export async function waitForHeartbeat(
  compute: ComputeService,
  vm: string,
  hb: Heartbeat,
  opts: { timeoutSeconds: number; signal: AbortSignal; failIf?: () => string | undefined },
): Promise<string> {
  const started = Date.now();
  const deadline = started + opts.timeoutSeconds * 1000;
  const since = () => `${((Date.now() - started) / 1000).toFixed(1)} s`;
  for (;;) {
    opts.signal.throwIfAborted();
    const reason = opts.failIf?.();
    if (reason) throw new HavenError('CORRUPT', reason);
    const v = compute.vm(vm);
    if (v.state !== 'running' && v.state !== 'starting')
      throw new HavenError(
        'CORRUPT',
        `VM ${vm} ${v.state} before the heartbeat${v.stateReason ? `: ${v.stateReason}` : ''}`,
      );
    if (await beat(compute, vm, hb)) return `heartbeat ${describeHeartbeat(hb)} after ${since()}`;
    if (Date.now() >= deadline)
      throw new HavenError(
        'TIMEOUT',
        `no heartbeat (${describeHeartbeat(hb)}) of VM ${vm} within ${opts.timeoutSeconds} s`,
      );
    await sleep(POLL_MS, undefined, { signal: opts.signal }).catch(() => undefined);
  }
}

async function beat(compute: ComputeService, vm: string, hb: Heartbeat): Promise<boolean> {
  if (hb.kind === 'console') return hb.pattern.test(compute.consoleLog(vm, CONSOLE_BYTES));
  if (hb.kind === 'agent') {
    try {
      const agent = await compute.guestAgent(vm, 2000);
      try {
        await agent.execute('guest-ping', undefined, 2000);
        return true;
      } finally {
        agent.close();
      }
    } catch (err) {
      if (err instanceof HavenError && err.code === 'UNSUPPORTED')
        throw new HavenError('CORRUPT', err.message);
      return false;
    }
  }
  return new Promise((resolve) => {
    const s = connect({ host: hb.host, port: hb.port, timeout: 2000 });
    const done = (ok: boolean) => {
      s.destroy();
      resolve(ok);
    };
    s.once('connect', () => done(true));
    s.once('timeout', () => done(false));
    s.once('error', () => done(false));
  });
}
