import Database from 'better-sqlite3';
import { HavenError } from '../../common/index.js';

export type Db = Database.Database;

/**
 * The site's state: one SQLite file in the data directory (WAL, so readers never wait for the
 * writer; synchronous=FULL, so an acknowledged change survives a power cut). Volumes' data and
 * metadata stay in their pools; this holds what the site knows about them (VMs, jobs, events).
 *
 * Migrations are numbered and only ever appended: a database is brought forward one step at a
 * time inside a transaction, and a database newer than this program is refused.
 */
const MIGRATIONS: string[] = [
  // 1: the first schema
  `CREATE TABLE site (key TEXT PRIMARY KEY, value TEXT NOT NULL);
   CREATE TABLE hosts (
     name TEXT PRIMARY KEY, address TEXT NOT NULL, cpus INTEGER NOT NULL, memory_mib INTEGER NOT NULL,
     accelerator TEXT NOT NULL, hypervisor TEXT NOT NULL, created_at TEXT NOT NULL);
   CREATE TABLE networks (
     name TEXT PRIMARY KEY, kind TEXT NOT NULL CHECK (kind IN ('nat', 'isolated')),
     mcast_group TEXT, mcast_port INTEGER, created_at TEXT NOT NULL);
   CREATE TABLE vms (
     id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, host TEXT NOT NULL REFERENCES hosts(name),
     spec TEXT NOT NULL, state TEXT NOT NULL, state_reason TEXT, pid INTEGER,
     created_at TEXT NOT NULL, updated_at TEXT NOT NULL);
   CREATE TABLE jobs (
     id TEXT PRIMARY KEY, kind TEXT NOT NULL, target TEXT NOT NULL, state TEXT NOT NULL,
     done_bytes INTEGER NOT NULL DEFAULT 0, total_bytes INTEGER NOT NULL DEFAULT 0, phase TEXT,
     result TEXT, error TEXT, actor TEXT NOT NULL,
     created_at TEXT NOT NULL, started_at TEXT, ended_at TEXT);
   CREATE INDEX jobs_state ON jobs(state);
   CREATE TABLE job_log (job TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE, time TEXT NOT NULL,
     level TEXT NOT NULL, message TEXT NOT NULL);
   CREATE INDEX job_log_job ON job_log(job);
   CREATE TABLE events (
     id INTEGER PRIMARY KEY AUTOINCREMENT, time TEXT NOT NULL, actor TEXT NOT NULL,
     action TEXT NOT NULL, target TEXT NOT NULL, outcome TEXT NOT NULL, message TEXT NOT NULL,
     details TEXT);
   CREATE INDEX events_target ON events(target);
   CREATE INDEX events_action ON events(action);`,
  // 2: VMs running from a backup (instant recovery)
  `CREATE TABLE recoveries (
     vm TEXT PRIMARY KEY, snapshot TEXT NOT NULL, repo TEXT NOT NULL, passphrase_file TEXT,
     disks TEXT NOT NULL, started_at TEXT NOT NULL,
     state TEXT NOT NULL CHECK (state IN ('running', 'finalizing', 'broken')));`,
  // 3: why a job failed, as a stable code (a user's mistake is not an internal error)
  `ALTER TABLE jobs ADD COLUMN error_code TEXT;`,
  // 4: paired sites (their pinned certificates) and one-time pairing tokens (hashed)
  `CREATE TABLE peers (
     name TEXT PRIMARY KEY, certificate TEXT NOT NULL, fingerprint TEXT NOT NULL UNIQUE,
     link_address TEXT, api_url TEXT, paired_at TEXT NOT NULL);
   CREATE TABLE pairing_tokens (
     hash TEXT PRIMARY KEY, created_at TEXT NOT NULL, expires_at TEXT NOT NULL, used_at TEXT);`,
  // 5: replication groups this site is the source or the target of (issue 15)
  `CREATE TABLE replication_groups (
     name TEXT PRIMARY KEY, role TEXT NOT NULL CHECK (role IN ('source', 'target')),
     peer TEXT NOT NULL, config TEXT NOT NULL, paused INTEGER NOT NULL DEFAULT 0,
     created_at TEXT NOT NULL, updated_at TEXT NOT NULL);`,
  // 6: recoverability checks (issue 16)
  `CREATE TABLE recovery_checks (
     id TEXT PRIMARY KEY, vm TEXT NOT NULL, repo TEXT NOT NULL, snapshot TEXT, check_vm TEXT NOT NULL,
     network TEXT, made_network INTEGER NOT NULL DEFAULT 0, heartbeat TEXT NOT NULL, script TEXT,
     job TEXT, actor TEXT NOT NULL,
     state TEXT NOT NULL CHECK (state IN ('running', 'passed', 'failed')), reason TEXT,
     started_at TEXT NOT NULL, ended_at TEXT, duration_seconds REAL, console_log TEXT);
   CREATE INDEX recovery_checks_vm ON recovery_checks(vm, started_at);`,
  // 7: business services (issue 17): replication groups in tiers, started in order
  `CREATE TABLE services (
     name TEXT PRIMARY KEY, tiers TEXT NOT NULL, boot_delay_seconds REAL NOT NULL DEFAULT 0,
     created_at TEXT NOT NULL, updated_at TEXT NOT NULL);`,
  // 8: DR plans (ordered steps) and their runs, retried from the step that failed
  `CREATE TABLE plans (name TEXT PRIMARY KEY, steps TEXT NOT NULL, created_at TEXT NOT NULL, updated_at TEXT NOT NULL);
   CREATE TABLE plan_runs (
     id TEXT PRIMARY KEY, plan TEXT NOT NULL, steps TEXT NOT NULL, next_step INTEGER NOT NULL,
     state TEXT NOT NULL CHECK (state IN ('running', 'waiting', 'failed', 'succeeded', 'aborted')),
     job TEXT, error TEXT, started_at TEXT NOT NULL, updated_at TEXT NOT NULL);`,
  // 9: policies (issue 16; operator-declared pool capabilities, policies, their assignments, and
  // each object's last compliance, so that a change of it is an event)
  `CREATE TABLE pool_capabilities (pool TEXT PRIMARY KEY, declared TEXT NOT NULL);
   CREATE TABLE policies (
     name TEXT PRIMARY KEY, spec TEXT NOT NULL, created_at TEXT NOT NULL, updated_at TEXT NOT NULL);
   CREATE TABLE policy_assignments (
     kind TEXT NOT NULL CHECK (kind IN ('vm', 'volume')), object TEXT NOT NULL,
     policy TEXT NOT NULL REFERENCES policies(name), assigned_at TEXT NOT NULL,
     PRIMARY KEY (kind, object));
   CREATE TABLE policy_compliance (
     kind TEXT NOT NULL, object TEXT NOT NULL, compliant INTEGER NOT NULL, reasons TEXT NOT NULL,
     checked_at TEXT NOT NULL, PRIMARY KEY (kind, object));`,
  // issue 16: alerts (one open alert per rule and object), silences, notification channels and
  // the deliveries still to make (so a restart does not lose them)
  `CREATE TABLE alerts (
     id INTEGER PRIMARY KEY AUTOINCREMENT, rule TEXT NOT NULL, object TEXT NOT NULL,
     state TEXT NOT NULL CHECK (state IN ('open', 'resolved')), severity TEXT NOT NULL,
     message TEXT NOT NULL, details TEXT, count INTEGER NOT NULL, first_seen TEXT NOT NULL,
     last_seen TEXT NOT NULL, resolved_at TEXT, notified INTEGER NOT NULL DEFAULT 0);
   CREATE UNIQUE INDEX alerts_open ON alerts(rule, object) WHERE state = 'open';
   CREATE TABLE alert_silences (
     id INTEGER PRIMARY KEY AUTOINCREMENT, rule TEXT, alert INTEGER, comment TEXT,
     actor TEXT NOT NULL, created_at TEXT NOT NULL, expires_at TEXT NOT NULL);
   CREATE TABLE alert_channels (
     id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL CHECK (kind IN ('webhook', 'email')),
     config TEXT NOT NULL, created_at TEXT NOT NULL);
   CREATE TABLE alert_deliveries (
     id INTEGER PRIMARY KEY AUTOINCREMENT, channel INTEGER NOT NULL REFERENCES alert_channels(id) ON DELETE CASCADE,
     payload TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, next_at INTEGER NOT NULL,
     last_error TEXT, created_at TEXT NOT NULL);`,
  // issue 17: per paired site, where each of its networks goes on a recovery and a rehearsal
  `CREATE TABLE network_maps (
     peer TEXT NOT NULL, source TEXT NOT NULL, recovery TEXT NOT NULL, rehearsal TEXT,
     updated_at TEXT NOT NULL, PRIMARY KEY (peer, source));`,
  // issue 17: the reports of DR operations (kept beyond their jobs), service objectives, where
  // they are applied (a group or a business service), and the last compliance judged of each
  `CREATE TABLE dr_reports (
     id TEXT PRIMARY KEY, kind TEXT NOT NULL, target TEXT NOT NULL, groups TEXT NOT NULL,
     outcome TEXT NOT NULL, actor TEXT NOT NULL, started_at TEXT NOT NULL, ended_at TEXT NOT NULL,
     report TEXT NOT NULL);
   CREATE INDEX dr_reports_ended ON dr_reports(ended_at);
   CREATE TABLE objectives (name TEXT PRIMARY KEY, spec TEXT NOT NULL, created_at TEXT NOT NULL,
     updated_at TEXT NOT NULL);
   CREATE TABLE objective_assignments (
     kind TEXT NOT NULL CHECK (kind IN ('group', 'service')), target TEXT NOT NULL,
     objective TEXT NOT NULL REFERENCES objectives(name), assigned_at TEXT NOT NULL,
     PRIMARY KEY (kind, target));
   CREATE TABLE objective_compliance (
     kind TEXT NOT NULL, target TEXT NOT NULL, objective TEXT NOT NULL, compliant INTEGER NOT NULL,
     reasons TEXT NOT NULL, checked_at TEXT NOT NULL, PRIMARY KEY (kind, target));`,
  // issue 16: pools served by out-of-process storage providers (the token stays in its file)
  `CREATE TABLE provider_pools (
     name TEXT PRIMARY KEY, url TEXT NOT NULL, token_file TEXT NOT NULL, registered_at TEXT NOT NULL);`,
  // issue 16: schedules: each with its owner (a person, or a policy for one object), its
  // spec, the next slot and what its last run did; times of the scheduler's clock, in ms
  `CREATE TABLE schedules (
     id TEXT PRIMARY KEY, owner TEXT NOT NULL, spec TEXT NOT NULL, anchor_ms INTEGER NOT NULL,
     next_slot_ms INTEGER, running_job TEXT, last_run_at TEXT,
     last_outcome TEXT CHECK (last_outcome IN ('succeeded', 'failed', 'cancelled', 'skipped')),
     last_message TEXT, last_job TEXT, created_at TEXT NOT NULL);
   CREATE INDEX schedules_owner ON schedules(owner);`,
  // issue 19: users with roles (scrypt password hashes), their console sessions and API tokens
  // (both kept as SHA-256 hashes of what the client holds; times of sessions in ms)
  `CREATE TABLE users (
     name TEXT PRIMARY KEY, role TEXT NOT NULL CHECK (role IN ('admin', 'operator', 'viewer')),
     password TEXT NOT NULL, created_at TEXT NOT NULL, updated_at TEXT NOT NULL);
   CREATE TABLE sessions (
     hash TEXT PRIMARY KEY, user TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
     csrf TEXT NOT NULL, created_ms INTEGER NOT NULL, seen_ms INTEGER NOT NULL);
   CREATE INDEX sessions_user ON sessions(user);
   CREATE TABLE user_tokens (
     id TEXT PRIMARY KEY, user TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
     hash TEXT NOT NULL UNIQUE, created_at TEXT NOT NULL, last_used_at TEXT);
   CREATE INDEX user_tokens_user ON user_tokens(user);`,
  // issue 17: resiliency groups, VMs protected and recovered together; a VM is in at most one
  `CREATE TABLE resiliency_groups (
     name TEXT PRIMARY KEY, description TEXT, created_at TEXT NOT NULL, updated_at TEXT NOT NULL);
   CREATE TABLE resiliency_group_vms (
     vm TEXT PRIMARY KEY, grp TEXT NOT NULL REFERENCES resiliency_groups(name) ON DELETE CASCADE,
     position INTEGER NOT NULL);
   CREATE INDEX resiliency_group_vms_grp ON resiliency_group_vms(grp, position);`,
];

