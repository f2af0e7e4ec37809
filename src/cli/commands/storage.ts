import type { Command } from 'commander';
import { invalidArgument } from '../../common/index.js';
import { resolve } from 'node:path';
import type { ApiClient } from '../../api/client.js';
import type {
  BitmapInfo,
  Job,
  PoolAnswer,
  PoolInfo,
  SnapshotInfo,
  VolumeInfo,
} from '../../orchestration/index.js';
import { orchestration, type Orchestration } from '../lazy.js';
import { apiOptions, withSite, type ApiOpts } from '../api.js';
import { movedSummary } from './compute.js';
import { runJob } from '../jobs.js';
import { bytes, dataOption, parseSize, table } from '../args.js';
import { fields, printResult } from '../output.js';

type DataOpts = { data?: string; json?: boolean };

const serveStorage = async (...a: Parameters<Orchestration['serveStorage']>) =>
  (await orchestration()).serveStorage(...a);

/** `haven storage serve`: the storage service in the foreground. */
export function registerStorage(program: Command): void {
  const storage = program.command('storage').description("run a site's storage service");
  dataOption(storage.command('serve'))
    .description('export every volume (and snapshot, read-only) over NBD until SIGTERM/SIGINT')
    .option(
      '--listen <host:port>',
      "TCP address (default 127.0.0.1:10809); TLS: clients authenticate with the site's key (DATA/nbd-tls/keys.psk) unless --tls-cert or --plain",
    )
    .option('--socket <path>', 'unix socket instead of TCP')
    .option('--tls-cert <file>', 'server certificate (PEM); makes the server TLS-only')
    .option('--tls-key <file>', 'server private key (PEM)')
    .option('--tls-ca <file>', 'CA (PEM) client certificates must be signed by')
    .option(
      '--plain',
      'plain TCP WITHOUT AUTHENTICATION: anyone who reaches it reads and writes every volume (warned)',
    )
    .action(
      async (
        o: DataOpts & {
          listen?: string;
          socket?: string;
          tlsCert?: string;
          tlsKey?: string;
          tlsCa?: string;
          plain?: boolean;
        },
      ) => {
        if (!!o.tlsCert !== !!o.tlsKey) throw invalidArgument('give both --tls-cert and --tls-key');
        const s = await serveStorage({
          ...(o.data ? { dataDir: o.data } : {}),
          ...(o.listen ? { listen: o.listen } : {}),
          ...(o.socket ? { socket: o.socket } : {}),
          ...(o.plain ? { plain: true } : {}),
          ...(o.tlsCert
            ? { tls: { cert: o.tlsCert, key: o.tlsKey!, ...(o.tlsCa ? { ca: o.tlsCa } : {}) } }
            : {}),
        });
        process.stdout.write(
          `haven: storage service of ${s.storage.dataDir} serving ${s.exports.names().length} export(s) on ${s.uriOf('VOLUME')} (each volume by name, snapshots as VOLUME@SNAPSHOT)\n`,
        );
        const stop = () => void s.stop().then(() => process.exit(0));
        process.once('SIGTERM', stop);
        process.once('SIGINT', stop);
      },
    );
}

/** Through the site daemon (the default), or the site of a data directory opened here (--data). */
function via<T>(o: DataOpts & ApiOpts, online: (c: ApiClient) => Promise<T>): Promise<T> {
  return withSite(o, online);
}

function both(cmd: Command): Command {
  return apiOptions(
    cmd.option(
      '--data <dir>',
      'work offline on this site data directory (no daemon may hold it) instead of through the daemon',
    ),
  );
}

const enc = encodeURIComponent;

/** What a pool offers policies besides its tier: "thin snapshots clones replication site=x". */
function advertised(p: PoolAnswer): string {
  const a = p.advertised ?? {};
  const order = ['thin', 'snapshots', 'clones', 'replication', 'encryption'];
  const keys = Object.keys(a)
    .filter((k) => k !== 'tier')
    .sort((x, y) => (order.indexOf(x) + 1 || 99) - (order.indexOf(y) + 1 || 99) || x.localeCompare(y));
  return keys.map((k) => (a[k] === true ? k : `${k}=${a[k]}`)).join(' ') || '-';
}

