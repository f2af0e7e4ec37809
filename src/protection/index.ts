/** Layer 5 — backup and restore, instant recovery, replication (its journal so far: decision 0012). */
export {
  backup,
  allocated,
  openChunkPool,
  type BackupDisk,
  type BackupOptions,
  type Range,
} from './backup/engine.js';
export type { ChunkPool } from './backup/chunk-pool.js';
export { checkRestorable, restore, type RestoreOptions, type RestoreResult } from './backup/restore.js';
export {
  openImageSource,
  openNbdSource,
  openVolumeSource,
  openQmpSource,
  classifySource,
  dirtyRanges,
  changesSinceBackup,
  BACKUP_BITMAP,
  type OpenedSource,
} from './backup/sources.js';
export {
  quiescedSnapshot,
  type Consistency,
  type ConsistencyRecord,
  type GuestFreezer,
  type QuiesceOptions,
} from './backup/quiesce.js';
export { copySnapshots, type CopyReport } from './backup/copy.js';
export { startQmpPull, type QmpPullOptions, type QmpPullSession } from './backup/qmp-pull.js';
export { SnapshotDevice, type SnapshotDeviceOptions } from './recovery/snapshot-device.js';
export * from './recovery/files/index.js';
export { ReplicationJournal, type JournalEntry, type JournalOptions } from './replication/journal.js';
export { RecordKind, type CheckpointInfo } from './replication/journal-format.js';
export { GroupRecorder, type RecordedVolume, type RecorderOptions } from './replication/recorder.js';
export { ReplicaApplier, type AppliedCheckpoint, type ApplierOptions } from './replication/applier.js';
export {
  JournalReceiver,
  JournalSender,
  TokenBucket,
  type ReceiverOptions,
  type SenderOptions,
} from './replication/transceiver.js';
export { scanGroup, type ScanOptions, type ScanResult, type ScanSource } from './replication/scan.js';
export {
  SourceGateway,
  type ReplicationMode,
  type SourceGatewayOptions,
  type SourceStatus,
} from './replication/source-gateway.js';
export { TargetGateway, type TargetGatewayOptions } from './replication/target-gateway.js';
export {
  Frame,
  FRAME_HEADER,
  jsonFrame,
  writeFrame,
  type FrameType,
  type ReceivedFrame,
} from './replication/frames.js';
export {
  checksumReplica,
  checksumDevice,
  DEFAULT_EXTENT_BYTES,
  type ChecksumList,
  type ChecksumRequest,
} from './replication/checksums.js';
export {
  diffSums,
  type ExtentDifference,
  type VerifyOptions,
  type VerifyReport,
} from './replication/verify.js';
export {
  repoAccess,
  openRepository,
  backupResult,
  backupSource,
  runBackup,
  restoreSnapshot,
  rollbackWith,
  rollbackVolume,
  type RepoAccess,
  type BackupRequest,
  type BackupResult,
  type RestoreRequest,
  type RollbackResult,
} from './backup/requests.js';
export { mountSnapshot, type MountRequest } from './recovery/mount.js';
export {
  TRANSPORTS,
  TransferSlots,
  attachSnapshot,
  chooseTransport,
  isTransport,
  offeredTransports,
  type SiteEndpoints,
  type TcpEndpoint,
  type Transport,
} from './backup/transports.js';
