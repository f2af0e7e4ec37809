import { readFileSync } from 'node:fs';
import { extname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { FastifyReply, FastifyRequest } from 'fastify';

/**
 * The web console's files (src/web/, built by scripts/build-console.mjs into dist/console/ at
 * install), served to anyone at `/`: they hold no data, and everything they show comes from the
 * API, which asks for credentials. A path that is not a file is the console's page (its own
 * router reads the path). Read once, kept in memory, with their gzip'd copies.
 */
const DIR = fileURLToPath(new URL('../../console/', import.meta.url));
const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.svg': 'image/svg+xml',
};
const HEADERS = {
  'content-security-policy':
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
};

interface File {
  body: Buffer;
  gzip?: Buffer;
  type: string;
}
const cache = new Map<string, File | null>();

function load(name: string): File | null {
  if (!/^[a-z0-9][a-z0-9._-]*$/i.test(name)) return null;
  let f = cache.get(name);
  if (f !== undefined) return f;
  try {
    const body = readFileSync(join(DIR, name));
    let gzip: Buffer | undefined;
    try {
      gzip = readFileSync(join(DIR, `${name}.gz`));
    } catch {
      // not compressed: sent as it is
    }
    f = { body, type: TYPES[extname(name)] ?? 'application/octet-stream', ...(gzip ? { gzip } : {}) };
  } catch {
    f = null;
  }
  cache.set(name, f);
  return f;
}

/** Answers a GET or HEAD outside /api with a console file; false when the console is not built. */
export function sendConsoleFile(req: FastifyRequest, reply: FastifyReply): boolean {
  const path = req.url.split('?')[0]!;
  const asked = path.startsWith('/assets/') ? path.slice('/assets/'.length) : undefined;
  const file = asked !== undefined ? load(asked) : load('index.html');
  if (!file) return false;
  const gz = file.gzip && /\bgzip\b/.test(String(req.headers['accept-encoding'] ?? ''));
  void reply
    .code(200)
    .headers({
      ...HEADERS,
      'content-type': file.type,
      // index.html names its assets with their content hash: those never change, the page does.
      'cache-control': asked !== undefined ? 'public, max-age=31536000, immutable' : 'no-cache',
      vary: 'accept-encoding',
      ...(gz ? { 'content-encoding': 'gzip' } : {}),
    })
    .send(gz ? file.gzip : file.body);
  return true;
}
