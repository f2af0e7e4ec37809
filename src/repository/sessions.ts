import { randomUUID } from 'node:crypto';
import { hostname } from 'node:os';
import { HavenError } from '../common/index.js';
import type { RepositoryBackend } from './backend.js';
import { isTemporaryKey, readChunk } from './format.js';
import { recordAlive, selfIdentity } from './process.js';

// Sessions: what running backups and readers hold (sessions/<uuid>.json). gc's cutoff is no later
// than the oldest writer's start; forget refuses a snapshot a session names (a backup's parent, a
// reader's snapshot). See docs/decisions/0008-gc-and-writers.md.

export interface SessionRecord {
  id: string;
  pid: number;
  host: string;
  /** The kernel's boot id: a record from an earlier boot is dead whatever its pid is now. */
  boot?: string;
  /** The process's start time (clock ticks since boot): a reused pid is not this process. */
  start?: string;
  startedAt: number;
  /** A backup: the snapshot it takes unchanged chunks from. */
  parent?: string;
  /** A reader (restore, mount), not a writer: the snapshot it reads. */
  reads?: string;
}

export async function recordSession(
  backend: RepositoryBackend,
  what: Pick<SessionRecord, 'parent' | 'reads'>,
): Promise<{ id: string; end: () => Promise<void> }> {
  const rec: SessionRecord = {
    id: randomUUID(),
    ...selfIdentity(),
    host: hostname(),
    startedAt: Date.now(),
    ...what,
  };
  const key = `sessions/${rec.id}.json`;
  await backend.write(key, Buffer.from(JSON.stringify(rec)));
  return { id: rec.id, end: () => backend.delete(key) };
}

/**
 * The sessions of running backups and readers. Sessions of processes that are gone (same host:
 * the pid is not alive, or the record is from an earlier boot) are removed, after the chunks
 * they may have left torn are checked: a backup killed with -9 never holds gc back for good.
 */
export async function liveSessions(backend: RepositoryBackend): Promise<SessionRecord[]> {
  const out: SessionRecord[] = [];
  const dead: { key: string; rec: SessionRecord }[] = [];
  for await (const o of backend.list('sessions/')) {
    let rec: SessionRecord;
    try {
      rec = JSON.parse((await backend.read(o.key)).toString('utf8')) as SessionRecord;
    } catch {
      continue; // being written or removed
    }
    // Its start on the clock of file times too (the file's own time), so that no chunk it writes
    // has a time before its start.
    rec.startedAt = Math.min(rec.startedAt, o.mtimeMs);
    if (rec.host === hostname() && !recordAlive(rec))
      dead.push({ key: o.key, rec }); // its process died
    else out.push(rec);
  }
  const deadWriters = dead.filter((d) => !d.rec.reads);
  if (deadWriters.length && !backend.objectStore)
    // One pass over the chunks for all of them; their records go once it is done.
    await recoverDeadSessions(backend, Math.min(...deadWriters.map((d) => d.rec.startedAt)));
  for (const d of dead) await backend.delete(d.key);
  return out;
}

/**
 * Checks the chunks dead backups may have written (those modified since the first began): a chunk
 * renamed into place but not yet flushed when the machine went down can be empty or torn after
 * the reboot, and a later backup must not deduplicate against it. Damaged ones are deleted; no
 * snapshot refers to them, since a manifest is written only after a filesystem sync.
 */
async function recoverDeadSessions(backend: RepositoryBackend, startedAt: number): Promise<number> {
  let removed = 0;
  const since = startedAt - 2000; // mtime granularity and clock steps
  for await (const o of backend.list('chunks/')) {
    if (o.mtimeMs < since || isTemporaryKey(o.key)) continue; // temporaries: gc()
    try {
      readChunk(await backend.read(o.key), o.key);
    } catch (err) {
      if (err instanceof HavenError && err.code === 'NOT_FOUND') continue;
      await backend.delete(o.key);
      removed++;
    }
  }
  if (removed) await backend.sync();
  return removed;
}
