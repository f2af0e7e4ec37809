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
