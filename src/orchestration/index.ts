export * from './site/index.js';
// What the faces run without a site (nbd …, storage serve, repository commands, backups of files
// and NBD URIs), as the orchestration layer's surface: the faces import nothing below it.
export {
  nbdInfo,
  formatNbdInfo,
  human,
  nbdCopy,
  serveImage,
  parseHostPort,
  readPskFile,
  type NbdInfoOptions,
  type NbdInfoResult,
  type MapEntry,
  type NbdCopyOptions,
  type ServeImageOptions,
  type ServingImage,
  type TlsCredentials,
} from '../nbd/index.js';
export type { CopyProgress, CopyResult } from '../block/index.js';
export { serveStorage, type ServeStorageOptions, type ServingStorage } from '../storage/index.js';
export type { BitmapInfo, PoolInfo, SnapshotInfo, VolumeInfo } from '../storage/index.js';
export {
  repoAccess,
  openRepository,
  backupResult,
  backupSource,
  copySnapshots,
  restoreSnapshot,
  mountSnapshot,
  listBackupFilesystems,
  listBackupFiles,
  extractBackupFiles,
  type RepoAccess,
  type BackupRequest,
  type BackupResult,
  type CopyReport,
  type RestoreRequest,
  type MountRequest,
  type BackupFilesRequest,
  type BackupFilesystems,
  type BackupListing,
  type VerifyReport,
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
export { ManualClock, wallClock, type Clock } from '../common/index.js';
