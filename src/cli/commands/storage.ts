import type { Command } from 'commander';
import { invalidArgument } from '../../common/index.js';
import { exportVolume, importVolume, serveStorage, withStorage } from '../../orchestration/index.js';
import { bytes, dataOption, parseSize, table } from '../args.js';
import { printResult } from '../output.js';

type DataOpts = { data?: string; json?: boolean };

/** `haven storage serve`: the storage service in the foreground. */
export function registerStorage(program: Command): void {
  const storage = program.command('storage').description("run a site's storage service");
  dataOption(storage.command('serve'))
    .description('export every volume (and snapshot, read-only) over NBD until SIGTERM/SIGINT')
    .option('--listen <host:port>', 'TCP address (default 127.0.0.1:10809)')
    .option('--socket <path>', 'unix socket instead of TCP')
    .option('--tls-cert <file>', 'server certificate (PEM); makes the server TLS-only')
    .option('--tls-key <file>', 'server private key (PEM)')
    .option('--tls-ca <file>', 'CA (PEM) client certificates must be signed by')
    .action(
      async (
        o: DataOpts & { listen?: string; socket?: string; tlsCert?: string; tlsKey?: string; tlsCa?: string },
      ) => {
        if (!!o.tlsCert !== !!o.tlsKey) throw invalidArgument('give both --tls-cert and --tls-key');
        const s = await serveStorage({
          ...(o.data ? { dataDir: o.data } : {}),
          ...(o.listen ? { listen: o.listen } : {}),
          ...(o.socket ? { socket: o.socket } : {}),
          ...(o.tlsCert
            ? { tls: { cert: o.tlsCert, key: o.tlsKey!, ...(o.tlsCa ? { ca: o.tlsCa } : {}) } }
            : {}),
        });
        process.stdout.write(
          `haven: storage service of ${s.storage.dataDir} serving ${s.exports.names().length} export(s) on ${s.uriOf('')}\n`,
        );
        const stop = () => void s.stop().then(() => process.exit(0));
        process.once('SIGTERM', stop);
        process.once('SIGINT', stop);
      },
    );
}

/** `haven pool …` */
export function registerPool(program: Command): void {
  const pool = program
    .command('pool')
    .description('storage pools: where volumes live, with their capabilities');
  dataOption(pool.command('create'))
    .description('create a pool')
    .argument('<name>')
    .option('--path <dir>', 'directory for the pool (default: inside the data directory)')
    .option('--tier <tier>', 'media tier advertised to policies', 'standard')
    .option('--capacity <size>', 'most data the pool may hold (default: its filesystem)')
    .option('--json', 'print JSON')
    .action((name: string, o: DataOpts & { path?: string; tier: string; capacity?: string }) =>
      withStorage(o.data, (s) => {
        const p = s.createPool(name, {
          tier: o.tier,
          ...(o.path ? { path: o.path } : {}),
          ...(o.capacity ? { capacityBytes: parseSize(o.capacity, '--capacity') } : {}),
        });
        printResult(!!o.json, p, () => `created pool ${p.name} at ${p.path}`);
      }),
    );
  dataOption(pool.command('list'))
    .description('list pools with capacity and capabilities')
    .option('--json', 'print JSON')
    .action((o: DataOpts) =>
      withStorage(o.data, (s) => {
        const pools = s.listPools();
        printResult(!!o.json, pools, () =>
          table([
            ['NAME', 'TIER', 'CAPACITY', 'ALLOCATED', 'FREE', 'PATH'],
            ...pools.map((p) => [
              p.name,
              p.capabilities.tier,
              bytes(p.capacityBytes),
              bytes(p.allocatedBytes),
              bytes(p.freeBytes),
              p.path,
            ]),
          ]),
        );
      }),
    );
  dataOption(pool.command('show'))
    .description('show one pool')
    .argument('<name>')
    .option('--json', 'print JSON')
    .action((name: string, o: DataOpts) =>
      withStorage(o.data, (s) => {
        const p = s.pool(name).info();
        printResult(!!o.json, p, () => JSON.stringify(p, null, 2));
      }),
    );
  dataOption(pool.command('delete'))
    .description('delete an empty pool')
    .argument('<name>')
    .action((name: string, o: DataOpts) => withStorage(o.data, (s) => s.deletePool(name)));
}

