import { execFile } from 'node:child_process';
import { X509Certificate, createPrivateKey } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, renameSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { HavenError, invalidArgument, syncDirectory } from '../../common/index.js';

const run = promisify(execFile);

/** A site's identity: its own key and self-signed certificate, pinned by its peers at pairing. */
export interface SiteIdentity {
  certificate: string;
  key: string;
  /** SHA-256 of the certificate's DER, as `openssl x509 -fingerprint -sha256` prints it (AB:CD:…). */
  fingerprint: string;
  certFile: string;
  keyFile: string;
}

/** A hundred years: the certificate is pinned, not checked against a clock a site outlives. */
const VALIDITY_DAYS = 36500;

/**
 * The identity in DATA/identity/ (cert.pem, key.pem 0600), made at the first start: an EC P-256
 * key and a certificate for CN=haven-site-NAME signed by itself. Made in a scratch directory and
 * renamed into place, so a crash leaves either none or a whole one.
 */
export async function siteIdentity(dataDir: string, site: string): Promise<SiteIdentity> {
  const dir = join(dataDir, 'identity');
  const certFile = join(dir, 'cert.pem');
  const keyFile = join(dir, 'key.pem');
  if (!existsSync(certFile)) {
    const scratch = mkdtempSync(join(dataDir, '.identity-'));
    try {
      await run(
        'openssl',
        [
          'req',
          '-x509',
          '-newkey',
          'ec',
          '-pkeyopt',
          'ec_paramgen_curve:prime256v1',
          '-nodes',
          '-days',
          String(VALIDITY_DAYS),
          '-subj',
          `/CN=haven-site-${site}`,
          '-keyout',
          join(scratch, 'key.pem'),
          '-out',
          join(scratch, 'cert.pem'),
        ],
        { timeout: 30_000 },
      ).catch((err: Error & { stderr?: string }) => {
        throw new HavenError(
          'INTERNAL',
          `cannot make the identity of site ${site} with openssl: ${err.stderr?.trim() || err.message}`,
        );
      });
      rmSync(dir, { recursive: true, force: true }); // a half-made one (no cert.pem)
      renameSync(scratch, dir); // mkdtemp made it 0700; openssl writes the key 0600
      syncDirectory(dataDir);
    } finally {
      rmSync(scratch, { recursive: true, force: true });
    }
  }
  const certificate = readFileSync(certFile, 'utf8');
  const key = readFileSync(keyFile, 'utf8');
  const cert = parseCertificate(certificate, `the certificate of site ${site} (${certFile})`);
  if (!cert.checkPrivateKey(createPrivateKey(key)))
    throw new HavenError(
      'CORRUPT',
      `${keyFile} is not the key of ${certFile}: restore the pair from a backup`,
    );
  return { certificate, key, fingerprint: cert.fingerprint256, certFile, keyFile };
}

/** A PEM certificate, or a clear error naming `what`. */
export function parseCertificate(pem: string, what: string): X509Certificate {
  try {
    return new X509Certificate(pem);
  } catch (err) {
    throw invalidArgument(`${what} is not a PEM X.509 certificate: ${(err as Error).message}`);
  }
}

export function fingerprintOf(pem: string, what: string): string {
  return parseCertificate(pem, what).fingerprint256;
}
