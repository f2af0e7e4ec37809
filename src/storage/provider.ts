import { conflict } from '../common/index.js';
import type { PoolInfo, SnapshotInfo, VolumeInfo } from './pool.js';

/**
 * The storage provider contract, version 1 (the VASA of VMware's Virtual Volumes): what a pool's
 * provider reports — capabilities, capacity, health — and the operations the storage carries out
 * itself (offloaded: create, delete, resize, snapshot, clone), and where a volume's bytes are
 * (`access`: an NBD URI that Haven's own NBD client opens). Policies match their requirements
 * against `capabilities`; placement reads `capacity`.
 *
 * Every call is asynchronous, so that a provider may live in another process: Haven's own pools
 * implement it in process (`localProvider`), a storage vendor implements it over HTTP (the same
 * calls as REST, docs/provider-api.yaml; the client is provider-http.ts). The version is
 * "MAJOR.MINOR": a minor version only adds (optional fields, calls Haven asks for only when
 * advertised), so Haven accepts any 1.x and refuses another major version.
 */
export const STORAGE_PROVIDER_API_VERSION = '1.0';

/** Whether a provider's `apiVersion` is one this Haven speaks (any 1.x). */
export function speaksProviderApi(version: unknown): boolean {
  return typeof version === 'string' && /^1\.\d{1,4}$/.test(version);
}

/**
 * Capability name → value: `true` for a plain one ("thin", "replication"), a string for a valued
 * one ("tier" → "gold"). Absent: not offered.
 */
export type CapabilitySet = Record<string, string | true>;

/** The capabilities a provider may implement itself; anything else is declared by an operator. */
export const BUILTIN_CAPABILITIES = [
  'thin',
  'snapshots',
  'clones',
  'encryption',
  'replication',
  'tier',
] as const;

export interface ProviderCapacity {
  capacityBytes: number;
  allocatedBytes: number;
  freeBytes: number;
}

export interface ProviderHealth {
  state: 'ok' | 'degraded' | 'failed';
  message?: string;
}

/** `describe`: who the provider is, what it offers, how full and how well it is. */
export interface ProviderDescription {
  apiVersion: string;
  /** The vendor's product, for people ("Acme Array 9000"). */
  vendor?: string;
  capabilities: CapabilitySet;
  capacity: ProviderCapacity;
  health: ProviderHealth;
}

export interface ProviderVolume {
  name: string;
  sizeBytes: number;
  /** The provider's own id; default: the name. */
  id?: string;
  allocatedBytes?: number;
  createdAt?: string;
  /** For a clone: "volume@snapshot" it was made from. */
  origin?: string;
}

export interface ProviderSnapshot {
  name: string;
  volume: string;
  sizeBytes: number;
  id?: string;
  createdAt?: string;
}

/**
 * Where a volume's (or a snapshot's) bytes are: an NBD URI (`nbd://host:port/export`,
 * `nbd+unix:///export?socket=PATH`, or the `nbds` forms with TLS, then `tlsCa` is the PEM of the
 * CA that signed the provider's NBD certificate). Haven opens it with its own NBD client.
 */
export interface DataAccess {
  uri: string;
  tlsCa?: string;
}

/**
 * The contract. Names are Haven's volume and snapshot names (1-64 of letters, digits, '.', '_',
 * '-'). Every call fails with a HavenError naming what is wrong: NOT_FOUND, CONFLICT (a name is
 * taken, a snapshot has clones), NO_SPACE, UNSUPPORTED (an operation the provider does not
 * offer), INVALID_ARGUMENT.
 */
export interface StorageProvider {
  describe(): Promise<ProviderDescription>;
  listVolumes(): Promise<ProviderVolume[]>;
  /** A new volume of `sizeBytes` reading as zeroes. */
  createVolume(name: string, sizeBytes: number): Promise<ProviderVolume>;
  /** Deletes a volume and its snapshots (CONFLICT while a clone depends on one). */
  deleteVolume(name: string): Promise<void>;
  resizeVolume(name: string, sizeBytes: number): Promise<ProviderVolume>;
  listSnapshots(volume: string): Promise<ProviderSnapshot[]>;
  /**
   * A point-in-time snapshot on the storage. Haven flushes its own connections to the volume
   * first: the snapshot must hold every write whose flush completed before this call.
   */
  createSnapshot(volume: string, name: string): Promise<ProviderSnapshot>;
  deleteSnapshot(volume: string, name: string): Promise<void>;
  /** A writable volume made from a snapshot (sharing its data, if the storage can). */
  clone(volume: string, snapshot: string, name: string): Promise<ProviderVolume>;
  /** Where the bytes are; a snapshot's are read-only. Valid as long as the volume (snapshot) exists. */
  access(volume: string, opts?: { snapshot?: string }): Promise<DataAccess>;
}

