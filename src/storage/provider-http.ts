import { HavenError, invalidArgument, isHavenErrorCode, type HavenErrorCode } from '../common/index.js';
import {
  speaksProviderApi,
  STORAGE_PROVIDER_API_VERSION,
  type CapabilitySet,
  type DataAccess,
  type ProviderDescription,
  type ProviderSnapshot,
  type ProviderVolume,
  type StorageProvider,
} from './provider.js';

/** How long one call to a provider may take before it fails with TIMEOUT. */
export const PROVIDER_CALL_TIMEOUT_MS = 15_000;

/**
 * The storage provider contract over HTTP (docs/provider-api.yaml): JSON requests to
 * `BASE/v1/...` with `Authorization: Bearer TOKEN`. Every answer is checked against the contract
 * before Haven believes it (a provider is another program: a wrong shape is PROTOCOL, naming the
 * call and the field). Errors the provider reports (`{ code, message }`) keep their code.
 *
 * The token is held in a private field, never in a message, a log line or JSON of this object.
 */
export class HttpProvider implements StorageProvider {
  readonly #token: string;
  readonly url: string;

  constructor(
    url: string,
    token: string,
    private readonly timeoutMs = PROVIDER_CALL_TIMEOUT_MS,
  ) {
    this.url = checkProviderUrl(url);
    if (!token.trim()) throw invalidArgument('the provider token is empty');
    if (/[\r\n]/.test(token.trim())) throw invalidArgument('the provider token must be one line');
    this.#token = token.trim();
  }

  toJSON(): { url: string } {
    return { url: this.url };
  }

  async describe(): Promise<ProviderDescription> {
    const d = obj(await this.call('GET', '/provider'), 'describe');
    if (!speaksProviderApi(d.apiVersion))
      throw new HavenError(
        'UNSUPPORTED',
        `the storage provider at ${this.url} speaks API version ${JSON.stringify(d.apiVersion ?? null)}; this Haven speaks ${STORAGE_PROVIDER_API_VERSION} (any 1.x)`,
      );
    const caps = obj(d.capabilities, 'describe: capabilities');
    const capabilities: CapabilitySet = {};
    for (const [k, v] of Object.entries(caps)) {
      if (v === false) continue;
      if (v !== true && typeof v !== 'string')
        throw this.bad('describe', `capability ${k} is ${JSON.stringify(v)}, not true or a string`);
      capabilities[k] = v;
    }
    const cap = obj(d.capacity, 'describe: capacity');
    const health = obj(d.health, 'describe: health');
    if (health.state !== 'ok' && health.state !== 'degraded' && health.state !== 'failed')
      throw this.bad(
        'describe',
        `health.state ${JSON.stringify(health.state)} is not ok, degraded or failed`,
      );
    return {
      apiVersion: d.apiVersion as string,
      ...(typeof d.vendor === 'string' ? { vendor: d.vendor } : {}),
      capabilities,
      capacity: {
        capacityBytes: this.bytes(cap.capacityBytes, 'describe: capacity.capacityBytes'),
        allocatedBytes: this.bytes(cap.allocatedBytes, 'describe: capacity.allocatedBytes'),
        freeBytes: this.bytes(cap.freeBytes, 'describe: capacity.freeBytes'),
      },
      health: {
        state: health.state,
        ...(typeof health.message === 'string' ? { message: health.message } : {}),
      },
    };
  }

  async listVolumes(): Promise<ProviderVolume[]> {
    return this.list(await this.call('GET', '/volumes'), 'list volumes').map((v) =>
      this.volume(v, 'list volumes'),
    );
  }

  async createVolume(name: string, sizeBytes: number): Promise<ProviderVolume> {
    return this.volume(await this.call('POST', '/volumes', { name, sizeBytes }), 'create volume');
  }

  async deleteVolume(name: string): Promise<void> {
    await this.call('DELETE', `/volumes/${enc(name)}`);
  }

  async resizeVolume(name: string, sizeBytes: number): Promise<ProviderVolume> {
    return this.volume(
      await this.call('POST', `/volumes/${enc(name)}/resize`, { sizeBytes }),
      'resize volume',
    );
  }

  async listSnapshots(volume: string): Promise<ProviderSnapshot[]> {
    return this.list(await this.call('GET', `/volumes/${enc(volume)}/snapshots`), 'list snapshots').map((s) =>
      this.snapshot(s, 'list snapshots'),
    );
  }

  async createSnapshot(volume: string, name: string): Promise<ProviderSnapshot> {
    return this.snapshot(
      await this.call('POST', `/volumes/${enc(volume)}/snapshots`, { name }),
      'create snapshot',
    );
  }

  async deleteSnapshot(volume: string, name: string): Promise<void> {
    await this.call('DELETE', `/volumes/${enc(volume)}/snapshots/${enc(name)}`);
  }

  async clone(volume: string, snapshot: string, name: string): Promise<ProviderVolume> {
    return this.volume(
      await this.call('POST', `/volumes/${enc(volume)}/snapshots/${enc(snapshot)}/clone`, { name }),
      'clone',
    );
  }

