export * from './site/index.js';
// What the faces use of the layers below, as the orchestration layer's surface.
export {
  nbdInfo,
  formatNbdInfo,
  human,
  nbdCopy,
  serveImage,
  serveDevice,
  parseHostPort,
  DEFAULT_NBD_PORT,
  readPskFile,
  type NbdInfoOptions,
  type NbdInfoResult,
  type MapEntry,
  type NbdCopyOptions,
  type ServeImageOptions,
  type ServingImage,
  type TlsCredentials,
} from '../nbd/index.js';
export type { CopyOptions, CopyProgress, CopyResult } from '../block/index.js';
export {
  openStorage,
  withStorage,
  serveStorage,
  importVolume,
  exportVolume,
  type ServeStorageOptions,
  type ServingStorage,
} from '../storage/index.js';
export type { BitmapInfo, PoolInfo, SnapshotInfo, VolumeInfo, StorageService } from '../storage/index.js';
export {
  repoAccess,
  openRepository,
  backupResult,
  backupSource,
  runBackup,
  restoreSnapshot,
  rollbackWith,
  rollbackVolume,
  mountSnapshot,
  listBackupFilesystems,
  listBackupFiles,
  extractBackupFiles,
  type RepoAccess,
  type BackupRequest,
  type BackupResult,
  type RestoreRequest,
  type RollbackResult,
  type MountRequest,
  type BackupFilesRequest,
  type BackupFilesystems,
  type BackupListing,
} from '../protection/index.js';
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
export { defaultDataDir } from '../common/index.js';