/** `haven volume …` */
export function registerVolume(program: Command): void {
  const volume = program
    .command('volume')
    .description('volumes: thin virtual disks with snapshots and clones');
  dataOption(volume.command('create'))
    .description('create a thin volume')
    .argument('<name>')
    .requiredOption('--size <size>', 'logical size, e.g. 10G')
    .requiredOption('--pool <pool>', 'pool to create it in')
    .option('--json', 'print JSON')
    .action((name: string, o: DataOpts & { size: string; pool: string }) =>
      withStorage(o.data, (s) => {
        const v = s.createVolume(name, parseSize(o.size, '--size'), o.pool);
        printResult(!!o.json, v, () => `created volume ${v.name} (${bytes(v.size)}) in pool ${v.pool}`);
      }),
    );
  dataOption(volume.command('list'))
    .description('list volumes with logical and allocated size')
    .option('--pool <pool>', 'only this pool')
    .option('--json', 'print JSON')
    .action((o: DataOpts & { pool?: string }) =>
      withStorage(o.data, (s) => {
        const vols = s.listVolumes(o.pool);
        printResult(!!o.json, vols, () =>
          table([
            ['NAME', 'POOL', 'SIZE', 'ALLOCATED', 'ORIGIN'],
            ...vols.map((v) => [v.name, v.pool, bytes(v.size), bytes(v.allocatedBytes), v.origin ?? '']),
          ]),
        );
      }),
    );
  dataOption(volume.command('show'))
    .description('show one volume and its snapshots')
    .argument('<name>')
    .option('--json', 'print JSON')
    .action((name: string, o: DataOpts) =>
      withStorage(o.data, (s) => {
        const v = { ...s.volume(name), snapshots: s.listSnapshots(name) };
        printResult(!!o.json, v, () => JSON.stringify(v, null, 2));
      }),
    );
  dataOption(volume.command('delete'))
    .description('delete a volume (refused while it has snapshots)')
    .argument('<name>')
    .action((name: string, o: DataOpts) => withStorage(o.data, (s) => s.deleteVolume(name)));
  dataOption(volume.command('resize'))
    .description('grow a volume')
    .argument('<name>')
    .requiredOption('--size <size>', 'new logical size')
    .action((name: string, o: DataOpts & { size: string }) =>
      withStorage(o.data, (s) => void s.resizeVolume(name, parseSize(o.size, '--size'))),
    );
  dataOption(volume.command('clone'))
    .description('a new writable volume from a snapshot, sharing its data')
    .argument('<snapshot>', 'volume@snapshot')
    .argument('<name>', 'name of the new volume')
    .option('--json', 'print JSON')
    .action((snap: string, name: string, o: DataOpts) =>
      withStorage(o.data, (s) => {
        const [vol, sn] = splitSnapshot(snap);
        const v = s.clone(vol, sn, name);
        printResult(!!o.json, v, () => `created volume ${v.name} from ${snap}`);
      }),
    );
  dataOption(volume.command('import'))
    .description('import an image (raw, qcow2, vmdk, vhdx) into a new volume, verified')
    .argument('<image>')
    .requiredOption('--name <name>', 'name of the new volume')
    .requiredOption('--pool <pool>', 'pool to create it in')
    .option('--format <format>', 'image format (default: detected)')
    .option('--json', 'print JSON')
    .action((image: string, o: DataOpts & { name: string; pool: string; format?: string }) =>
      withStorage(o.data, async (s) => {
        const r = await importVolume(s, {
          image,
          name: o.name,
          pool: o.pool,
          ...(o.format ? { format: o.format } : {}),
        });
        printResult(
          !!o.json,
          r,
          () =>
            `imported ${image} into volume ${r.volume.name}: ${bytes(r.copy.dataBytes)} of data, verified`,
        );
      }),
    );
  dataOption(volume.command('export'))
    .description('export a volume or snapshot to an image file, verified')
    .argument('<source>', 'volume or volume@snapshot')
    .argument('<image>', 'image file to write')
    .option('--format <format>', 'image format', 'raw')
    .option('--json', 'print JSON')
    .action((source: string, image: string, o: DataOpts & { format: string }) =>
      withStorage(o.data, async (s) => {
        const r = await exportVolume(s, { source, image, format: o.format });
        printResult(!!o.json, r, () => `exported ${source} to ${image} (${o.format}), verified`);
      }),
    );
}

