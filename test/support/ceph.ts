/**
 * A throw-away single-node Ceph (mon, OSD, radosgw, an `rbd` pool) for a test file, started by
 * scripts/ceph under a temporary directory on free loopback ports and stopped by PID in `after`,
 * also when the test failed. About 6 s to start on this kind of machine.
 */
import { readFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { fileURLToPath } from 'node:url';
import { run } from './proc.js';
import { tempDir } from './tmp.js';

const CEPH_SCRIPT = fileURLToPath(new URL('../../../scripts/ceph', import.meta.url));
/** scripts/ceph uses BASE (mon), BASE+1 (radosgw) and BASE+10..BASE+29 (OSD). */
const PORT_SPAN = 30;

export interface Ceph {
  dir: string;
  /** CEPH_CONF for librbd, rbd and qemu's rbd driver. */
  conf: string;
  pool: string;
  s3: { endpoint: string; accessKeyId: string; secretAccessKey: string; region: string };
  /** The environment a client process needs (CEPH_CONF). */
  env: NodeJS.ProcessEnv;
  /** Runs the `rbd` tool against this cluster. */
  rbd(...args: string[]): Promise<string>;
  /** `haven pool create NAME --type rbd …` on this cluster's pool, its images named PREFIX…. */
  poolCreateArgs(prefix: string, name?: string): string[];
  stop(): Promise<void>;
}

export async function startCeph(): Promise<Ceph> {
  const tmp = tempDir('haven-ceph-');
  const dir = `${tmp.path}/ceph`;
  const base = await freePortRange(PORT_SPAN);
  const stop = async () => {
    await run(CEPH_SCRIPT, ['stop', dir]).catch(() => undefined);
    tmp.cleanup();
  };
  try {
    await run(CEPH_SCRIPT, ['start', dir, String(base)]);
  } catch (e) {
    await stop();
    throw e;
  }
  const facts = Object.fromEntries(
    readFileSync(`${dir}/env`, 'utf8')
      .split('\n')
      .filter((l) => l.includes('='))
      .map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]),
  ) as Record<string, string>;
  const env = { ...process.env, CEPH_CONF: facts.CEPH_CONF! };
  return {
    dir,
    conf: facts.CEPH_CONF!,
    pool: facts.CEPH_RBD_POOL!,
    s3: {
      endpoint: facts.S3_ENDPOINT!,
      accessKeyId: facts.S3_ACCESS_KEY_ID!,
      secretAccessKey: facts.S3_SECRET_ACCESS_KEY!,
      region: facts.S3_REGION!,
    },
    env,
    rbd: async (...args) => (await run('rbd', args, { env })).stdout,
    poolCreateArgs: (prefix, name = 'ceph') => [
      'pool',
      'create',
      name,
      '--type',
      'rbd',
      '--ceph-conf',
      facts.CEPH_CONF!,
      '--ceph-pool',
      facts.CEPH_RBD_POOL!,
      '--image-prefix',
      prefix,
    ],
    stop,
  };
}

/** A base port such that base .. base+span-1 are all free on 127.0.0.1 right now. */
async function freePortRange(span: number): Promise<number> {
  for (let attempt = 0; attempt < 50; attempt++) {
    const base = 20_000 + Math.floor(Math.random() * 900) * 40;
    let free = true;
    for (let p = base; p < base + span && free; p++) free = await portFree(p);
    if (free) return base;
  }
  throw new Error(`no ${span} consecutive free ports found for Ceph`);
}

function portFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const srv = createServer();
    srv.once('error', () => resolve(false));
    srv.listen(port, '127.0.0.1', () => srv.close(() => resolve(true)));
  });
}
