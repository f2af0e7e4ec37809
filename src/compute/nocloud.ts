import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { HavenError, invalidArgument } from '../common/index.js';

const run = promisify(execFile);

/**
 * What a VM's guest gets at the recovery site through cloud-init's NoCloud data source: its host
 * name and, per NIC (by position), static addresses. For guests that use cloud-init; scripts of
 * a plan can do the rest for the others.
 */
export interface RecoverySettings {
  hostname?: string;
  nics?: { address?: string; gateway?: string; dns?: string[] }[];
}

/** Whether there is anything to give the guest (no host name and no NIC: boot it as it is). */
export function hasRecoverySettings(s: RecoverySettings | undefined): s is RecoverySettings {
  return !!s && (!!s.hostname || !!s.nics?.length);
}

const HOSTNAME =
  /^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$/;

/** "10.2.0.5/24" or "fd00::5/64": an address with its prefix length. */
function checkCidr(what: string, s: unknown): string {
  if (typeof s !== 'string') throw invalidArgument(`${what} is not an address`);
  const [addr, prefix, extra] = s.split('/');
  const family = isIP(addr ?? '');
  const bits = Number(prefix);
  if (!family || extra !== undefined || !/^\d{1,3}$/.test(prefix ?? '') || bits > (family === 4 ? 32 : 128))
    throw invalidArgument(`${what} ${s} is not an address with a prefix length (e.g. 10.2.0.5/24)`);
  return s;
}

function checkIp(what: string, s: unknown): string {
  if (typeof s !== 'string' || !isIP(s)) throw invalidArgument(`${what} ${String(s)} is not an IP address`);
  return s;
}

/** Settings from the API or a peer, checked against the VM's NIC count; what is wrong is named. */
export function checkRecoverySettings(vm: string, raw: unknown, nicCount: number): RecoverySettings {
  const r = raw as RecoverySettings | null;
  if (!r || typeof r !== 'object' || Array.isArray(r))
    throw invalidArgument(`VM ${vm}: recovery settings are not an object`);
  const out: RecoverySettings = {};
  if (r.hostname !== undefined) {
    if (typeof r.hostname !== 'string' || !HOSTNAME.test(r.hostname))
      throw invalidArgument(`VM ${vm}: hostname ${String(r.hostname)} is not a host name`);
    out.hostname = r.hostname;
  }
  if (r.nics !== undefined) {
    if (!Array.isArray(r.nics)) throw invalidArgument(`VM ${vm}: nics is not a list`);
    if (r.nics.length > nicCount)
      throw invalidArgument(`VM ${vm} has ${nicCount} NIC(s): no settings for NIC ${nicCount}`);
    out.nics = r.nics.map((n, i) => {
      const what = `VM ${vm} NIC ${i}`;
      if (!n || typeof n !== 'object') throw invalidArgument(`${what}: not an object`);
      return {
        ...(n.address !== undefined ? { address: checkCidr(`${what}: address`, n.address) } : {}),
        ...(n.gateway !== undefined ? { gateway: checkIp(`${what}: gateway`, n.gateway) } : {}),
        ...(n.dns !== undefined
          ? {
              dns: (Array.isArray(n.dns) ? n.dns : [n.dns]).map((d) => checkIp(`${what}: DNS server`, d)),
            }
          : {}),
      };
    });
  }
  return out;
}

/** A NIC's MAC address, the same wherever the VM runs, so that the seed's network config matches it. */
export function nicMac(vmName: string, nic: number): string {
  const h = createHash('sha256').update(`${vmName}\0${nic}`).digest();
  // 52:54:00 is QEMU's locally administered prefix.
  return ['52', '54', '00', ...[h[0]!, h[1]!, h[2]!].map((b) => b.toString(16).padStart(2, '0'))].join(':');
}

/** The three files of a NoCloud seed. Written as JSON, which YAML parsers read: nothing to escape. */
export function seedFiles(
  vmName: string,
  instance: string,
  settings: RecoverySettings,
  macs: string[],
): { 'meta-data': string; 'user-data': string; 'network-config': string } {
  const ethernets: Record<string, unknown> = {};
  (settings.nics ?? []).forEach((n, i) => {
    if (!n.address && !n.gateway && !n.dns) return;
    ethernets[`nic${i}`] = {
      match: { macaddress: macs[i] },
      ...(n.address ? { addresses: [n.address] } : { dhcp4: true }),
      ...(n.gateway
        ? { routes: [{ to: n.gateway.includes(':') ? '::/0' : '0.0.0.0/0', via: n.gateway }] }
        : {}),
      ...(n.dns ? { nameservers: { addresses: n.dns } } : {}),
    };
  });
  return {
    'meta-data': `${JSON.stringify({ 'instance-id': instance, 'local-hostname': settings.hostname ?? vmName }, null, 2)}\n`,
    'user-data': '#cloud-config\n{}\n',
    'network-config': `${JSON.stringify({ version: 2, ethernets }, null, 2)}\n`,
  };
}

/**
 * Writes the seed as an ISO 9660 image labelled "cidata" (what cloud-init's NoCloud looks for),
 * with genisoimage as cloud-localds does; returns its path. Made aside and renamed into place.
 */
export async function writeSeed(
  dir: string,
  vmName: string,
  instance: string,
  settings: RecoverySettings,
  macs: string[],
): Promise<string> {
  const work = join(dir, `.${vmName}.seed`);
  rmSync(work, { recursive: true, force: true });
  mkdirSync(work, { recursive: true });
  try {
    const files = seedFiles(vmName, instance, settings, macs);
    for (const [name, body] of Object.entries(files)) writeFileSync(join(work, name), body, { mode: 0o644 });
    const iso = join(dir, `${vmName}.seed.iso`);
    const tmp = `${iso}.tmp`;
    await run(
      'genisoimage',
      [
        '-quiet',
        '-output',
        tmp,
        '-volid',
        'cidata',
        '-joliet',
        '-rock',
        ...Object.keys(files).map((f) => join(work, f)),
      ],
      { timeout: 30_000 },
    ).catch((err: { stderr?: string; message: string }) => {
      throw new HavenError(
        'IO',
        `the NoCloud seed of VM ${vmName} could not be written: ${err.stderr?.trim() || err.message}`,
      );
    });
    renameSync(tmp, iso);
    return iso;
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}
