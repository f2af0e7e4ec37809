import type { BlockDevice, BlockSizes, Extent, WriteFlags, ZeroFlags } from '../block/index.js';
import { HavenError, errorMessage } from '../common/index.js';
import { connectNbd, type NbdClientDevice } from '../nbd/index.js';
import type { PoolInfo, ProviderPoolInfo, SnapshotInfo, VolumeInfo } from './pool.js';
import type {
  CapabilitySet,
  ProviderDescription,
  ProviderHealth,
  ProviderSnapshot,
  ProviderVolume,
  StorageProvider,
} from './provider.js';

export type { ProviderPoolInfo };

/**
 * A pool whose volumes live on a storage provider reached through the contract (provider.ts),
 * typically out of process (provider-http.ts). The site answers questions about it — its
 * capabilities, capacity, volumes, snapshots — from what the provider said last (refreshed at
 * registration, at start, after each operation and periodically), so that listings and placement
 * never wait on another program; every change goes to the provider and is recorded here only
 * once it answered. The data path is the provider's NBD export, opened by Haven's NBD client
 * (`openDevice`), and served by the site through the volume's tap like any other volume.
 */
export class ProviderPool {
  private described: ProviderDescription | undefined;
  private checkedAt: string | undefined;
  private error: string | undefined;
  /** Bumped by every change Haven makes: a refresh that overlapped one keeps the inventory it had. */
  private changes = 0;
  private readonly inventory = new Map<string, { volume: ProviderVolume; snapshots: ProviderSnapshot[] }>();

  constructor(
    readonly name: string,
    readonly provider: StorageProvider,
    readonly url: string,
    private readonly registeredAt: string,
  ) {}

  /** Asks the provider for everything again; on failure the pool reports it as its health and keeps what it knew. */
  async refresh(): Promise<void> {
    try {
      const at = this.changes;
      const d = await this.provider.describe();
      const vols = await this.provider.listVolumes();
      const snaps = await Promise.all(vols.map((v) => this.provider.listSnapshots(v.name)));
      this.described = d;
      if (at === this.changes) {
        this.inventory.clear();
        vols.forEach((v, i) => this.inventory.set(v.name, { volume: v, snapshots: snaps[i]! }));
      }
      this.checkedAt = new Date().toISOString();
      this.error = undefined;
    } catch (err) {
      this.error = errorMessage(err);
      throw err;
    }
  }

  /** Capabilities and capacity again, after an operation changed them (a failure is only recorded). */
  private async redescribe(): Promise<void> {
    try {
      this.described = await this.provider.describe();
      this.checkedAt = new Date().toISOString();
      this.error = undefined;
    } catch (err) {
      this.error = errorMessage(err);
    }
  }

  health(): ProviderHealth {
    if (this.error) return { state: 'failed', message: this.error };
    return this.described?.health ?? { state: 'failed', message: 'the provider has not answered yet' };
  }

  capabilities(): CapabilitySet {
    return this.described?.capabilities ?? {};
  }

  info(): PoolInfo & { provider: ProviderPoolInfo } {
    const caps = this.capabilities();
    const c = this.described?.capacity ?? { capacityBytes: 0, allocatedBytes: 0, freeBytes: 0 };
    return {
      name: this.name,
      id: `provider:${this.name}`,
      path: this.url,
      capabilities: {
        thin: caps.thin === true,
        snapshots: caps.snapshots === true,
        clones: caps.clones === true,
        replication: caps.replication === true,
        encryption: caps.encryption === true,
        tier: typeof caps.tier === 'string' ? caps.tier : '',
      },
      capacityBytes: c.capacityBytes,
      allocatedBytes: c.allocatedBytes,
      // An unreachable provider has no room for anything: placement passes it by.
      freeBytes: this.error ? 0 : c.freeBytes,
      provider: {
        url: this.url,
        ...(this.described ? { apiVersion: this.described.apiVersion } : {}),
        ...(this.described?.vendor ? { vendor: this.described.vendor } : {}),
        health: this.health(),
        ...(this.checkedAt ? { checkedAt: this.checkedAt } : {}),
      },
    };
  }

