/** Layer 4 — the backup repository: chunks (deduplicated, zstd, AES-256-GCM), snapshots, verify, prune, GC. */
export { Repository } from './repository.js';
export type {
  RepositoryConfig,
  RemoteOptions,
  SnapshotManifest,
  SnapshotInfo as BackupSnapshot,
  DiskManifest,
  BackupStats,
  DamagedSnapshot,
  RepositoryStats,
} from './repository.js';
export { verifySnapshots as verify, type VerifyReport, type VerifyOptions } from './verify.js';
export { collectGarbage as gc, type GcReport, type GcOptions } from './gc.js';
export { prune, type PruneReport, type PruneOptions } from './prune.js';
export { DiskIndex, Page, type Run } from './disk-index.js';
export { IndexWriter, type IndexPiece } from './index-writer.js';
export type { SessionRecord } from './sessions.js';
export { ChunkCodec } from './chunk-codec.js';
export {
  LocalBackend,
  openBackend,
  type BackendDescription,
  type RepositoryBackend,
  type ObjectInfo,
} from './backend.js';
export { planPrune, selectRetained, sourceName, type PrunePlan, type RetentionPolicy } from './retention.js';
export type { ChunkKeys, RepositoryKeys } from './keys.js';
export * from './format.js';
// The S3 backend itself (and the AWS SDK) loads only when an s3:// repository is opened.
export type { S3Backend } from './s3-backend.js';
export {
  isS3Url,
  parseS3Url,
  s3Settings,
  type Retention,
  type RetainingBackend,
  type S3Settings,
} from './s3-settings.js';
