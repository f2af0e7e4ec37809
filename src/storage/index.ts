export { Pool, checkName } from './pool.js';
export type { PoolCapabilities, PoolConfig, PoolInfo, VolumeInfo, SnapshotInfo } from './pool.js';
export { VolumeFamily, DEFAULT_CLUSTER_SIZE, MAX_VOLUME_SIZE } from './family/family.js';
export type { FamilyStats } from './family/family.js';
export { MemberDevice } from './family/member-device.js';
export { StorageService, MOVING_SUFFIX, BASE_LABEL, type MoveResult } from './service.js';
export { TapDevice } from './tap.js';
export type { TapEvent, TapSubscriber, ChangeTracker } from './tap.js';
export { StorageExports } from './exports.js';
