import { TRANSPORTS } from '../orchestration/index.js';

/**
 * JSON Schemas of the API's bodies and answers: fastify validates requests with them (unknown
 * fields are refused, never dropped) and the OpenAPI document is made from them.
 */

export const name = {
  type: 'string',
  pattern: '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$',
  description: "1-64 letters, digits, '.', '_' or '-', starting with a letter or digit",
} as const;

const sizeBytes = { type: 'integer', minimum: 1, description: 'bytes' } as const;

export const nameParam = {
  type: 'object',
  required: ['name'],
  properties: { name: { type: 'string' } },
} as const;

export const errorAnswer = {
  type: 'object',
  required: ['error'],
  properties: {
    error: {
      type: 'object',
      required: ['code', 'message'],
      properties: {
        code: { type: 'string', description: 'stable code: INVALID_ARGUMENT, NOT_FOUND, CONFLICT, …' },
        message: { type: 'string' },
        field: { type: 'string', description: 'for 400s: the request field at fault' },
      },
    },
  },
} as const;

export const open = (description: string, properties: Record<string, unknown> = {}) =>
  ({ type: 'object', description, additionalProperties: true, properties }) as const;

export const poolAnswer = open('a storage pool', {
  name: { type: 'string' },
  path: { type: 'string' },
  capacityBytes: { type: 'integer' },
  allocatedBytes: { type: 'integer' },
  freeBytes: { type: 'integer' },
});
export const volumeAnswer = open('a volume', {
  name: { type: 'string' },
  pool: { type: 'string' },
  size: { type: 'integer' },
  allocatedBytes: { type: 'integer' },
});
export const snapshotAnswer = open('a snapshot of a volume', {
  name: { type: 'string' },
  volume: { type: 'string' },
});
export const jobAnswer = open('a job: a long operation with progress, log and result', {
  id: { type: 'string' },
  kind: { type: 'string' },
  target: { type: 'string' },
  state: { type: 'string', enum: ['running', 'succeeded', 'failed', 'cancelled'] },
  progress: open('bytes done and total, rate and ETA'),
  error: { type: 'string' },
  errorCode: {
    type: 'string',
    description:
      'with error: a stable code (CONFLICT, NOT_FOUND, INVALID_ARGUMENT, …; INTERNAL for a fault of Haven)',
  },
});
export const vmAnswer = open('a virtual machine', {
  id: { type: 'string' },
  name: { type: 'string' },
  state: { type: 'string', enum: ['defined', 'starting', 'running', 'stopping', 'stopped', 'crashed'] },
});
export const hostAnswer = open('a host that runs VMs');
export const networkAnswer = open('a network NICs attach to');
export const eventAnswer = open('an entry of the event and audit log');
export const siteAnswer = open('the site');

export const list = (item: unknown) => ({ type: 'array', items: item }) as const;

// ---- bodies -----------------------------------------------------------------------------------

const capabilities = {
  type: 'array',
  items: { type: 'string', minLength: 1 },
  description: 'capabilities the operator declares for the pool: NAME or NAME=VALUE (tier=gold, replication)',
} as const;

export const createPoolBody = {
  type: 'object',
  additionalProperties: false,
  required: ['name'],
  properties: {
    name,
    path: { type: 'string', minLength: 1, description: 'directory (default: inside the data directory)' },
    tier: { type: 'string', minLength: 1 },
    capacityBytes: sizeBytes,
    capabilities,
    type: {
      type: 'string',
      enum: ['file', 'rbd'],
      description: 'file (default): volumes in files; rbd: volumes are RBD images in a Ceph pool',
    },
    cephConf: {
      type: 'string',
      minLength: 1,
      description: "rbd: the cluster's ceph.conf, readable by the daemon",
    },
    cephPool: { type: 'string', minLength: 1, description: 'rbd: the Ceph pool holding the images' },
    imagePrefix: {
      type: 'string',
      pattern: '^[A-Za-z0-9._-]{0,32}$',
      description: "rbd: images are named PREFIX+volume; others are not the site's (default: none)",
    },
  },
} as const;