export function openDatabase(path: string): Db {
  const db = new Database(path);
  db.pragma('journal_mode = WAL');
  db.pragma('synchronous = FULL');
  db.pragma('foreign_keys = ON');
  db.pragma('busy_timeout = 5000');
  migrate(db);
  return db;
}

export function schemaVersion(db: Db): number {
  return db.pragma('user_version', { simple: true }) as number;
}

function migrate(db: Db): void {
  const have = schemaVersion(db);
  if (have > MIGRATIONS.length)
    throw new HavenError(
      'UNSUPPORTED',
      `the site database has schema ${have}, newer than this Haven knows (${MIGRATIONS.length}); upgrade Haven`,
    );
  for (let v = have; v < MIGRATIONS.length; v++)
    db.transaction(() => {
      db.exec(MIGRATIONS[v]!);
      db.pragma(`user_version = ${v + 1}`);
    })();
}

export function now(): string {
  return new Date().toISOString();
}

/**
 * A filtered, newest-first listing: `column = ?` for each of `columns` set in `q` (and the extra
 * conditions given), at most `q.limit` rows (default 100, at most 1000).
 */
export function selectNewest<Row>(
  db: Db,
  table: string,
  q: Record<string, string | number | undefined> & { limit?: number },
  columns: readonly string[],
  order: string,
  extra: { where: string[]; args: (string | number)[] } = { where: [], args: [] },
): Row[] {
  const where = [...extra.where];
  const args = [...extra.args];
  for (const k of columns)
    if (q[k] !== undefined) {
      where.push(`${k} = ?`);
      args.push(q[k]);
    }
  const limit = Math.min(Math.max(q.limit ?? 100, 1), 1000);
  return db
    .prepare(
      `SELECT * FROM ${table} ${where.length ? 'WHERE ' + where.join(' AND ') : ''} ORDER BY ${order} LIMIT ${limit}`,
    )
    .all(...args) as Row[];
}
