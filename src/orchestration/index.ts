export * from './tools/nbd-info.js';
export * from './tools/nbd-copy.js';
export { openSource, openDestination, type Endpoint, type EndpointOptions } from './tools/nbd-endpoints.js';
export * from './tools/serve-image.js';
export * from './tools/storage.js';
export * from './site/index.js';
export { readPskFile, type TlsCredentials } from '../nbd/index.js';
export type { PoolInfo, SnapshotInfo, VolumeInfo, StorageService } from '../storage/index.js';
export * from './tools/backup.js';
export * from './tools/backup-files.js';
export {
  Repository,
  verify as verifyRepository,
  prune as pruneRepository,
  gc as collectRepositoryGarbage,
  selectRetained,
  DEFAULT_CHUNK_SIZE,
  type RetentionPolicy,
  type BackupSnapshot,
} from '../repository/index.js';
