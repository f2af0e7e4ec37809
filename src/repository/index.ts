/** Layer 4 — the backup repository: chunks (deduplicated, zstd, AES-256-GCM), snapshots, verify, prune, GC. */
export { Repository } from './repository.js';
export type {
  RepositoryConfig,
  SnapshotManifest,
  SnapshotInfo as BackupSnapshot,
  DiskManifest,
  BackupStats,
  DamagedSnapshot,
  PruneReport,
  RepositoryStats,
} from './repository.js';
export type { VerifyReport, VerifyOptions } from './verify.js';
export type { GcReport, GcOptions } from './gc.js';
export type { SessionRecord } from './sessions.js';
export { ChunkCodec } from './chunk-codec.js';
export { LocalBackend, type RepositoryBackend, type ObjectInfo } from './backend.js';
export { planPrune, selectRetained, sourceName, type PrunePlan, type RetentionPolicy } from './retention.js';
export type { RepositoryKeys } from './keys.js';
export * from './format.js';