/** `haven snapshot …` */
export function registerSnapshot(program: Command): void {
  const snapshot = program
    .command('snapshot')
    .description('snapshots: instant, read-only points in time of a volume');
  dataOption(snapshot.command('create'))
    .description("take a snapshot (with --bitmap: and end that bitmap's epoch at it, atomically)")
    .argument('<volume>')
    .argument('<name>')
    .option('--bitmap <bitmap>', "keep the bitmap's changes so far as <bitmap>@<name> and restart it empty")
    .option('--json', 'print JSON')
    .action((volume: string, name: string, o: DataOpts & { bitmap?: string }) =>
      withStorage(o.data, (s) => {
        const r = o.bitmap ? s.checkpoint(volume, name, o.bitmap) : { snapshot: s.snapshot(volume, name) };
        printResult(
          !!o.json,
          r,
          () =>
            `took snapshot ${volume}@${r.snapshot.name}${o.bitmap ? `; bitmap ${o.bitmap} starts a new epoch` : ''}`,
        );
      }),
    );
  dataOption(snapshot.command('list'))
    .description("list a volume's snapshots")
    .argument('<volume>')
    .option('--json', 'print JSON')
    .action((volume: string, o: DataOpts) =>
      withStorage(o.data, (s) => {
        const list = s.listSnapshots(volume);
        printResult(!!o.json, list, () =>
          table([
            ['NAME', 'SIZE', 'CREATED'],
            ...list.map((x) => [`${volume}@${x.name}`, bytes(x.size), x.createdAt]),
          ]),
        );
      }),
    );
  dataOption(snapshot.command('delete'))
    .description('delete a snapshot (refused while a clone depends on it)')
    .argument('<volume>')
    .argument('<name>')
    .action((volume: string, name: string, o: DataOpts) =>
      withStorage(o.data, (s) => s.deleteSnapshot(volume, name)),
    );
  dataOption(snapshot.command('revert'))
    .description('make a volume what it was at a snapshot')
    .argument('<volume>')
    .argument('<name>')
    .action((volume: string, name: string, o: DataOpts) =>
      withStorage(o.data, (s) => s.revert(volume, name)),
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
  dataOption(bitmap.command('add'))
    .description('start tracking changes to a volume')
    .argument('<volume>')
    .argument('<name>')
    .option('--granularity <size>', 'bytes per bit', '64K')
    .option('--json', 'print JSON')
    .action((volume: string, name: string, o: DataOpts & { granularity: string }) =>
      withStorage(o.data, (s) => {
        const b = s.addBitmap(volume, name, parseSize(o.granularity, '--granularity'));
        printResult(
          !!o.json,
          b,
          () => `bitmap ${name} tracks changes to ${volume} at ${bytes(b.granularity)}`,
        );
      }),
    );
  dataOption(bitmap.command('list'))
    .description("list a volume's bitmaps")
    .argument('<volume>')
    .option('--json', 'print JSON')
    .action((volume: string, o: DataOpts) =>
      withStorage(o.data, (s) => {
        const list = s.listBitmaps(volume);
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
      }),
    );
  dataOption(bitmap.command('remove'))
    .description('stop tracking and delete a bitmap')
    .argument('<volume>')
    .argument('<name>')
    .action((volume: string, name: string, o: DataOpts) =>
      withStorage(o.data, (s) => s.removeBitmap(volume, name)),
    );
  dataOption(bitmap.command('clear'))
    .description('mark everything clean (and trusted again)')
    .argument('<volume>')
    .argument('<name>')
    .action((volume: string, name: string, o: DataOpts) =>
      withStorage(o.data, (s) => s.clearBitmap(volume, name)),
    );
}
