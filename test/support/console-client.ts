/**
 * A client of a site's REST API as a browser (a console session: its cookie and CSRF token) or
 * a script (a bearer token) would be: real HTTP, every answer's status, body and headers.
 */
export interface Answer {
  status: number;
  body: unknown;
  headers: Headers;
}

export interface Caller {
  (method: string, path: string, body?: unknown, headers?: Record<string, string>): Promise<Answer>;
}

export const errorOf = (a: Answer) => (a.body as { error: { code: string; message: string } }).error;

/** Calls with these headers (a bearer token, a cookie, none). */
export function caller(url: string, base: Record<string, string> = {}): Caller {
  return async (method, path, body, headers = {}) => {
    const res = await fetch(`${url}/api/v1${path}`, {
      method,
      headers: {
        ...base,
        ...(body !== undefined ? { 'content-type': 'application/json' } : {}),
        ...headers,
      },
      ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
    });
    // A stream (server-sent events) does not end: its status and headers are the answer.
    if (res.headers.get('content-type')?.startsWith('text/event-stream')) {
      await res.body?.cancel();
      return { status: res.status, body: '', headers: res.headers };
    }
    const text = await res.text();
    let parsed: unknown = text;
    try {
      parsed = JSON.parse(text);
    } catch {
      // text answers (metrics, console log) stay text
    }
    return { status: res.status, body: parsed, headers: res.headers };
  };
}

export const bearer = (url: string, token: string) => caller(url, { authorization: `Bearer ${token}` });

export interface ConsoleSession {
  /** Calls with the session's cookie and, on methods but GET/HEAD/OPTIONS, its CSRF token. */
  call: Caller;
  /** Calls with the cookie only. */
  cookieOnly: Caller;
  cookie: string;
  csrfToken: string;
  role: string;
  /** The Set-Cookie header the sign-in answered. */
  setCookie: string;
}

/** Signs in as `user` and gives a session's callers; throws with the answer when refused. */
export async function signIn(url: string, user: string, password: string): Promise<ConsoleSession> {
  const a = await caller(url)('POST', '/session', { user, password });
  if (a.status !== 200) throw new Error(`sign-in as ${user}: ${a.status} ${JSON.stringify(a.body)}`);
  const setCookie = a.headers.get('set-cookie') ?? '';
  const cookie = setCookie.split(';')[0]!;
  const { csrfToken, role } = a.body as { csrfToken: string; role: string };
  const cookieOnly = caller(url, { cookie });
  const call: Caller = (method, path, body, headers = {}) =>
    cookieOnly(method, path, body, {
      ...(['GET', 'HEAD', 'OPTIONS'].includes(method) ? {} : { 'x-csrf-token': csrfToken }),
      ...headers,
    });
  return { call, cookieOnly, cookie, csrfToken, role, setCookie };
}
