import { randomBytes } from 'node:crypto';
import { HavenError } from '../../common/index.js';
import { now, type Db } from './database.js';
import type { ScheduleSpec } from './schedule-spec.js';

/** How a run of a schedule ended (or that it did not start). */
export type RunOutcome = 'succeeded' | 'failed' | 'cancelled' | 'skipped';

/** A schedule as the site holds it: its spec, owner, next run and what its last run did. */
export interface StoredSchedule {
  id: string;
  /** "person" (made through the CLI or API) or "policy:NAME:OBJECT". */
  owner: string;
  spec: ScheduleSpec;
  /** Where interval slots count from (ms). */
  anchorMs: number;
  /** The next slot (ms, before jitter); undefined: a cron expression that never runs again. */
  nextSlotMs?: number;
  /** The job of the run now running, if one is. */
  runningJob?: string;
  lastRunAt?: string;
  lastOutcome?: RunOutcome;
  lastMessage?: string;
  lastJob?: string;
  createdAt: string;
}

interface Row {
  id: string;
  owner: string;
  spec: string;
  anchor_ms: number;
  next_slot_ms: number | null;
  running_job: string | null;
  last_run_at: string | null;
  last_outcome: RunOutcome | null;
  last_message: string | null;
  last_job: string | null;
  created_at: string;
}

/** The schedules table (migration 11). Small, synchronous, one statement each. */
export class ScheduleStore {
  private readonly updateNext;
  private readonly updateRun;
  private readonly updateEnd;

  constructor(private readonly db: Db) {
    this.updateNext = db.prepare('UPDATE schedules SET next_slot_ms = ? WHERE id = ?');
    this.updateRun = db.prepare(
      'UPDATE schedules SET next_slot_ms = ?, running_job = ?, last_run_at = ?, last_job = COALESCE(?, last_job) WHERE id = ?',
    );
    this.updateEnd = db.prepare(
      'UPDATE schedules SET running_job = NULL, last_outcome = ?, last_message = ?, last_run_at = COALESCE(?, last_run_at) WHERE id = ?',
    );
  }

  all(): StoredSchedule[] {
    return (this.db.prepare('SELECT * FROM schedules ORDER BY created_at, id').all() as Row[]).map(
      toSchedule,
    );
  }

  get(id: string): StoredSchedule {
    const row = this.db.prepare('SELECT * FROM schedules WHERE id = ?').get(id) as Row | undefined;
    if (!row) throw new HavenError('NOT_FOUND', `no schedule ${id} (haven schedule list shows them)`);
    return toSchedule(row);
  }

  insert(
    owner: string,
    spec: ScheduleSpec,
    anchorMs: number,
    nextSlotMs: number | undefined,
  ): StoredSchedule {
    const id = `s-${randomBytes(4).toString('hex')}`;
    this.db
      .prepare(
        'INSERT INTO schedules (id, owner, spec, anchor_ms, next_slot_ms, created_at) VALUES (?, ?, ?, ?, ?, ?)',
      )
      .run(id, owner, JSON.stringify(spec), anchorMs, nextSlotMs ?? null, now());
    return this.get(id);
  }

  delete(id: string): void {
    this.db.prepare('DELETE FROM schedules WHERE id = ?').run(id);
  }

  setNext(id: string, nextSlotMs: number | undefined): void {
    this.updateNext.run(nextSlotMs ?? null, id);
  }

  /** A run started (`job`) or was skipped (no job): the next slot and when. */
  started(id: string, nextSlotMs: number | undefined, at: string, job: string | undefined): void {
    this.updateRun.run(nextSlotMs ?? null, job ?? null, at, job ?? null, id);
  }

  ended(id: string, outcome: RunOutcome, message: string | undefined, at?: string): void {
    this.updateEnd.run(outcome, message ?? null, at ?? null, id);
  }

  /** Runs the previous daemon left running: their jobs were failed at this start. */
  interrupted(): StoredSchedule[] {
    return (this.db.prepare('SELECT * FROM schedules WHERE running_job IS NOT NULL').all() as Row[]).map(
      toSchedule,
    );
  }
}

function toSchedule(r: Row): StoredSchedule {
  return {
    id: r.id,
    owner: r.owner,
    spec: JSON.parse(r.spec) as ScheduleSpec,
    anchorMs: r.anchor_ms,
    ...(r.next_slot_ms !== null ? { nextSlotMs: r.next_slot_ms } : {}),
    ...(r.running_job ? { runningJob: r.running_job } : {}),
    ...(r.last_run_at ? { lastRunAt: r.last_run_at } : {}),
    ...(r.last_outcome ? { lastOutcome: r.last_outcome } : {}),
    ...(r.last_message ? { lastMessage: r.last_message } : {}),
    ...(r.last_job ? { lastJob: r.last_job } : {}),
    createdAt: r.created_at,
  };
}