function poolRows(pools: PoolInfo[]): string {
  return table([
    ['NAME', 'TIER', 'CAPACITY', 'ALLOCATED', 'FREE', 'PATH'],
    ...pools.map((p) => [
      p.name,
      p.capabilities.tier,
      bytes(p.capacityBytes),
      bytes(p.allocatedBytes),
      bytes(p.freeBytes),
      p.path,
    ]),
  ]);
}

/** `haven pool …` */
export function registerPool(program: Command): void {
  const pool = program
    .command('pool')
    .description('storage pools: where volumes live, with their capabilities');
  both(pool.command('create'))
    .description('create a pool')
    .argument('<name>')
    .option('--path <dir>', 'directory for the pool (default: inside the data directory)')
    .option('--tier <tier>', 'media tier advertised to policies', 'standard')
    .option('--capacity <size>', 'most data the pool may hold (default: its filesystem)')
    .option(
      '--capability <cap>',
      'a capability the operator declares (NAME or NAME=VALUE, e.g. replication, tier=gold; repeat)',
      (v: string, all: string[] = []) => [...all, v],
    )
    .option('--type <type>', 'file (volumes in files) or rbd (volumes are RBD images in a Ceph pool)', 'file')
    .option('--ceph-conf <file>', "rbd: the cluster's ceph.conf")
    .option('--ceph-pool <pool>', 'rbd: the Ceph pool holding the images')
    .option('--image-prefix <prefix>', "rbd: images are named PREFIX+volume; others are not the site's")
    .option('--json', 'print JSON')
    .action(
      async (
        name: string,
        o: DataOpts &
          ApiOpts & {
            path?: string;
            tier: string;
            capacity?: string;
            capability?: string[];
            type: string;
            cephConf?: string;
            cephPool?: string;
            imagePrefix?: string;
          },
      ) => {
        const opts = {
          ...(o.type !== 'file' ? { type: o.type } : {}),
          ...(o.cephConf ? { cephConf: resolve(o.cephConf) } : {}),
          ...(o.cephPool ? { cephPool: o.cephPool } : {}),
          ...(o.imagePrefix !== undefined ? { imagePrefix: o.imagePrefix } : {}),
          tier: o.tier,
          ...(o.capability ? { capabilities: o.capability } : {}),
          ...(o.path ? { path: resolve(o.path) } : {}),
          ...(o.capacity ? { capacityBytes: parseSize(o.capacity, '--capacity') } : {}),
        };
        const p = await via(o, (c) => c.post<PoolInfo>('/pools', { name, ...opts }));
        printResult(!!o.json, p, () => `created pool ${p.name} at ${p.path}`);
      },
    );
  both(pool.command('register'))
    .description(
      'register a pool served by an out-of-process storage provider (HTTP; the contract: docs/provider-api.md)',
    )
    .argument('<name>')
    .requiredOption('--provider-url <url>', "the provider's base URL, http:// or https://")
    .requiredOption(
      '--provider-token-file <file>',
      "a file holding the provider's bearer token, readable by the daemon (its path is stored, never the token; --token-file is the Haven API's own)",
    )
    .option(
      '--capability <cap>',
      'a capability the operator declares beside what the provider advertises (NAME or NAME=VALUE; repeat)',
      (v: string, all: string[] = []) => [...all, v],
    )
    .option('--json', 'print JSON')
    .action(
      async (
        name: string,
        o: DataOpts & ApiOpts & { providerUrl: string; providerTokenFile: string; capability?: string[] },
      ) => {
        const p = await via(o, (c) =>
          c.post<PoolAnswer>('/pools/register', {
            name,
            providerUrl: o.providerUrl,
            tokenFile: resolve(o.providerTokenFile),
            ...(o.capability ? { capabilities: o.capability } : {}),
          }),
        );
        printResult(
          !!o.json,
          p,
          () =>
            `registered pool ${p.name}: storage provider ${p.path} (API ${p.provider?.apiVersion ?? '?'}${p.provider?.vendor ? `, ${p.provider.vendor}` : ''}), offers ${advertised(p)}`,
        );
      },
    );
  both(pool.command('list'))
    .description('list pools with capacity and capabilities')
    .option('--json', 'print JSON')
    .action(async (o: DataOpts & ApiOpts) => {
      const pools = await via(o, (c) => c.get<PoolInfo[]>('/pools'));
      printResult(!!o.json, pools, () => poolRows(pools));
    });
  both(pool.command('show'))
    .description('show one pool')
    .argument('<name>')
    .option('--json', 'print JSON')
    .action(async (name: string, o: DataOpts & ApiOpts) => {
      const p = await via(o, (c) => c.get<PoolAnswer>(`/pools/${enc(name)}`));
      const c = p.capabilities;
      printResult(!!o.json, p, () =>
        fields([
          ['pool', `${p.name} (${p.id})`],
          ['path', p.path],
          ['tier', String(p.advertised?.tier ?? c.tier)],
          ['capacity', bytes(p.capacityBytes)],
          ['allocated', bytes(p.allocatedBytes)],
          ['free', bytes(p.freeBytes)],
          ['offers', advertised(p)],
          ...(p.provider
            ? ([
                [
                  'provider',
                  `${p.provider.url} (API ${p.provider.apiVersion ?? '?'}${p.provider.vendor ? `, ${p.provider.vendor}` : ''})`,
                ],
                [
                  'health',
                  `${p.provider.health.state}${p.provider.health.message ? `: ${p.provider.health.message}` : ''}`,
                ],
              ] as [string, string][])
            : []),
        ]),
      );
    });
  both(pool.command('set-capabilities'))
    .description('replace the capabilities declared for a pool (none: --capability given no times)')
    .argument('<name>')
    .option('--capability <cap>', 'NAME or NAME=VALUE (repeat)', (v: string, all: string[] = []) => [
      ...all,
      v,
    ])
    .option('--json', 'print JSON')
    .action(async (name: string, o: DataOpts & ApiOpts & { capability?: string[] }) => {
      const p = await via(o, (c) =>
        c.call<PoolAnswer>('PUT', `/pools/${enc(name)}/capabilities`, { capabilities: o.capability ?? [] }),
      );
      printResult(!!o.json, p, () => `pool ${p.name} advertises ${advertised(p)}`);
    });
  both(pool.command('delete'))
    .description("delete an empty pool (a provider's pool: forget its registration)")
    .argument('<name>')
    .action((name: string, o: DataOpts & ApiOpts) => via(o, (c) => c.delete(`/pools/${enc(name)}`)));
}