export const registerPoolBody = {
  type: 'object',
  additionalProperties: false,
  required: ['name', 'providerUrl', 'tokenFile'],
  properties: {
    name,
    providerUrl: {
      type: 'string',
      minLength: 1,
      description:
        "the storage provider's base URL (http:// or https://; the contract is docs/provider-api.yaml)",
    },
    tokenFile: {
      type: 'string',
      minLength: 1,
      description:
        "absolute path on the site's host of a file holding the bearer token (the token is never stored or logged)",
    },
    capabilities,
  },
} as const;

export const poolCapabilitiesBody = {
  type: 'object',
  additionalProperties: false,
  required: ['capabilities'],
  properties: { capabilities },
} as const;

export const createVolumeBody = {
  type: 'object',
  additionalProperties: false,
  required: ['name', 'sizeBytes'],
  properties: {
    name,
    sizeBytes,
    pool: name,
    policy: { ...name, description: 'place it by this policy (and assign the policy to it)' },
    vm: { ...name, description: "a VM the volume is for: placed by that VM's policy" },
  },
} as const;

export const resizeVolumeBody = {
  type: 'object',
  additionalProperties: false,
  required: ['sizeBytes'],
  properties: { sizeBytes },
} as const;

export const importVolumeBody = {
  type: 'object',
  additionalProperties: false,
  required: ['name', 'image'],
  properties: {
    name,
    image: { type: 'string', minLength: 1, description: "an image file on the site's host" },
    pool: name,
    policy: { ...name, description: 'place it by this policy (and assign the policy to it)' },
    format: {
      type: 'string',
      enum: ['raw', 'qcow2', 'vmdk', 'vhdx', 'vpc', 'vdi'],
      description:
        'what the file is (default: probed from its content, and an image naming other files, such as a backing file, is refused)',
    },
  },
} as const;

export const exportVolumeBody = {
  type: 'object',
  additionalProperties: false,
  required: ['image'],
  properties: {
    image: { type: 'string', minLength: 1 },
    snapshot: name,
    format: { type: 'string', enum: ['raw', 'qcow2', 'vmdk', 'vhdx', 'vpc', 'vdi'] },
    force: {
      type: 'boolean',
      description: 'replace an existing file (or write over a block device); refused otherwise',
    },
  },
} as const;

export const cloneVolumeBody = {
  type: 'object',
  additionalProperties: false,
  required: ['snapshot', 'name'],
  properties: { snapshot: name, name },
} as const;

export const createSnapshotBody = {
  type: 'object',
  additionalProperties: false,
  required: ['name'],
  properties: {
    name,
    bitmap: { ...name, description: "end this dirty bitmap's epoch at the snapshot, atomically" },
  },
} as const;

export const bitmapAnswer = open("a volume's dirty bitmap (changed-block tracking)", {
  name: { type: 'string' },
  granularity: { type: 'integer' },
  enabled: { type: 'boolean' },
  inconsistent: { type: 'boolean' },
  dirtyBytes: { type: 'integer' },
});

export const addBitmapBody = {
  type: 'object',
  additionalProperties: false,
  required: ['name'],
  properties: {
    name,
    granularity: { type: 'integer', minimum: 512, description: 'bytes per bit (default 64 KiB)' },
  },
} as const;

export const createNetworkBody = {
  type: 'object',
  additionalProperties: false,
  required: ['name', 'kind'],
  properties: { name, kind: { type: 'string', enum: ['nat', 'isolated'] } },
} as const;

export const createVmBody = {
  type: 'object',
  additionalProperties: false,
  required: ['name', 'disks'],
  properties: {
    name,
    cpus: { type: 'integer', minimum: 1, maximum: 64, default: 1 },
    memoryMiB: { type: 'integer', minimum: 16, maximum: 1048576, default: 512 },
    disks: {
      type: 'array',
      maxItems: 16,
      items: {
        type: 'object',
        additionalProperties: false,
        required: ['volume'],
        properties: { volume: name, readOnly: { type: 'boolean' } },
      },
    },
    nics: {
      type: 'array',
      maxItems: 8,
      default: [],
      items: {
        type: 'object',
        additionalProperties: false,
        required: ['network'],
        properties: { network: name },
      },
    },
    boot: {
      oneOf: [
        {
          type: 'object',
          additionalProperties: false,
          required: ['kind'],
          properties: { kind: { const: 'disk' } },
        },
        {
          type: 'object',
          additionalProperties: false,
          required: ['kind', 'kernel'],
          properties: {
            kind: { const: 'kernel' },
            kernel: { type: 'string', minLength: 1 },
            initrd: { type: 'string', minLength: 1 },
            cmdline: { type: 'string', maxLength: 4096 },
          },
        },
      ],
      default: { kind: 'disk' },
    },
    guestAgent: {
      type: 'boolean',
      description:
        'a virtio-serial channel for the QEMU guest agent, which backups use to freeze file systems (default true)',
    },
  },
} as const;

