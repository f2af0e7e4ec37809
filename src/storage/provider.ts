import type { Pool, SnapshotInfo, VolumeInfo } from './pool.js';

/**
 * The storage provider contract, version 1 (the VASA of VMware's Virtual Volumes): what a pool's
 * provider reports — capabilities, capacity, health — and the operations the storage carries out
 * itself (offloaded: snapshot, clone). Policies match their requirements against `capabilities`;
 * placement reads `capacity`. A provider never blocks: each call answers from what it holds.
 * Versioned so that another implementation (an out-of-process one over HTTP) can say which
 * contract it speaks; Haven refuses a provider whose `apiVersion` it does not know.
 */
export const STORAGE_PROVIDER_API_VERSION = 1;

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

export interface StorageProvider {
  readonly apiVersion: typeof STORAGE_PROVIDER_API_VERSION;
  /** The pool it provides. */
  readonly pool: string;
  /** What the storage itself offers (operator-declared ones are added by the site). */
  capabilities(): CapabilitySet;
  capacity(): ProviderCapacity;
  health(): ProviderHealth;
  /** An O(1) snapshot on the storage; throws CONFLICT when the name is taken. */
  snapshot(volume: string, name: string): SnapshotInfo;
  /** A writable clone of a snapshot, sharing its data. */
  clone(volume: string, snapshot: string, name: string): VolumeInfo;
}

/**
 * Haven's own pool type as a provider: thin, snapshots and clones always; its tier; no encryption
 * and no replication of its own (a pool type that cannot does not advertise them — an operator
 * who knows better, e.g. an encrypted filesystem underneath, declares them).
 */
export function poolProvider(pool: Pool): StorageProvider {
  return {
    apiVersion: STORAGE_PROVIDER_API_VERSION,
    pool: pool.name,
    capabilities: () => {
      const c = pool.info().capabilities;
      const set: CapabilitySet = { tier: c.tier };
      for (const k of ['thin', 'snapshots', 'clones', 'encryption', 'replication'] as const)
        if (c[k]) set[k] = true;
      return set;
    },
    capacity: () => {
      const i = pool.info();
      return { capacityBytes: i.capacityBytes, allocatedBytes: i.allocatedBytes, freeBytes: i.freeBytes };
    },
    health: () => ({ state: 'ok' }),
    snapshot: (volume, name) => pool.snapshot(volume, name),
    clone: (volume, snapshot, name) => pool.clone(volume, snapshot, name),
  };
}