/** What Haven's own pools advertise: thin, snapshots, clones, their tier (plus what is true of the pool). */
export function poolCapabilities(info: PoolInfo): CapabilitySet {
  const c = info.capabilities;
  const set: CapabilitySet = c.tier ? { tier: c.tier } : {};
  for (const k of ['thin', 'snapshots', 'clones', 'encryption', 'replication', 'distributed'] as const)
    if (c[k]) set[k] = true;
  if (c.replicas !== undefined) set.replicas = String(c.replicas);
  return set;
}

/** The storage operations a local provider delegates to (the site's StorageService). */
export interface LocalStorage {
  pool(name: string): { info(): PoolInfo };
  listVolumes(pool?: string): VolumeInfo[];
  createVolume(name: string, size: number, pool: string): VolumeInfo;
  deleteVolume(name: string): void;
  resizeVolume(name: string, size: number): VolumeInfo;
  listSnapshots(volume: string): SnapshotInfo[];
  snapshot(volume: string, name: string): SnapshotInfo;
  deleteSnapshot(volume: string, name: string): void;
  clone(volume: string, snapshot: string, name: string): VolumeInfo;
  volume(name: string): VolumeInfo;
}

/**
 * Haven's own pool type as a provider, in process: thin, snapshots and clones always; its tier;
 * no encryption and no replication of its own (a pool type that cannot does not advertise them —
 * an operator who knows better, e.g. an encrypted filesystem underneath, declares them). `uriOf`
 * gives the site's NBD address of a target (the site's unix socket), when the site serves one.
 */
export function localProvider(
  storage: LocalStorage,
  pool: string,
  uriOf?: (target: string) => string,
): StorageProvider {
  const vol = (v: VolumeInfo): ProviderVolume => ({
    name: v.name,
    id: v.id,
    sizeBytes: v.size,
    allocatedBytes: v.allocatedBytes,
    createdAt: v.createdAt,
    ...(v.origin ? { origin: v.origin } : {}),
  });
  const snap = (s: SnapshotInfo): ProviderSnapshot => ({
    name: s.name,
    id: s.id,
    volume: s.volume,
    sizeBytes: s.size,
    createdAt: s.createdAt,
  });
  const mine = (volume: string): string => {
    if (storage.volume(volume).pool !== pool) throw conflict(`volume ${volume} is not in pool ${pool}`);
    return volume;
  };
  return {
    describe: async () => {
      const i = storage.pool(pool).info();
      return {
        apiVersion: STORAGE_PROVIDER_API_VERSION,
        vendor: 'Haven',
        capabilities: poolCapabilities(i),
        capacity: {
          capacityBytes: i.capacityBytes,
          allocatedBytes: i.allocatedBytes,
          freeBytes: i.freeBytes,
        },
        health: { state: 'ok' },
      };
    },
    listVolumes: async () => storage.listVolumes(pool).map(vol),
    createVolume: async (name, size) => vol(storage.createVolume(name, size, pool)),
    deleteVolume: async (name) => storage.deleteVolume(mine(name)),
    resizeVolume: async (name, size) => vol(storage.resizeVolume(mine(name), size)),
    listSnapshots: async (volume) => storage.listSnapshots(mine(volume)).map(snap),
    createSnapshot: async (volume, name) => snap(storage.snapshot(mine(volume), name)),
    deleteSnapshot: async (volume, name) => storage.deleteSnapshot(mine(volume), name),
    clone: async (volume, snapshot, name) => vol(storage.clone(mine(volume), snapshot, name)),
    access: async (volume, opts = {}) => {
      const target = opts.snapshot ? `${mine(volume)}@${opts.snapshot}` : mine(volume);
      if (!uriOf) throw conflict(`pool ${pool} is not served over NBD by this process`);
      return { uri: uriOf(target) };
    },
  };
}
