/** File-level restore: the files of a backup's filesystems, listed and extracted without restoring the disk. */
export { diskLayout, pickFilesystem, withFilesystem, type DiskFilesystem, type DiskLayout } from './disk.js';
export {
  listFiles,
  extractFiles,
  normalisePath,
  type FileEntry,
  type ExtractOptions,
  type ExtractResult,
} from './browse.js';
export { readPartitionTable, type Partition, type PartitionTable } from './partitions.js';
export { probeFilesystem, READABLE_FILESYSTEMS } from './fs-probe.js';
export type { Debugfs, FileType } from './debugfs.js';
export {
  listBackupFilesystems,
  listBackupFiles,
  extractBackupFiles,
  type BackupFilesRequest,
  type BackupFilesystems,
  type BackupListing,
} from './backup-files.js';
