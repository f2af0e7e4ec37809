import { readFileSync } from 'node:fs';
import { DEFAULT_CIPHERS } from 'node:tls';
import { invalidArgument } from '../common/index.js';

// TLS-PSK as QEMU (tls-creds-psk), libnbd (tls-psk-file) and GnuTLS psktool have it: a file of
// `identity:hex-key` lines; shared by Haven's NBD server and client.

/**
 * With a PSK: SHA-256 TLS 1.3 suites first (OpenSSL binds an external PSK to SHA-256 and
 * ignores it under a SHA-384 suite, falling back to certificates), and for TLS 1.2 the PSK suites
 * before the certificate ones (a client that offers no PSK suite still gets the latter).
 */
export const PSK_CIPHERS = [
  'TLS_AES_128_GCM_SHA256',
  'TLS_CHACHA20_POLY1305_SHA256',
  'TLS_AES_256_GCM_SHA384',
  'ECDHE-PSK-CHACHA20-POLY1305',
  'ECDHE-PSK-AES256-CBC-SHA384',
  // Node's defaults end in "!PSK", which would strike the PSK suites wherever they stand; keep
  // out only those without forward secrecy (plain and RSA key exchange).
  ...DEFAULT_CIPHERS.split(':').filter((c) => c !== '!PSK'),
  '!kPSK',
  '!kRSAPSK',
].join(':');

/** Reads `identity:hex-key` lines (blank lines and # comments are skipped). */
export function readPskFile(path: string): Map<string, Buffer> {
  const keys = new Map<string, Buffer>();
  const lines = readFileSync(path, 'utf8').split('\n');
  lines.forEach((line, i) => {
    const l = line.trim();
    if (!l || l.startsWith('#')) return;
    const m = /^([^:]+):([0-9a-fA-F]+)$/.exec(l);
    if (!m || m[2]!.length % 2 || m[2]!.length < 32)
      throw invalidArgument(
        `PSK file ${path} line ${i + 1} is not "identity:hex-key" with a key of at least 16 bytes`,
      );
    keys.set(m[1]!, Buffer.from(m[2]!, 'hex'));
  });
  if (keys.size === 0) throw invalidArgument(`PSK file ${path} holds no key`);
  return keys;
}