export const stopVmBody = {
  type: 'object',
  additionalProperties: false,
  properties: {
    force: { type: 'boolean', description: 'kill QEMU at once instead of an ACPI power-off' },
    graceSeconds: { type: 'integer', minimum: 0, maximum: 3600, description: 'default 30' },
  },
} as const;

export const repoFields = {
  repo: { type: 'string', minLength: 1, description: "the repository's directory on the site's host" },
  passphraseFile: {
    type: 'string',
    minLength: 1,
    description: "file holding an encrypted repository's passphrase",
  },
} as const;

export const backupBody = {
  type: 'object',
  additionalProperties: false,
  required: ['repo'],
  properties: {
    ...repoFields,
    transport: {
      type: 'string',
      enum: ['auto', ...TRANSPORTS],
      description: 'how the data is read (default auto: the first the site offers of san, hotadd, nbds, nbd)',
    },
    preFreezeHook: {
      type: 'string',
      minLength: 1,
      description:
        "VM backups: the file name of an executable in the site's hooks directory (DATA/hooks/) run before the freeze (env HAVEN_VM, HAVEN_HOOK_PHASE=pre-freeze); failing, the backup is crash-consistent",
    },
    postThawHook: {
      type: 'string',
      minLength: 1,
      description:
        'VM backups: a hook likewise, run after the thaw (HAVEN_HOOK_PHASE=post-thaw, HAVEN_CONSISTENCY=application|crash|none)',
    },
    requireAppConsistent: {
      type: 'boolean',
      description: 'VM backups: fail instead of backing up crash-consistent when the guest cannot be frozen',
    },
    full: {
      type: 'boolean',
      description: 'read everything (a full backup) even where an incremental is possible',
    },
  },
} as const;

export const verifyRepositoryBody = {
  type: 'object',
  additionalProperties: false,
  required: ['repo'],
  properties: {
    ...repoFields,
    snapshots: { type: 'array', items: { type: 'string', minLength: 1 }, description: 'default: all' },
    rolling: { type: 'integer', minimum: 1, maximum: 65536, description: 'check the next 1/N of the chunks' },
  },
} as const;

export const gcRepositoryBody = {
  type: 'object',
  additionalProperties: false,
  required: ['repo'],
  properties: {
    ...repoFields,
    graceSeconds: {
      type: 'integer',
      minimum: 0,
      description: 'keep unused chunks younger than this (default 300)',
    },
  },
} as const;

export const moveBody = {
  type: 'object',
  additionalProperties: false,
  required: ['pool'],
  properties: {
    pool: { type: 'string', minLength: 1, description: 'the pool to move to' },
    keepSource: { type: 'boolean', description: 'keep the source volume (renamed) instead of deleting it' },
  },
} as const;

export const recoverBody = {
  type: 'object',
  additionalProperties: false,
  required: ['repo', 'snapshot'],
  properties: {
    ...repoFields,
    snapshot: { type: 'string', minLength: 1, description: 'a VM backup' },
    name: { type: 'string', minLength: 1, description: 'name of the recovered VM (default: NAME-recovered)' },
    pool: { type: 'string', minLength: 1, description: "pool of the VM's new volumes (default: default)" },
    cmdline: {
      type: 'string',
      description: 'kernel command line instead of the backed-up one (kernel boot)',
    },
    network: {
      type: 'string',
      minLength: 1,
      maxLength: 1000,
      description:
        "where the VM's NICs go: a network of this site (every NIC on it), none (no NIC), or OLD=NEW,… per backed-up network (NEW may be none); default: the backed-up VM's own networks",
    },
    noStart: {
      type: 'boolean',
      description: 'define the VM and serve its disks, but do not start it',
    },
  },
} as const;

