import { randomBytes } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { fromSystemError, writeFileAtomic, type Logger } from '../common/index.js';
import { readPskFile } from '../nbd/index.js';

/** The PSK identity of the site's own key (libnbd: the user of an nbds:// URI; QEMU: username=). */
export const PSK_IDENTITY = 'haven';

export interface SitePsk {
  /** `DATA/nbd-tls/keys.psk`: the name QEMU's tls-creds-psk looks for in its `dir`. */
  file: string;
  identity: string;
  key: Buffer;
}

/**
 * The key NBD clients of the site's TCP listener authenticate with, made at the first start:
 * 32 random bytes as `haven:HEX` in a file only the site's user can read (0600 in a 0700
 * directory), in the format of GnuTLS psktool that QEMU and libnbd read.
 */
export function sitePsk(dataDir: string, log: Logger): SitePsk {
  const dir = join(dataDir, 'nbd-tls');
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  makePrivate(dir, 0o700, log);
  const file = join(dir, 'keys.psk');
  if (!existsSync(file)) writeFileAtomic(file, `${PSK_IDENTITY}:${randomBytes(32).toString('hex')}\n`);
  makePrivate(file, 0o600, log);
  const key = readPskFile(file).get(PSK_IDENTITY);
  if (!key) throw new Error(`${file} has no key for identity ${PSK_IDENTITY}: delete it to make a new one`);
  return { file, identity: PSK_IDENTITY, key };
}

/** Takes away group and other access from a path of the site's (they must not read disks or keys). */
export function makePrivate(path: string, mode: 0o700 | 0o600, log: Logger): void {
  const was = statSync(path).mode & 0o777;
  if ((was & 0o077) === 0) return;
  try {
    chmodSync(path, mode);
  } catch (err) {
    throw fromSystemError(
      err,
      `${path} is open to other users (mode ${was.toString(8)}) and cannot be made ${mode.toString(8)}: make it private, or use a data directory the site's user owns`,
    );
  }
  log.warn(
    { path, was: was.toString(8), now: mode.toString(8) },
    `${path} was open to other users (mode ${was.toString(8)}); made it ${mode.toString(8)}`,
  );
}
