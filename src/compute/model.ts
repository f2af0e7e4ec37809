/** What a VM is made of; the QEMU driver turns it into a command line. */
export interface VmSpec {
  /** Stable identifier (also QEMU's -name, so a restarted daemon can recognise the process). */
  id: string;
  name: string;
  cpus: number;
  memoryMiB: number;
  /** In order: the first is /dev/vda in a Linux guest. */
  disks: DiskSpec[];
  nics: NicSpec[];
  boot: BootSpec;
  /** A virtio-serial channel for the QEMU guest agent (default true). */
  guestAgent?: boolean;
  /** An ISO image attached read-only as a CD-ROM: the NoCloud seed of a recovered VM (nocloud.ts). */
  seed?: string;
}

export interface DiskSpec {
  /** An NBD URI (nbd://host:port/export, nbd+unix:///export?socket=PATH) or a raw image file. */
  source: string;
  readOnly?: boolean;
}

export type NicSpec = (
  { network: { kind: 'user' } } | { network: { kind: 'isolated'; name: string; group: string; port: number } }
) & { mac?: string };

export type BootSpec =
  { kind: 'disk' } | { kind: 'kernel'; kernel: string; initrd?: string; cmdline?: string };

export type VmState = 'defined' | 'starting' | 'running' | 'paused' | 'stopping' | 'stopped' | 'crashed';

export interface VmExit {
  /** The guest or Haven asked for the stop (a guest poweroff, system_powerdown, quit). */
  clean: boolean;
  /** QEMU went away without anyone asking (killed, crashed). */
  crashed: boolean;
  reason: string;
}