export const vmParam = {
  type: 'object',
  required: ['vm'],
  properties: { vm: { type: 'string', minLength: 1 } },
} as const;

export const rollbackBody = {
  type: 'object',
  additionalProperties: false,
  required: ['repo', 'snapshot'],
  properties: {
    ...repoFields,
    snapshot: { type: 'string', minLength: 1, description: 'the newest backup of the volume' },
  },
} as const;

export const restoreVolumeBody = {
  type: 'object',
  additionalProperties: false,
  required: ['repo', 'snapshot', 'name'],
  properties: {
    ...repoFields,
    snapshot: { type: 'string', pattern: '^[A-Za-z0-9-]+$' },
    disk: { type: 'integer', minimum: 0 },
    name,
    pool: name,
  },
} as const;

// ---- paired sites -----------------------------------------------------------------------------

export const peerAnswer = open('a paired site: its pinned certificate and addresses', {
  name: { type: 'string' },
  fingerprint: { type: 'string', description: 'SHA-256 of its certificate (AB:CD:…)' },
  certificate: { type: 'string', description: 'PEM' },
  link: { type: 'string', description: 'HOST:PORT of its peer link' },
  api: { type: 'string' },
  pairedAt: { type: 'string' },
  health: open('what the heartbeats over the peer link say', {
    state: { type: 'string', enum: ['unknown', 'reachable', 'unreachable', 'taken-over'] },
    link: { type: 'string', enum: ['unknown', 'reachable', 'unreachable'] },
    missed: { type: 'integer', description: 'heartbeats missed in a row' },
    since: { type: 'string', description: 'when the state last changed' },
    lastSeenAt: { type: 'string' },
    rttMs: { type: 'number' },
    error: { type: 'string' },
    takenOver: {
      type: 'array',
      items: { type: 'string' },
      description: 'groups this site took over from it',
    },
  }),
});
export const peerOfferAnswer = open("a site's identity as it offers it at pairing", {
  name: { type: 'string' },
  certificate: { type: 'string' },
  link: { type: 'string' },
  api: { type: 'string' },
});
export const pairingTokenAnswer = open('a one-time pairing token: shown once, stored hashed', {
  token: { type: 'string' },
  expiresAt: { type: 'string' },
});

export const pairBody = {
  type: 'object',
  additionalProperties: false,
  required: ['api', 'token'],
  properties: {
    api: { type: 'string', minLength: 1, maxLength: 2048, description: "the peer site's API URL" },
    token: {
      type: 'string',
      minLength: 1,
      maxLength: 4096,
      description: "the peer's API token, or a one-time token it made (POST /peers/tokens there)",
    },
    fingerprint: {
      type: 'string',
      pattern: '^([0-9A-Fa-f]{2}:){31}[0-9A-Fa-f]{2}$',
      description:
        "the peer certificate's SHA-256 fingerprint as its `site show` prints it: pair only if it matches",
    },
  },
} as const;

export const acceptPeerBody = {
  type: 'object',
  additionalProperties: false,
  required: ['name', 'certificate'],
  properties: {
    name,
    certificate: { type: 'string', minLength: 1, maxLength: 16384, description: 'PEM, self-signed' },
    link: { type: 'string', minLength: 1, maxLength: 300, description: 'HOST:PORT of its peer link' },
    api: { type: 'string', minLength: 1, maxLength: 2048 },
    dryRun: { type: 'boolean', description: 'only check; store nothing, spend no token' },
  },
} as const;

export const pairingTokenBody = {
  type: 'object',
  additionalProperties: false,
  properties: {
    ttlSeconds: { type: 'integer', minimum: 1, maximum: 86400, description: 'default 900 (15 min)' },
  },
} as const;

/** Retention as schedules and policies take it: how many to keep per period. */
export const retentionKeep = {
  type: 'object',
  additionalProperties: false,
  description: 'retention: how many to keep per period (at least one above 0)',
  properties: Object.fromEntries(
    ['last', 'hourly', 'daily', 'weekly', 'monthly', 'yearly'].map((k) => [
      k,
      { type: 'integer', minimum: 0 },
    ]),
  ),
} as const;
