/**
 * Two (or more) sites on one machine for the replication tests: each a `haven serve` with its
 * own data directory, name and fixed ports (so that a daemon killed with -9 comes back where
 * its peer expects it), paired through the CLI as an operator would. A site's link to its peer
 * may go through a FaultProxy of the test (the address the site advertises). Polling goes
 * through the REST API (a CLI start per poll would be slow on 2 cores).
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { FaultProxy } from './fault-proxy.js';
import { freePort } from './proc.js';
import { siteApi } from './site-api.js';
import { site, startDaemon, type Site } from './site.js';

export interface TestSite extends Site {
  name: string;
  /** The fixed port of its peer link listener. */
  linkPort: number;
  /** The API, straight (JSON; throws with the server's message on an error status). */
  api<T>(method: string, path: string, body?: unknown): Promise<T>;
  /** A text answer of the API (a console log). */
  text(path: string): Promise<string>;
  /** kill -9 of the daemon (its VMs go on), and a new one on the same directory and ports. */
  kill(): Promise<void>;
  restart(): Promise<void>;
}

export async function testSite(
  t: { after: (fn: () => unknown) => void },
  name: string,
  opts: { advertise?: (linkPort: number) => Promise<number> } = {},
): Promise<TestSite> {
  const linkPort = await freePort();
  let advertised = linkPort;
  if (opts.advertise) advertised = await opts.advertise(linkPort);
  const args = [
    '--site',
    name,
    '--peer-listen',
    `127.0.0.1:${linkPort}`,
    ...(advertised !== linkPort ? ['--peer-advertise', `127.0.0.1:${advertised}`] : []),
  ];
  const s = (await site(t, args)) as TestSite;
  s.name = name;
  s.linkPort = linkPort;
  s.text = async (path: string) => {
    const { url } = JSON.parse(readFileSync(join(s.dir, 'api.json'), 'utf8')) as { url: string };
    const token = readFileSync(join(s.dir, 'api-token'), 'utf8').trim();
    const res = await fetch(`${url}/api/v1${path}`, { headers: { authorization: `Bearer ${token}` } });
    const text = await res.text();
    if (res.status >= 400) throw new Error(`GET ${path} at site ${name}: ${res.status} ${text}`);
    return text;
  };
  s.api = <T>(method: string, path: string, body?: unknown): Promise<T> =>
    siteApi<T>(s.dir, method, path, body, ` at site ${name}`);
  // What the daemon said, with HAVEN_TEST_DAEMON_OUTPUT set (debugging a test).
  t.after(() => {
    if (process.env.HAVEN_TEST_DAEMON_OUTPUT)
      process.stderr.write(`--- site ${name} daemon output (tail) ---\n${s.daemon.output().slice(-6000)}\n`);
  });
  s.kill = async () => {
    s.daemon.child.kill('SIGKILL');
    await s.daemon.exited;
  };
  s.restart = async () => {
    s.daemon = await startDaemon(s.dir, args);
  };
  return s;
}

/** Site a paired with site b (b through a FaultProxy when `proxied`): both directions, one command. */
export async function pairedSites(
  t: { after: (fn: () => unknown) => void },
  opts: { proxied?: boolean } = {},
): Promise<{ a: TestSite; b: TestSite; proxy?: FaultProxy }> {
  let proxy: FaultProxy | undefined;
  const a = await testSite(t, 'site-a');
  const b = await testSite(t, 'site-b', {
    ...(opts.proxied
      ? {
          advertise: async (port: number) => {
            proxy = await FaultProxy.start({ port });
            t.after(() => proxy?.close());
            return proxy.port;
          },
        }
      : {}),
  });
  const { url } = JSON.parse(readFileSync(join(b.dir, 'api.json'), 'utf8')) as { url: string };
  await a.haven('site', 'pair', '--peer-api', url, '--peer-token-file', join(b.dir, 'api-token'));
  return { a, b, ...(proxy ? { proxy } : {}) };
}

/** Polls `ok` (async) until it holds; fails naming `what` (and the last state seen) after `ms`. */
export async function eventually<T>(
  what: string,
  probe: () => Promise<T>,
  ok: (v: T) => boolean,
  ms = 60_000,
): Promise<T> {
  const deadline = Date.now() + ms;
  let last: T | undefined;
  let error: unknown;
  for (;;) {
    try {
      last = await probe();
      error = undefined;
      if (ok(last)) return last;
    } catch (err) {
      error = err; // a daemon restarting
    }
    if (Date.now() > deadline)
      throw new Error(
        `timed out waiting for ${what}; last seen: ${(error ? String(error) : JSON.stringify(last)).slice(-600)}`,
      );
    await sleep(100);
  }
}