  hasVolume(name: string): boolean {
    return this.inventory.has(name);
  }

  volumeNames(): string[] {
    return [...this.inventory.keys()];
  }

  listVolumes(): VolumeInfo[] {
    return [...this.inventory.values()].map((e) => this.volumeInfo(e.volume));
  }

  volume(name: string): VolumeInfo {
    return this.volumeInfo(this.entry(name).volume);
  }

  listSnapshots(volume: string): SnapshotInfo[] {
    return this.entry(volume).snapshots.map((s) => ({
      name: s.name,
      id: s.id ?? `${volume}@${s.name}`,
      volume,
      size: s.sizeBytes,
      createdAt: s.createdAt ?? this.registeredAt,
    }));
  }

  async createVolume(name: string, size: number): Promise<VolumeInfo> {
    this.changes++;
    const v = await this.provider.createVolume(name, size);
    this.answered(
      'create volume',
      v.name === name && v.sizeBytes >= size,
      `volume ${v.name} of ${v.sizeBytes} bytes`,
    );
    this.inventory.set(name, { volume: v, snapshots: [] });
    await this.redescribe();
    return this.volumeInfo(v);
  }

  async deleteVolume(name: string): Promise<void> {
    this.entry(name);
    this.changes++;
    await this.provider.deleteVolume(name);
    this.inventory.delete(name);
    await this.redescribe();
  }

  async resizeVolume(name: string, size: number): Promise<VolumeInfo> {
    const e = this.entry(name);
    this.changes++;
    const v = await this.provider.resizeVolume(name, size);
    this.answered('resize', v.sizeBytes === size, `size ${v.sizeBytes}`);
    e.volume = v;
    return this.volumeInfo(v);
  }

  async snapshot(volume: string, name: string): Promise<SnapshotInfo> {
    const e = this.entry(volume);
    this.changes++;
    const s = await this.provider.createSnapshot(volume, name);
    this.answered(
      'create snapshot',
      s.name === name && s.volume === volume,
      `snapshot ${s.volume}@${s.name}`,
    );
    e.snapshots.push(s);
    await this.redescribe();
    return this.listSnapshots(volume).find((x) => x.name === name)!;
  }

  async deleteSnapshot(volume: string, name: string): Promise<void> {
    const e = this.entry(volume);
    this.changes++;
    await this.provider.deleteSnapshot(volume, name);
    e.snapshots = e.snapshots.filter((s) => s.name !== name);
  }

  async clone(volume: string, snapshot: string, name: string): Promise<VolumeInfo> {
    this.entry(volume);
    this.changes++;
    const v = await this.provider.clone(volume, snapshot, name);
    this.answered('clone', v.name === name, `volume ${v.name}`);
    this.inventory.set(name, { volume: { origin: `${volume}@${snapshot}`, ...v }, snapshots: [] });
    await this.redescribe();
    return this.volume(name);
  }

  /** "volume" or "volume@snapshot" (read-only) as a device: the provider's NBD export, opened on first use. */
  openDevice(target: string, opts: { readOnly?: boolean } = {}): BlockDevice {
    const [volume, snapshot] = target.split('@') as [string, string | undefined];
    const size = snapshot
      ? (this.listSnapshots(volume).find((s) => s.name === snapshot)?.size ??
        notFoundThrow(`volume ${volume} has no snapshot ${snapshot}`))
      : this.volume(volume).size;
    const readOnly = !!snapshot || !!opts.readOnly;
    return new ProviderDevice(
      async () => {
        const a = await this.provider.access(volume, snapshot ? { snapshot } : {});
        return connectNbd(a.uri, { ...(a.tlsCa ? { tls: { ca: a.tlsCa } } : {}), readOnly });
      },
      size,
      readOnly,
      `${target} (pool ${this.name})`,
    );
  }