/** `haven volume …` */
export function registerVolume(program: Command): void {
  const volume = program
    .command('volume')
    .description('volumes: thin virtual disks with snapshots and clones');
  both(volume.command('create'))
    .description('create a thin volume')
    .argument('<name>')
    .requiredOption('--size <size>', 'logical size, e.g. 10G')
    .option('--pool <pool>', 'pool to create it in (default: by its policy, else default)')
    .option('--policy <policy>', 'place it on a pool that satisfies this policy, and assign the policy to it')
    .option('--for-vm <vm>', "place it by this VM's policy")
    .option('--json', 'print JSON')
    .action(
      async (
        name: string,
        o: DataOpts & ApiOpts & { size: string; pool?: string; policy?: string; forVm?: string },
      ) => {
        const size = parseSize(o.size, '--size');
        const v = await via(o, (c) =>
          c.post<VolumeInfo>('/volumes', {
            name,
            sizeBytes: size,
            ...(o.pool ? { pool: o.pool } : {}),
            ...(o.policy ? { policy: o.policy } : {}),
            ...(o.forVm ? { vm: o.forVm } : {}),
          }),
        );
        printResult(!!o.json, v, () => `created volume ${v.name} (${bytes(v.size)}) in pool ${v.pool}`);
      },
    );
  both(volume.command('list'))
    .description('list volumes with logical and allocated size')
    .option('--pool <pool>', 'only this pool')
    .option('--json', 'print JSON')
    .action(async (o: DataOpts & ApiOpts & { pool?: string }) => {
      const vols = await via(o, (c) =>
        c.get<VolumeInfo[]>(`/volumes${o.pool ? `?pool=${enc(o.pool)}` : ''}`),
      );
      printResult(!!o.json, vols, () =>
        table([
          ['NAME', 'POOL', 'SIZE', 'ALLOCATED', 'ORIGIN'],
          ...vols.map((v) => [v.name, v.pool, bytes(v.size), bytes(v.allocatedBytes), v.origin ?? '']),
        ]),
      );
    });
  both(volume.command('show'))
    .description('show one volume and its snapshots')
    .argument('<name>')
    .option('--json', 'print JSON')
    .action(async (name: string, o: DataOpts & ApiOpts) => {
      const v = await via(o, async (c) => ({
        ...(await c.get<VolumeInfo>(`/volumes/${enc(name)}`)),
        snapshots: await c.get<SnapshotInfo[]>(`/volumes/${enc(name)}/snapshots`),
      }));
      const labels = Object.entries(v.labels);
      printResult(!!o.json, v, () =>
        [
          fields([
            ['volume', `${v.name} (${v.id})`],
            ['pool', v.pool],
            ['size', `${bytes(v.size)} (${v.size} bytes)`],
            ['allocated', bytes(v.allocatedBytes)],
            ['created', v.createdAt],
            ...(v.origin ? [['origin', v.origin] as [string, string]] : []),
            ['labels', labels.map(([k, x]) => `${k}=${x}`).join(' ') || '-'],
            ['snapshots', v.snapshots.length],
          ]),
          ...(v.snapshots.length
            ? [table([['SNAPSHOT', 'CREATED'], ...v.snapshots.map((x) => [x.name, x.createdAt])])]
            : []),
        ].join('\n'),
      );
    });
  both(volume.command('delete'))
    .description('delete a volume (refused while it has snapshots or a VM uses it)')
    .argument('<name>')
    .action((name: string, o: DataOpts & ApiOpts) => via(o, (c) => c.delete(`/volumes/${enc(name)}`)));
  both(volume.command('resize'))
    .description('grow a volume')
    .argument('<name>')
    .requiredOption('--size <size>', 'new logical size')
    .action(async (name: string, o: DataOpts & ApiOpts & { size: string }) => {
      const size = parseSize(o.size, '--size');
      await via(o, (c) => c.post<VolumeInfo>(`/volumes/${enc(name)}/resize`, { sizeBytes: size }));
    });
  both(volume.command('move'))
    .description('live storage migration: move a volume to another pool, in use or not (a job)')
    .argument('<name>')
    .requiredOption('--pool <pool>', 'the pool to move to')
    .option('--keep-source', 'keep the source volume (renamed) instead of deleting it')
    .option('--no-wait', 'return once the job has started')
    .option('--json', 'print JSON')
    .action(
      (
        name: string,
        o: DataOpts & ApiOpts & { pool: string; keepSource?: boolean; wait: boolean; json?: boolean },
      ) => {
        return runJob(
          o,
          (c) =>
            c.post<Job>(`/volumes/${enc(name)}/move`, {
              pool: o.pool,
              ...(o.keepSource ? { keepSource: true } : {}),
            }),
          movedSummary,
        );
      },
    );
  both(volume.command('clone'))
    .description('a new writable volume from a snapshot, sharing its data')
    .argument('<snapshot>', 'volume@snapshot')
    .argument('<name>', 'name of the new volume')
    .option('--json', 'print JSON')
    .action(async (snap: string, name: string, o: DataOpts & ApiOpts) => {
      const [vol, sn] = splitSnapshot(snap);
      const v = await via(o, (c) => c.post<VolumeInfo>(`/volumes/${enc(vol)}/clone`, { snapshot: sn, name }));
      printResult(!!o.json, v, () => `created volume ${v.name} from ${snap}`);
    });
  both(volume.command('import'))
    .description('import an image (raw, qcow2, vmdk, vhdx) into a new volume, verified (a job)')
    .argument('<image>', "an image file (on the site's host)")
    .requiredOption('--name <name>', 'name of the new volume')
    .option('--pool <pool>', 'pool to create it in (default: by its policy, else default)')
    .option('--policy <policy>', 'place it on a pool that satisfies this policy, and assign the policy to it')
    .option(
      '--format <format>',
      'image format (default: probed, and an image naming other files, e.g. a backing file, is refused)',
    )
    .option('--no-wait', 'return once the job has started')
    .option('--json', 'print JSON')
    .action(
      (
        image: string,
        o: DataOpts &
          ApiOpts & { name: string; pool?: string; policy?: string; format?: string; wait: boolean },
      ) => {
        const opts = {
          image: resolve(image),
          name: o.name,
          ...(o.pool ? { pool: o.pool } : {}),
          ...(o.policy ? { policy: o.policy } : {}),
          ...(o.format ? { format: o.format } : {}),
        };
        return runJob(
          o,
          (c) => c.post<Job>('/volumes/import', opts),
          (j) =>
            `imported ${image} into volume ${o.name}: ${bytes((j.result as { dataBytes: number }).dataBytes)} of data, verified`,
        );
      },
    );
  both(volume.command('export'))
    .description('export a volume or snapshot to an image file, verified (a job)')
    .argument('<source>', 'volume or volume@snapshot')
    .argument('<image>', 'image file to write')
    .option('--format <format>', 'image format', 'raw')
    .option('--force', 'replace an existing file (or write over a block device)')
    .option('--no-wait', 'return once the job has started')
    .option('--json', 'print JSON')
    .action(
      (
        source: string,
        image: string,
        o: DataOpts & ApiOpts & { format: string; force?: boolean; wait: boolean },
      ) => {
        const out = resolve(image);
        const [vol, snap] = source.includes('@') ? splitSnapshot(source) : [source, undefined];
        return runJob(
          o,
          (c) =>
            c.post<Job>(`/volumes/${enc(vol)}/export`, {
              image: out,
              format: o.format,
              ...(snap ? { snapshot: snap } : {}),
              ...(o.force ? { force: true } : {}),
            }),
          () => `exported ${source} to ${image} (${o.format}), verified`,
        );
      },
    );
}

