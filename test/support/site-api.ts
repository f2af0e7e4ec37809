import { readFileSync } from 'node:fs';
import { join } from 'node:path';

/**
 * One call to the REST API of the site daemon whose data directory is `dataDir` (its address and
 * token from the files the daemon writes there): the answer as JSON, or an error naming the call,
 * `where` (e.g. " at site a"), the status and the server's message.
 */
export async function siteApi<T>(
  dataDir: string,
  method: string,
  path: string,
  body?: unknown,
  where = '',
): Promise<T> {
  const { url } = JSON.parse(readFileSync(join(dataDir, 'api.json'), 'utf8')) as { url: string };
  const token = readFileSync(join(dataDir, 'api-token'), 'utf8').trim();
  const res = await fetch(`${url}/api/v1${path}`, {
    method,
    headers: {
      authorization: `Bearer ${token}`,
      ...(body !== undefined ? { 'content-type': 'application/json' } : {}),
    },
    ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
  });
  const text = await res.text();
  if (res.status >= 400) throw new Error(`${method} ${path}${where}: ${res.status} ${text}`);
  return (text ? JSON.parse(text) : undefined) as T;
}
