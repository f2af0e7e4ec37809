// What an s3:// repository address means and where its settings come from, apart from the S3
// backend itself (s3-backend.ts), so that only a process that opens an S3 repository loads the
// AWS SDK (about 130 ms of start-up).
import { readFileSync } from 'node:fs';
import { HavenError, errorMessage } from '../common/errors.js';
import type { RepositoryBackend } from './backend.js';

export interface S3Location {
  bucket: string;
  /** The folder of the repository in the bucket, '' or ending in "/". */
  prefix: string;
}

export interface S3Settings extends S3Location {
  endpoint: string;
  region: string;
  accessKeyId: string;
  secretAccessKey: string;
  /** Per request, ms (default 30 s); connecting, ms (default 5 s). */
  requestTimeoutMs?: number;
  connectTimeoutMs?: number;
  /** Attempts per request, the first included (default 4). */
  maxAttempts?: number;
}

/** Object Lock retention put on every object of a snapshot (chunks, index, manifest). */
export interface Retention {
  mode: 'COMPLIANCE' | 'GOVERNANCE';
  days: number;
}

export const isS3Url = (s: string) => s.startsWith('s3://');

export function parseS3Url(url: string): S3Location {
  const m = /^s3:\/\/([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(?:\/(.*))?$/.exec(url);
  if (!m)
    throw new HavenError('INVALID_ARGUMENT', `${url} is not an S3 repository address (s3://BUCKET/PREFIX)`);
  const p = (m[2] ?? '').replace(/\/+$/, '');
  if (p.split('/').some((x) => x === '..')) throw new HavenError('INVALID_ARGUMENT', `${url}: bad prefix`);
  return { bucket: m[1]!, prefix: p ? `${p}/` : '' };
}

/**
 * The settings for an s3:// repository: the endpoint given, else HAVEN_S3_ENDPOINT; credentials
 * from the file HAVEN_S3_CREDENTIALS (KEY=VALUE lines: S3_ENDPOINT, S3_ACCESS_KEY_ID,
 * S3_SECRET_ACCESS_KEY, S3_REGION — the form scripts/ceph writes), else the environment
 * (HAVEN_S3_* or AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION). Secrets are never logged.
 */
export function s3Settings(url: string, opts: { endpoint?: string } = {}): S3Settings {
  const env = process.env;
  let file: Record<string, string> = {};
  if (env.HAVEN_S3_CREDENTIALS) {
    try {
      file = Object.fromEntries(
        readFileSync(env.HAVEN_S3_CREDENTIALS, 'utf8')
          .split('\n')
          .filter((l) => l.includes('=') && !l.startsWith('#'))
          .map((l) => [l.slice(0, l.indexOf('=')).trim(), l.slice(l.indexOf('=') + 1).trim()]),
      );
    } catch (err) {
      throw new HavenError(
        'INVALID_ARGUMENT',
        `cannot read the S3 credentials file ${env.HAVEN_S3_CREDENTIALS} (HAVEN_S3_CREDENTIALS): ${errorMessage(err)}`,
      );
    }
  }
  const pick = (...names: string[]) => {
    for (const n of names) {
      const v = file[n] ?? env[`HAVEN_${n}`] ?? undefined;
      if (v) return v;
    }
    return undefined;
  };
  const endpoint = opts.endpoint ?? pick('S3_ENDPOINT') ?? env.AWS_ENDPOINT_URL;
  const accessKeyId = pick('S3_ACCESS_KEY_ID') ?? env.AWS_ACCESS_KEY_ID;
  const secretAccessKey = pick('S3_SECRET_ACCESS_KEY') ?? env.AWS_SECRET_ACCESS_KEY;
  const region = pick('S3_REGION') ?? env.AWS_REGION ?? 'us-east-1';
  if (!endpoint)
    throw new HavenError(
      'INVALID_ARGUMENT',
      `repository ${url}: no S3 endpoint (give --endpoint, or HAVEN_S3_ENDPOINT, or S3_ENDPOINT in the HAVEN_S3_CREDENTIALS file)`,
    );
  if (!/^https?:\/\/[^/]+/.test(endpoint))
    throw new HavenError('INVALID_ARGUMENT', `S3 endpoint ${endpoint} is not an http:// or https:// URL`);
  if (!accessKeyId || !secretAccessKey)
    throw new HavenError(
      'UNAUTHENTICATED',
      `repository ${url}: no S3 credentials (HAVEN_S3_CREDENTIALS file, or HAVEN_S3_ACCESS_KEY_ID and HAVEN_S3_SECRET_ACCESS_KEY, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)`,
    );
  return { ...parseS3Url(url), endpoint, region, accessKeyId, secretAccessKey };
}

/** A backend that keeps snapshot objects under S3 Object Lock (S3Backend). */
export interface RetainingBackend extends RepositoryBackend {
  retention: Retention | undefined;
  /** Makes sure each object in `keys` is retained until at least `untilMs`; how many were extended. */
  extendRetention(keys: Iterable<string>, untilMs: number): Promise<number>;
  close(): void;
}

export const isRetaining = (b: RepositoryBackend): b is RetainingBackend =>
  typeof (b as Partial<RetainingBackend>).extendRetention === 'function';