/** `haven snapshot …` */
export function registerSnapshot(program: Command): void {
  const snapshot = program
    .command('snapshot')
    .description('snapshots: instant, read-only points in time of a volume');
  both(snapshot.command('create'))
    .description("take a snapshot (with --bitmap: and end that bitmap's epoch at it, atomically)")
    .argument('<volume>')
    .argument('<name>')
    .option('--bitmap <bitmap>', "keep the bitmap's changes so far as <bitmap>@<name> and restart it empty")
    .option('--no-wait', 'return once the job has started')
    .option('--json', 'print JSON')
    .action((volume: string, name: string, o: DataOpts & ApiOpts & { bitmap?: string; wait: boolean }) => {
      const said = () =>
        `took snapshot ${volume}@${name}${o.bitmap ? `; bitmap ${o.bitmap} starts a new epoch` : ''}`;
      return runJob(
        o,
        (c) =>
          c.post<Job>(`/volumes/${enc(volume)}/snapshots`, {
            name,
            ...(o.bitmap ? { bitmap: o.bitmap } : {}),
          }),
        said,
      );
    });
  both(snapshot.command('list'))
    .description("list a volume's snapshots")
    .argument('<volume>')
    .option('--json', 'print JSON')
    .action(async (volume: string, o: DataOpts & ApiOpts) => {
      const list = await via(o, (c) => c.get<SnapshotInfo[]>(`/volumes/${enc(volume)}/snapshots`));
      printResult(!!o.json, list, () =>
        table([
          ['NAME', 'SIZE', 'CREATED'],
          ...list.map((x) => [`${volume}@${x.name}`, bytes(x.size), x.createdAt]),
        ]),
      );
    });
  both(snapshot.command('delete'))
    .description('delete a snapshot (refused while a clone depends on it)')
    .argument('<volume>')
    .argument('<name>')
    .action((volume: string, name: string, o: DataOpts & ApiOpts) =>
      via(o, (c) => c.delete(`/volumes/${enc(volume)}/snapshots/${enc(name)}`)),
    );
  both(snapshot.command('revert'))
    .description('make a volume what it was at a snapshot')
    .argument('<volume>')
    .argument('<name>')
    .action((volume: string, name: string, o: DataOpts & ApiOpts) =>
      via(o, (c) => c.post(`/volumes/${enc(volume)}/snapshots/${enc(name)}/revert`)),
    );
}

