export { Site, apiToken, havenVersion, type SiteInfo, type SiteOptions, type Actor } from './site.js';
export type { SiteVolumes } from './volumes.js';
export type { SiteBackups } from './backups.js';
export type { SiteVms } from './vms.js';
export type { SiteChecks, CheckRequest, RecoveryCheck } from './checks.js';
export type { Job, JobState, JobProgress, JobLogLine } from './jobs.js';
export type { SiteEvent, EventQuery } from './events.js';
export type { Host, Network, Vm, VmDefinition, VmState } from './compute.js';
export type { Recovery, RecoveryDisk } from './recovery.js';
export { TRANSPORTS, type Transport } from '../../protection/index.js';
export type { SitePeers, AcceptCredential } from './peers.js';
export type { Peer } from './peer-store.js';
export type { PeerHealth, PeerState } from './peer-health.js';
export type { PeerOffer } from './pairing.js';
export type { ChannelHandler } from './peer-link.js';
export type { PeerOperation } from './peer-rpc.js';
export type { EnableReplicationRequest, ReplicationGroupAnswer, SiteReplication } from './replication.js';
export type { CreateGroupRequest, ResiliencyGroup, SiteGroups } from './site-groups.js';
export type { CheckpointAnswer, SourceGroupStatus, TargetGroupStatus } from './replication-runners.js';
export type {
  SiteDr,
  MigrateReport,
  ServiceResync,
  NetworkMapEntry,
  MigrateRequest,
  EvacuateReport,
  EvacuateRequest,
  RehearsalReport,
  RehearsalRequest,
  BusinessService,
  ServiceReport,
  TakeoverRequest,
  TakeoverReport,
} from './dr.js';
export type { SitePlans } from './site-plans.js';
export type { Plan, PlanRun, PlanStep } from './plans.js';
export type { PlanRunReport } from './plan-runner.js';
export type { SitePolicies, PolicyAssignment, PolicyObject } from './policies.js';
export type { Policy, PolicySpec, PolicyTiming } from './policy-spec.js';
export type { Compliance, ComplianceReason } from './compliance.js';
export type { PoolAnswer } from './volumes.js';
export type { ScheduleSpec, ScheduleOwnerSink, ScheduleKind, ScheduleParams } from './schedule-spec.js';
export {
  ROLES,
  ROUTE_RULES,
  SITE_TOKEN_USER,
  TOKEN_PREFIX,
  requirementOf,
  isRole,
  type SiteAccess,
  type Principal,
  type Requirement,
  type Role,
  type User,
  type UserToken,
} from '../access/index.js';
export type { SiteAlerts, Alert, Silence, Channel, AddChannelRequest, RuleInfo } from '../alerts/index.js';
export type { Scheduler, Schedule, SchedulerOptions } from './scheduler.js';
export { SCHEDULE_KINDS } from './scheduler.js';
export type { RunOutcome } from './schedule-store.js';
export { reportText, type DrReport, type ReportSummary } from './dr-reports.js';
export { reportHtml } from './dr-report-html.js';
export type { Objective, ObjectiveSpec, ObjectiveReason } from './objectives.js';
export type { ObjectiveAnswer, ObjectiveCompliance } from './site-objectives.js';
