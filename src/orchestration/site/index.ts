export { Site, apiToken, havenVersion, type SiteInfo, type SiteOptions, type Actor } from './site.js';
export type { SiteVolumes } from './volumes.js';
export type { SiteBackups } from './backups.js';
export type { SiteVms } from './vms.js';
export type { Job, JobState, JobProgress, JobLogLine } from './jobs.js';
export type { SiteEvent, EventQuery } from './events.js';
export type { Host, Network, Vm, VmDefinition, VmState } from './compute.js';
export type { Recovery, RecoveryDisk } from './recovery.js';
export { TRANSPORTS, type Transport } from '../../protection/index.js';
