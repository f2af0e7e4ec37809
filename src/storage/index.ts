export { Pool, checkName } from './pool.js';
export type { PoolCapabilities, PoolConfig, PoolInfo, VolumeInfo, SnapshotInfo } from './pool.js';
export { VolumeFamily, DEFAULT_CLUSTER_SIZE, MAX_VOLUME_SIZE } from './family/family.js';
export type { FamilyStats } from './family/family.js';
export { MemberDevice } from './family/member-device.js';
export { StorageService, MOVING_SUFFIX, BASE_LABEL, type MoveResult } from './service.js';
export { TapDevice } from './tap.js';
export type { TapEvent, TapSubscriber, ChangeTracker } from './tap.js';
export { StorageExports, REPLICA_LABEL } from './exports.js';
export type { BitmapInfo } from './bitmaps.js';
export { openStorage, withStorage } from './open.js';
export { serveStorage, type ServeStorageOptions, type ServingStorage } from './serve.js';
export { importVolume, exportVolume } from './image-transfer.js';
export { sitePsk, makePrivate, PSK_IDENTITY, type SitePsk } from './nbd-access.js';
export {
  STORAGE_PROVIDER_API_VERSION,
  BUILTIN_CAPABILITIES,
  speaksProviderApi,
  localProvider,
  poolCapabilities,
  type StorageProvider,
  type CapabilitySet,
  type DataAccess,
  type ProviderCapacity,
  type ProviderDescription,
  type ProviderHealth,
  type ProviderSnapshot,
  type ProviderVolume,
} from './provider.js';
export { HttpProvider, checkProviderUrl, PROVIDER_CALL_TIMEOUT_MS } from './provider-http.js';
export { ProviderPool, type ProviderPoolInfo } from './provider-pool.js';