  async access(volume: string, opts: { snapshot?: string } = {}): Promise<DataAccess> {
    const a = obj(
      await this.call(
        'POST',
        `/volumes/${enc(volume)}/access`,
        opts.snapshot ? { snapshot: opts.snapshot } : {},
      ),
      'access',
    );
    if (typeof a.uri !== 'string' || !/^nbds?(\+unix)?:\/\//.test(a.uri))
      throw this.bad(
        'access',
        `uri ${JSON.stringify(a.uri)} is not an nbd://, nbds://, nbd+unix:// or nbds+unix:// URI`,
      );
    return { uri: a.uri, ...(typeof a.tlsCa === 'string' ? { tlsCa: a.tlsCa } : {}) };
  }

  // ---- the wire ----------------------------------------------------------------------------

  private async call(method: string, path: string, body?: unknown): Promise<unknown> {
    const what = `storage provider ${this.url}: ${method} /v1${path}`;
    let res: Response;
    try {
      res = await fetch(`${this.url}/v1${path}`, {
        method,
        headers: {
          authorization: `Bearer ${this.#token}`,
          accept: 'application/json',
          ...(body !== undefined ? { 'content-type': 'application/json' } : {}),
        },
        ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
        signal: AbortSignal.timeout(this.timeoutMs),
        redirect: 'error', // the token goes to the registered address only
      });
    } catch (err) {
      const e = err as { name?: string; cause?: { code?: string; message?: string }; message?: string };
      if (e.name === 'TimeoutError')
        throw new HavenError('TIMEOUT', `${what}: no answer within ${this.timeoutMs / 1000} s`);
      const why = e.cause?.code ?? e.cause?.message ?? e.message ?? String(err);
      throw new HavenError('IO', `${what}: cannot reach the provider (${why})`);
    }
    const text = await res.text();
    if (res.status === 401 || res.status === 403)
      throw new HavenError(
        'UNAUTHENTICATED',
        `${what}: the provider refused Haven's token (HTTP ${res.status}); check the token file`,
      );
    let json: unknown;
    try {
      json = text ? JSON.parse(text) : undefined;
    } catch {
      if (res.ok) throw new HavenError('PROTOCOL', `${what}: the answer is not JSON`);
    }
    if (!res.ok) {
      const e = (json ?? {}) as { code?: unknown; message?: unknown };
      const code: HavenErrorCode =
        typeof e.code === 'string' && isHavenErrorCode(e.code) && e.code !== 'UNAUTHENTICATED'
          ? e.code
          : res.status === 404
            ? 'NOT_FOUND'
            : res.status === 409
              ? 'CONFLICT'
              : res.status === 400
                ? 'INVALID_ARGUMENT'
                : res.status === 507
                  ? 'NO_SPACE'
                  : res.status === 501
                    ? 'UNSUPPORTED'
                    : 'IO';
      const msg = typeof e.message === 'string' ? e.message.slice(0, 500) : `HTTP ${res.status}`;
      throw new HavenError(code, `${what}: ${msg}`);
    }
    return json;
  }

  private bad(call: string, why: string): HavenError {
    return new HavenError('PROTOCOL', `storage provider ${this.url}: ${call}: ${why}`);
  }

  private bytes(v: unknown, what: string): number {
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0)
      throw this.bad(
        what.split(':')[0]!,
        `${what.split(': ')[1] ?? what} is ${JSON.stringify(v)}, not a number of bytes`,
      );
    return v;
  }

  private list(v: unknown, call: string): unknown[] {
    if (!Array.isArray(v)) throw this.bad(call, 'the answer is not a JSON array');
    return v;
  }

  private volume(v: unknown, call: string): ProviderVolume {
    const o = obj(v, call);
    if (typeof o.name !== 'string') throw this.bad(call, 'a volume has no name');
    return {
      name: o.name,
      sizeBytes: this.bytes(o.sizeBytes, `${call}: sizeBytes`),
      ...(typeof o.id === 'string' ? { id: o.id } : {}),
      ...(o.allocatedBytes !== undefined
        ? { allocatedBytes: this.bytes(o.allocatedBytes, `${call}: allocatedBytes`) }
        : {}),
      ...(typeof o.createdAt === 'string' ? { createdAt: o.createdAt } : {}),
      ...(typeof o.origin === 'string' ? { origin: o.origin } : {}),
    };
  }

  private snapshot(v: unknown, call: string): ProviderSnapshot {
    const o = obj(v, call);
    if (typeof o.name !== 'string' || typeof o.volume !== 'string')
      throw this.bad(call, 'a snapshot has no name or volume');
    return {
      name: o.name,
      volume: o.volume,
      sizeBytes: this.bytes(o.sizeBytes, `${call}: sizeBytes`),
      ...(typeof o.id === 'string' ? { id: o.id } : {}),
      ...(typeof o.createdAt === 'string' ? { createdAt: o.createdAt } : {}),
    };
  }
}

/** A provider's base URL: http(s), no credentials, no query; the trailing slash dropped. */
export function checkProviderUrl(url: string): string {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw invalidArgument(
      `provider URL "${url}" is not a URL (http://HOST:PORT or https://HOST:PORT[/PATH])`,
    );
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:')
    throw invalidArgument(`provider URL "${url}" must be http:// or https://`);
  if (u.username || u.password)
    throw invalidArgument(
      `provider URL "${url}" must not hold credentials (give the token with --token-file)`,
    );
  if (u.search || u.hash) throw invalidArgument(`provider URL "${url}" must not have a query or fragment`);
  return `${u.origin}${u.pathname}`.replace(/\/+$/, '');
}

function obj(v: unknown, call: string): Record<string, unknown> {
  if (typeof v !== 'object' || v === null || Array.isArray(v))
    throw new HavenError('PROTOCOL', `storage provider: ${call}: the answer is not a JSON object`);
  return v as Record<string, unknown>;
}

const enc = encodeURIComponent;
