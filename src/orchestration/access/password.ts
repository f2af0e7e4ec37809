import { randomBytes, scrypt, timingSafeEqual, type ScryptOptions } from 'node:crypto';
import { invalidArgument } from '../../common/index.js';

/**
 * Password hashes: scrypt (memory-hard, in node:crypto, run on libuv's thread pool so the event
 * loop goes on), a random salt per hash, and the parameters stored with it, so that they can be
 * raised later without invalidating the hashes already stored:
 *
 *   scrypt$<log2 N>$<r>$<p>$<salt, base64>$<hash, base64>
 */
export interface ScryptParams {
  /** log2 of the CPU/memory cost N. */
  logN: number;
  r: number;
  p: number;
}

/** N = 2^15, r = 8: 32 MiB and some 50-100 ms per hash on a server core. */
export const DEFAULT_PARAMS: ScryptParams = { logN: 15, r: 8, p: 1 };
const KEY_BYTES = 32;
const SALT_BYTES = 16;
export const MIN_PASSWORD = 8;
const MAX_PASSWORD = 1024;

/** A clear error for a password too short or too long (its text never appears in it). */
export function checkPassword(password: string): void {
  if (password.length < MIN_PASSWORD)
    throw invalidArgument(`the password is too short: give at least ${MIN_PASSWORD} characters`);
  if (password.length > MAX_PASSWORD)
    throw invalidArgument(`the password is too long: at most ${MAX_PASSWORD} characters`);
}

export async function hashPassword(password: string, params = DEFAULT_PARAMS): Promise<string> {
  const salt = randomBytes(SALT_BYTES);
  const key = await derive(password, salt, params);
  return ['scrypt', params.logN, params.r, params.p, salt.toString('base64'), key.toString('base64')].join(
    '$',
  );
}

/** Whether `password` is the one `stored` was made from (false for a malformed `stored`). */
export async function verifyPassword(password: string, stored: string): Promise<boolean> {
  const parts = stored.split('$');
  if (parts.length !== 6 || parts[0] !== 'scrypt') return false;
  const [logN, r, p] = parts.slice(1, 4).map(Number) as [number, number, number];
  if (![logN, r, p].every((n) => Number.isInteger(n) && n > 0) || logN > 22) return false;
  const expected = Buffer.from(parts[5]!, 'base64');
  const key = await derive(password, Buffer.from(parts[4]!, 'base64'), { logN, r, p }, expected.length);
  return key.length === expected.length && timingSafeEqual(key, expected);
}

/** A hash of nothing anyone knows: verifying against it costs what a real check costs. */
let decoy: Promise<string> | undefined;
export function decoyHash(): Promise<string> {
  return (decoy ??= hashPassword(randomBytes(16).toString('base64')));
}

function derive(password: string, salt: Buffer, params: ScryptParams, bytes = KEY_BYTES): Promise<Buffer> {
  const N = 2 ** params.logN;
  const options: ScryptOptions = { N, r: params.r, p: params.p, maxmem: 256 * N * params.r + 1024 * 1024 };
  return new Promise((resolve, reject) =>
    scrypt(password.normalize('NFC'), salt, bytes, options, (err, key) => (err ? reject(err) : resolve(key))),
  );
}
