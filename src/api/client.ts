import { request as httpRequest, type IncomingMessage } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { HavenError, isHavenErrorCode, type HavenErrorCode } from '../common/index.js';

/** Every path of the site API starts here. */
export const API_PREFIX = '/api/v1';

/** Where a site's API is and how to prove who we are. */
export interface ApiEndpoint {
  /** http(s)://host:port */
  url: string;
  token: string;
  /** PEM of the CA that signed an https API's certificate (default: the system's). */
  ca?: string;
  /** A unix socket to send the requests over instead of `url`'s host and port (a site in this process). */
  socketPath?: string;
}

/** A client of a site's REST API: JSON in and out, errors as HavenError with the server's code. */
export class ApiClient {
  constructor(readonly endpoint: ApiEndpoint) {}

  get<T>(path: string): Promise<T> {
    return this.call<T>('GET', path);
  }
  post<T>(path: string, body: unknown = {}): Promise<T> {
    return this.call<T>('POST', path, body);
  }
  put<T>(path: string, body: unknown = {}): Promise<T> {
    return this.call<T>('PUT', path, body);
  }
  delete(path: string): Promise<void> {
    return this.call<void>('DELETE', path);
  }

  async text(path: string): Promise<string> {
    const res = await this.send('GET', path);
    const body = await readAll(res);
    if (res.statusCode !== 200) throw toError(res.statusCode ?? 0, body, path);
    return body;
  }

  async call<T>(method: string, path: string, body?: unknown): Promise<T> {
    const res = await this.send(method, path, body);
    const text = await readAll(res);
    const status = res.statusCode ?? 0;
    if (status >= 400) throw toError(status, text, path);
    return (text ? JSON.parse(text) : undefined) as T;
  }

  /**
   * Follows a server-sent event stream (a job's progress): `onEvent` gets each event's data,
   * parsed. Resolves when the server ends the stream.
   */
  async stream(path: string, onEvent: (data: unknown) => void): Promise<void> {
    const res = await this.send('GET', path, undefined, { accept: 'text/event-stream' });
    if ((res.statusCode ?? 0) >= 400) throw toError(res.statusCode ?? 0, await readAll(res), path);
    res.setEncoding('utf8');
    let buf = '';
    for await (const chunk of res as AsyncIterable<string>) {
      buf += chunk;
      let end: number;
      while ((end = buf.indexOf('\n\n')) >= 0) {
        const block = buf.slice(0, end);
        buf = buf.slice(end + 2);
        const data = block
          .split('\n')
          .filter((l) => l.startsWith('data:'))
          .map((l) => l.slice(5).trimStart())
          .join('\n');
        if (data) onEvent(JSON.parse(data));
      }
    }
  }

  private send(
    method: string,
    path: string,
    body?: unknown,
    headers: Record<string, string> = {},
  ): Promise<IncomingMessage> {
    const url = new URL(API_PREFIX + path, this.endpoint.url);
    const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    const request = url.protocol === 'https:' ? httpsRequest : httpRequest;
    return new Promise((resolve, reject) => {
      const req = request(
        url,
        {
          method,
          headers: {
            authorization: `Bearer ${this.endpoint.token}`,
            ...(payload ? { 'content-type': 'application/json', 'content-length': payload.length } : {}),
            ...headers,
          },
          ...(this.endpoint.ca ? { ca: this.endpoint.ca } : {}),
          // A connection per request: nothing to race against an idle socket the server is closing.
          ...(this.endpoint.socketPath ? { socketPath: this.endpoint.socketPath, agent: false } : {}),
        },
        resolve,
      );
      req.on('error', (err) =>
        reject(
          new HavenError('IO', `cannot reach the Haven site API at ${this.endpoint.url}: ${err.message}`),
        ),
      );
      req.end(payload);
    });
  }
}

async function readAll(res: IncomingMessage): Promise<string> {
  const parts: Buffer[] = [];
  for await (const c of res as AsyncIterable<Buffer>) parts.push(c);
  return Buffer.concat(parts).toString('utf8');
}

function toError(status: number, text: string, path: string): HavenError {
  try {
    const e = (JSON.parse(text) as { error?: { code?: string; message?: string } }).error;
    if (e?.message) {
      const code: HavenErrorCode = e.code && isHavenErrorCode(e.code) ? e.code : 'INTERNAL';
      return new HavenError(code, e.message);
    }
  } catch {
    // not JSON: fall through
  }
  return new HavenError('INTERNAL', `${path}: HTTP ${status} ${text.slice(0, 200)}`);
}
