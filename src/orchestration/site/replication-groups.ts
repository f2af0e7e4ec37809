import { conflict, notFound } from '../../common/index.js';
import type { VmDefinition } from './compute.js';
import { now, type Db } from './database.js';

/** A VM of a group as its source site described it: what a takeover defines and starts at the target. */
export interface ReplicatedVm {
  name: string;
  definition: VmDefinition;
}

/** The checkpoint a takeover recovered (as the API shows checkpoints). */
export interface RecoveredCheckpoint {
  seq: number;
  time: string;
  name?: string;
  snapshot: string;
}

/** The source side of a group: what it replicates, where to, and how. */
export interface SourceConfig {
  vms: string[];
  /** The group's volumes in the group's volume order (the VMs' writable disks). */
  volumes: string[];
  /** The replica volumes at the target, by the same order. */
  replicas: string[];
  /** The target site's pool holding the replicas. */
  pool: string;
  /** The recovery point objective: an alert-worthy state once the replica is older. */
  rpoSeconds: number;
  checkpointSeconds: number;
  /** Checkpoints the target keeps (seconds). */
  keepSeconds: number;
  sync: boolean;
  compress: boolean;
  /** 0: unlimited. */
  bytesPerSecond: number;
  journalBytes: number;
  /** The replicas held a copy already (a restored backup): the initial sync compares checksums. */
  seeded?: boolean;
  /**
   * The target site took the group over (this site was lost, or cut off): its VMs stay stopped
   * here and nothing is shipped, so that the group never runs at two sites (no split brain).
   */
  fenced?: { at: string; by: string; takenOverAt: string; checkpoint: number };
}

/** The target side of a group: its replica volumes. */
export interface TargetConfig {
  /** The source's volume names, in the group's order. */
  sourceVolumes: string[];
  volumes: string[];
  pool: string;
  keepSeconds: number;
  journalBytes: number;
  /** The source's VMs, their disks named by the source's volume names. */
  vms?: ReplicatedVm[];
  /** This site took the group over: the replica volumes hold that checkpoint and are its own now. */
  takenOver?: { at: string; checkpoint: RecoveredCheckpoint };
  /** A rehearsal's VMs, clones and network at this site, until its cleanup. */
  rehearsal?: RehearsalRecord;
}

/** What a rehearsal made (recorded before it is made, so that a cleanup finds a half-made one). */
export interface RehearsalRecord {
  startedAt: string;
  checkpoint: RecoveredCheckpoint;
  vms: { name: string; of: string }[];
  volumes: string[];
  network?: string;
  /** The network was made for the rehearsal (and goes with its cleanup). */
  madeNetwork: boolean;
  /** Source networks with a stored rehearsal network (haven network map): their NICs join it, the rest `network`. */
  nicNetworks?: Record<string, string>;
}

export type GroupRow =
  | { name: string; role: 'source'; peer: string; config: SourceConfig; paused: boolean; createdAt: string }
  | { name: string; role: 'target'; peer: string; config: TargetConfig; paused: boolean; createdAt: string };

interface Row {
  name: string;
  role: 'source' | 'target';
  peer: string;
  config: string;
  paused: number;
  created_at: string;
}

/** The replication groups a site takes part in (table replication_groups), either side. */
export class ReplicationGroups {
  constructor(
    private readonly db: Db,
    /** Whether a resiliency group of that name is defined here (it names a group not replicated yet). */
    private readonly defined: (name: string) => boolean = () => false,
  ) {}

  list(): GroupRow[] {
    return (this.db.prepare('SELECT * FROM replication_groups ORDER BY name').all() as Row[]).map(fromRow);
  }

  find(name: string): GroupRow | undefined {
    const r = this.db.prepare('SELECT * FROM replication_groups WHERE name = ?').get(name) as Row | undefined;
    return r && fromRow(r);
  }

  get(name: string): GroupRow {
    const g = this.find(name);
    if (!g && this.defined(name))
      throw conflict(
        `group ${name} does not replicate: enable its replication first (haven replication enable --group ${name} --to SITE --pool POOL)`,
      );
    if (!g) throw notFound(`replication group ${name} does not exist on this site`);
    return g;
  }

  insert(g: GroupRow): void {
    if (this.find(g.name)) throw conflict(`replication group ${g.name} exists already`);
    this.db
      .prepare(
        'INSERT INTO replication_groups (name, role, peer, config, paused, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)',
      )
      .run(g.name, g.role, g.peer, JSON.stringify(g.config), g.paused ? 1 : 0, g.createdAt, now());
  }

  setPaused(name: string, paused: boolean): void {
    this.db
      .prepare('UPDATE replication_groups SET paused = ?, updated_at = ? WHERE name = ?')
      .run(paused ? 1 : 0, now(), name);
  }

  setConfig(name: string, config: SourceConfig | TargetConfig): void {
    this.db
      .prepare('UPDATE replication_groups SET config = ?, updated_at = ? WHERE name = ?')
      .run(JSON.stringify(config), now(), name);
  }

  delete(name: string): void {
    this.db.prepare('DELETE FROM replication_groups WHERE name = ?').run(name);
  }
}

function fromRow(r: Row): GroupRow {
  return {
    name: r.name,
    role: r.role,
    peer: r.peer,
    config: JSON.parse(r.config) as never,
    paused: r.paused === 1,
    createdAt: r.created_at,
  } as GroupRow;
}
