// The console's only way to the site: the public REST API under /api/v1, with the session's
// cookie (sent by the browser) and its CSRF token on every request that changes something.

export interface Session {
  user: string;
  role: 'admin' | 'operator' | 'viewer';
  csrfToken?: string;
}

/** A refusal of the API: its code and message, and the field it names when it names one. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly field?: string,
  ) {
    super(message);
  }
}

let csrf = '';
let onSignedOut: () => void = () => undefined;

export function useSession(s: Session | null, signedOut: () => void): void {
  csrf = s?.csrfToken ?? '';
  onSignedOut = signedOut;
}

export async function call<T = unknown>(method: string, path: string, body?: unknown): Promise<T> {
  const headers: Record<string, string> = { accept: 'application/json' };
  if (body !== undefined) headers['content-type'] = 'application/json';
  if (method !== 'GET' && csrf) headers['x-csrf-token'] = csrf;
  const res = await fetch(`/api/v1${path}`, {
    method,
    headers,
    credentials: 'same-origin',
    ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
  });
  if (res.status === 204) return undefined as T;
  const text = await res.text();
  const data = text ? (JSON.parse(text) as unknown) : undefined;
  if (!res.ok) {
    const e = (data as { error?: { code: string; message: string; field?: string } } | undefined)?.error;
    if (res.status === 401 && path !== '/session') onSignedOut();
    throw new ApiError(
      res.status,
      e?.code ?? 'INTERNAL',
      e?.message ?? `${res.status} ${res.statusText}`,
      e?.field,
    );
  }
  return data as T;
}

export const get = <T>(path: string) => call<T>('GET', path);
export const post = <T>(path: string, body: unknown = {}) => call<T>('POST', path, body);
export const del = <T>(path: string) => call<T>('DELETE', path);
export const put = <T>(path: string, body: unknown = {}) => call<T>('PUT', path, body);
export const q = (o: Record<string, string | undefined>) => {
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(o)) if (v) p.set(k, v);
  const s = p.toString();
  return s ? `?${s}` : '';
};
export const enc = encodeURIComponent;

// ---- what the API answers (the parts the console reads) ----------------------------------------

export interface JobProgress {
  phase?: string;
  doneBytes: number;
  totalBytes: number;
  rateBytesPerSecond: number;
  etaSeconds?: number;
}
export interface Job {
  id: string;
  kind: string;
  target: string;
  state: 'running' | 'succeeded' | 'failed' | 'cancelled';
  progress: JobProgress;
  result?: unknown;
  error?: string;
  actor: string;
  createdAt: string;
  endedAt?: string;
}
export interface LogLine {
  time: string;
  level: 'info' | 'warning' | 'error';
  message: string;
}
export interface SiteEvent {
  id: number;
  time: string;
  actor: string;
  action: string;
  target: string;
  outcome: 'ok' | 'failed' | 'info' | 'warning';
  message: string;
}
export interface Vm {
  name: string;
  state: string;
  host?: string;
  memory?: string | number;
  disks: { volume: string }[];
}
export interface Volume {
  name: string;
  pool: string;
  size: number;
  allocatedBytes: number;
}
export interface Pool {
  name: string;
  capacityBytes: number;
  allocatedBytes: number;
  [k: string]: unknown;
}
export interface Repository {
  path: string;
  fs?: { totalBytes: number; freeBytes: number };
  error?: string;
}
export interface Backup {
  id: string;
  createdAt: string;
  source: { kind: string; name: string };
  vm?: { name?: string };
  disks?: { size?: number }[];
  [k: string]: unknown;
}
export interface Compliance {
  kind: 'vm' | 'volume';
  object: string;
  policy: string;
  compliant: boolean;
  reasons: { code: string; message: string }[];
}

export interface RpoSample {
  name: string;
  role: 'source' | 'target';
  peer: string;
  state?: string;
  link?: string;
  paused: boolean;
  rpoSeconds?: number;
  objectiveSeconds?: number;
  lagRecords?: number;
  throughputBytesPerSecond?: number;
}
export interface Checkpoint {
  seq: number;
  time: string;
  name?: string;
  snapshot?: string;
}
export interface ReplicationGroup {
  name: string;
  role: 'source' | 'target';
  peer: string;
  vms?: string[];
  volumes: { source: string; replica: string }[];
  pool: string;
  rpoObjectiveSeconds?: number;
  checkpointSeconds?: number;
  bytesPerSecond?: number;
  paused: boolean;
  createdAt: string;
  takenOver?: { at: string; checkpoint: { seq: number } };
  fenced?: { by: string; takenOverAt: string };
  source?: {
    state: string;
    link: string;
    error?: string;
    rpoSeconds?: number;
    rpoMet: boolean;
    appliedCheckpoint?: Checkpoint;
    lag: { records: number; bytes: number };
    journal: { bytes: number; maxBytes: number; fill: number };
    throughputBytesPerSecond: number;
    sentBytes: number;
  };
  target?: {
    link: string;
    error?: string;
    newestCheckpoint?: Checkpoint;
    checkpoints: number;
    appliedSeq: number;
    receivedBytes: number;
  };
}
export interface ResiliencyGroup {
  name: string;
  vms: string[];
  defined: boolean;
  description?: string;
  replication?: { role: string; peer: string; state?: string };
  services?: string[];
}
export interface BusinessService {
  name: string;
  tiers: string[][];
  bootDelaySeconds: number;
  createdAt: string;
}
export type PlanStep = { kind: string; target?: string; message?: string; path?: string; seconds?: number };
export interface Plan {
  name: string;
  steps: PlanStep[];
  createdAt: string;
}
export interface PlanRun {
  id: string;
  plan: string;
  steps: PlanStep[];
  nextStep: number;
  state: 'running' | 'waiting' | 'failed' | 'succeeded' | 'aborted';
  job?: string;
  error?: string;
  startedAt: string;
  updatedAt: string;
}
export interface Policy {
  name: string;
  requires: string[];
  snapshot?: { cron?: string; everySeconds?: number; keep?: unknown };
  backup?: { repo: string; cron?: string; everySeconds?: number; keep?: unknown };
  verify?: { cron?: string; everySeconds?: number };
  replication?: { to: string; rpoSeconds: number };
  [k: string]: unknown;
}