  private entry(volume: string): { volume: ProviderVolume; snapshots: ProviderSnapshot[] } {
    const e = this.inventory.get(volume);
    if (!e) throw new HavenError('NOT_FOUND', `no volume ${volume} in pool ${this.name}`);
    return e;
  }

  private answered(call: string, ok: boolean, got: string): void {
    if (!ok)
      throw new HavenError(
        'PROTOCOL',
        `storage provider ${this.url}: ${call}: it answered with ${got}, not what was asked`,
      );
  }

  private volumeInfo(v: ProviderVolume): VolumeInfo {
    return {
      name: v.name,
      id: v.id ?? `${this.name}/${v.name}`,
      pool: this.name,
      size: v.sizeBytes,
      allocatedBytes: v.allocatedBytes ?? 0,
      createdAt: v.createdAt ?? this.registeredAt,
      ...(v.origin ? { origin: v.origin } : {}),
      labels: {},
    };
  }
}

function notFoundThrow(msg: string): never {
  throw new HavenError('NOT_FOUND', msg);
}

/**
 * A provider's NBD export as a device, connected on first use (the site opens devices
 * synchronously; the provider is asked where the bytes are only when someone reads or writes). A
 * failed connection is tried again by the next request; a connection that drops fails the
 * requests in flight (IO), and the next request connects again.
 */
class ProviderDevice implements BlockDevice {
  readonly blockSizes: BlockSizes = { minimum: 1, preferred: 4096, maximum: 32 << 20 };
  readonly flushCoversAll = false;
  private conn: Promise<NbdClientDevice> | undefined;
  private closed = false;

  constructor(
    private readonly open: () => Promise<NbdClientDevice>,
    readonly size: number,
    readonly readOnly: boolean,
    private readonly label: string,
  ) {}

  private async dev(): Promise<NbdClientDevice> {
    if (this.closed) throw new HavenError('IO', `${this.label}: the device is closed`);
    this.conn ??= this.open().then(
      (d) => {
        if (d.size < this.size) {
          void d.close();
          throw new HavenError(
            'IO',
            `${this.label}: the provider's export has ${d.size} bytes, the volume ${this.size}`,
          );
        }
        return d;
      },
      (err: unknown) => {
        this.conn = undefined;
        throw err;
      },
    );
    return this.conn;
  }

  /** Runs `fn` on the connection; one that dropped is forgotten, so the next request reconnects. */
  private async on<T>(fn: (d: NbdClientDevice) => T | Promise<T>): Promise<T> {
    const d = await this.dev();
    try {
      return await fn(d);
    } catch (err) {
      if (err instanceof HavenError && err.code === 'IO' && /closed the connection/.test(err.message)) {
        if (this.conn && (await this.conn.catch(() => undefined)) === d) this.conn = undefined;
      }
      throw err;
    }
  }

  async read(buf: Uint8Array, offset: number): Promise<void> {
    await this.on((d) => d.read(buf, offset));
  }

  async write(data: Uint8Array | readonly Uint8Array[], offset: number, flags?: WriteFlags): Promise<void> {
    await this.on((d) => d.write(data, offset, flags));
  }

  async flush(): Promise<void> {
    if (!this.conn) return; // nothing written through this handle
    await this.on((d) => d.flush());
  }

  async trim(offset: number, length: number, flags?: WriteFlags): Promise<void> {
    await this.on((d) => d.trim(offset, length, flags));
  }

  async writeZeroes(offset: number, length: number, flags?: ZeroFlags): Promise<void> {
    await this.on((d) => d.writeZeroes(offset, length, flags));
  }

  async blockStatus(offset: number, length: number): Promise<Extent[]> {
    return this.on((d) => d.blockStatus(offset, length));
  }

  async close(): Promise<void> {
    this.closed = true;
    const c = this.conn;
    this.conn = undefined;
    if (c) await (await c.catch(() => undefined))?.close();
  }
}