function splitSnapshot(s: string): [string, string] {
  const at = s.indexOf('@');
  if (at <= 0 || at === s.length - 1) throw invalidArgument(`"${s}" is not volume@snapshot`);
  return [s.slice(0, at), s.slice(at + 1)];
}

/** `haven bitmap …` */
export function registerBitmap(program: Command): void {
  const bitmap = program.command('bitmap').description("dirty bitmaps: a volume's changed-block tracking");
  both(bitmap.command('add'))
    .description('start tracking changes to a volume')
    .argument('<volume>')
    .argument('<name>')
    .option('--granularity <size>', 'bytes per bit', '64K')
    .option('--json', 'print JSON')
    .action(async (volume: string, name: string, o: DataOpts & ApiOpts & { granularity: string }) => {
      const granularity = parseSize(o.granularity, '--granularity');
      const b = await via(o, (c) =>
        c.post<BitmapInfo>(`/volumes/${enc(volume)}/bitmaps`, { name, granularity }),
      );
      printResult(!!o.json, b, () => `bitmap ${name} tracks changes to ${volume} at ${bytes(b.granularity)}`);
    });
  both(bitmap.command('list'))
    .description("list a volume's bitmaps")
    .argument('<volume>')
    .option('--json', 'print JSON')
    .action(async (volume: string, o: DataOpts & ApiOpts) => {
      const list = await via(o, (c) => c.get<BitmapInfo[]>(`/volumes/${enc(volume)}/bitmaps`));
      printResult(!!o.json, list, () =>
        table([
          ['NAME', 'GRANULARITY', 'DIRTY', 'STATE'],
          ...list.map((b) => [
            b.name,
            bytes(b.granularity),
            bytes(b.dirtyBytes),
            b.inconsistent ? 'inconsistent' : b.enabled ? 'enabled' : 'frozen',
          ]),
        ]),
      );
    });
  both(bitmap.command('remove'))
    .description('stop tracking and delete a bitmap')
    .argument('<volume>')
    .argument('<name>')
    .action((volume: string, name: string, o: DataOpts & ApiOpts) =>
      via(o, (c) => c.delete(`/volumes/${enc(volume)}/bitmaps/${enc(name)}`)),
    );
  both(bitmap.command('clear'))
    .description('mark everything clean (and trusted again)')
    .argument('<volume>')
    .argument('<name>')
    .action((volume: string, name: string, o: DataOpts & ApiOpts) =>
      via(o, (c) => c.post(`/volumes/${enc(volume)}/bitmaps/${enc(name)}/clear`)),
    );
}
