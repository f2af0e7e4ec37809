import { randomUUID } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { HavenError, conflict, errorMessage, logger, type HavenErrorCode } from '../../common/index.js';
import { now, selectNewest, type Db } from './database.js';
import type { EventLog } from './events.js';

export type JobState = 'running' | 'succeeded' | 'failed' | 'cancelled';

export interface JobProgress {
  phase?: string;
  doneBytes: number;
  totalBytes: number;
  /** Average since the job started, bytes per second. */
  rateBytesPerSecond: number;
  /** Seconds left at that rate; absent when unknown. */
  etaSeconds?: number;
}

export interface Job {
  id: string;
  kind: string;
  target: string;
  state: JobState;
  progress: JobProgress;
  result?: unknown;
  error?: string;
  /**
   * With `error`: the HavenError code of what failed it (CONFLICT, NOT_FOUND, INVALID_ARGUMENT…
   * when the request was at fault, so faces report it as such); INTERNAL for anything else.
   */
  errorCode?: HavenErrorCode;
  actor: string;
  createdAt: string;
  startedAt?: string;
  endedAt?: string;
}

export interface JobLogLine {
  time: string;
  level: 'info' | 'warning' | 'error';
  message: string;
}

/** What a running job is given. */
export interface JobContext {
  signal: AbortSignal;
  progress(doneBytes: number, totalBytes: number, phase?: string): void;
  log(message: string, level?: JobLogLine['level']): void;
  /** Blocks until an operator resumes the job (`resume`), saying what they are to do; rejects on cancel. */
  waitForOperator(message: string): Promise<{ actor: string }>;
}

interface JobRow {
  id: string;
  kind: string;
  target: string;
  state: JobState;
  done_bytes: number;
  total_bytes: number;
  phase: string | null;
  result: string | null;
  error: string | null;
  error_code: string | null;
  actor: string;
  created_at: string;
  started_at: string | null;
  ended_at: string | null;
}

const PROGRESS_WRITE_MS = 500;
const log = logger('jobs');

/**
 * Every long operation is a job: state, progress (bytes, rate, ETA), a log, a result, cancel.
 * Jobs live in the site database; a job that was running when the daemon stopped is marked
 * failed at the next start (see `failInterrupted`), never left "running". Emits 'update' (Job)
 * whenever a job changes and 'log' (job id, JobLogLine) for each line of its log, for live
 * followers (the API streams them).
 */
export class JobManager extends EventEmitter {
  private readonly running = new Map<
    string,
    { abort: AbortController; lastWrite: number; resume?: (actor: string) => void }
  >();

  constructor(
    private readonly db: Db,
    private readonly events: EventLog,
  ) {
    super();
    this.setMaxListeners(0);
  }

  /**
   * Marks every job the previous daemon left running as failed, and gives each to `cleanup`
   * (which undoes what the job left half done). Returns those jobs.
   */
  failInterrupted(cleanup: (job: Job) => void): Job[] {
    const rows = this.db.prepare("SELECT * FROM jobs WHERE state = 'running'").all() as JobRow[];
    const failed: Job[] = [];
    for (const row of rows) {
      const job = toJob(row);
      let note = '';
      try {
        cleanup(job);
      } catch (err) {
        note = `; cleaning up failed: ${errorMessage(err)}`;
      }
      const error = `the site daemon stopped while this job ran; it was not resumed${note}`;
      this.db
        .prepare(
          "UPDATE jobs SET state = 'failed', error = ?, error_code = 'INTERNAL', ended_at = ? WHERE id = ?",
        )
        .run(error, now(), job.id);
      this.appendLog(job.id, 'error', error);
      this.events.append({
        actor: 'site',
        action: `${job.kind}`,
        target: job.target,
        outcome: 'failed',
        message: `job ${job.id} (${job.kind} ${job.target}) failed: ${error}`,
        details: { job: job.id },
      });
      failed.push(this.get(job.id));
    }
    return failed;
  }

  /** Starts `run` as a job and returns it at once (state running). */
  start<T>(spec: { kind: string; target: string; actor: string }, run: (ctx: JobContext) => Promise<T>): Job {
    const id = randomUUID();
    const t = now();
    this.db
      .prepare(
        "INSERT INTO jobs (id, kind, target, state, actor, created_at, started_at) VALUES (?, ?, ?, 'running', ?, ?, ?)",
      )
      .run(id, spec.kind, spec.target, spec.actor, t, t);
    const abort = new AbortController();
    const entry: {
      abort: AbortController;
      lastWrite: number;
      phase?: string | undefined;
      resume?: (actor: string) => void;
    } = {
      abort,
      lastWrite: 0,
    };
    this.running.set(id, entry);
    const ctx: JobContext = {
      signal: abort.signal,
      progress: (done, total, phase) => {
        const nowMs = Date.now();
        // The database (and with it live followers) sees progress twice a second at most, and
        // every change of phase (a plan's next step) at once.
        if (nowMs - entry.lastWrite >= PROGRESS_WRITE_MS || done >= total || phase !== entry.phase) {
          entry.lastWrite = nowMs;
          entry.phase = phase;
          this.db
            .prepare('UPDATE jobs SET done_bytes = ?, total_bytes = ?, phase = ? WHERE id = ?')
            .run(done, total, phase ?? null, id);
          this.emit('update', this.get(id));
        }
      },
      log: (message, level = 'info') => this.appendLog(id, level, message),
      waitForOperator: (message) =>
        new Promise((resolve, reject) => {
          this.appendLog(id, 'warning', `waiting for an operator: ${message} (haven job resume ${id})`);
          this.db.prepare('UPDATE jobs SET phase = ? WHERE id = ?').run(`waiting: ${message}`, id);
          this.emit('update', this.get(id));
          const onAbort = () =>
            reject(new HavenError('CANCELLED', 'cancelled while waiting for an operator'));
          abort.signal.addEventListener('abort', onAbort, { once: true });
          entry.resume = (actor) => {
            entry.resume = undefined;
            abort.signal.removeEventListener('abort', onAbort);
            this.appendLog(id, 'info', `resumed by ${actor}`);
            this.db.prepare('UPDATE jobs SET phase = NULL WHERE id = ?').run(id);
            resolve({ actor });
          };
        }),
    };
    ctx.log(`${spec.kind} ${spec.target} started by ${spec.actor}`);
    // The job runs on its own; its outcome is recorded, never thrown at the caller.
    void (async () => {
      try {
        const result = await run(ctx);
        this.finish(id, 'succeeded', { result });
      } catch (err) {
        const cancelled = abort.signal.aborted;
        this.finish(id, cancelled ? 'cancelled' : 'failed', {
          error: cancelled ? 'cancelled by request' : errorMessage(err),
          errorCode: cancelled ? 'CANCELLED' : err instanceof HavenError ? err.code : 'INTERNAL',
        });
      } finally {
        this.running.delete(id);
      }
    })();
    const job = this.get(id);
    this.emit('update', job);
    return job;
  }

  /** Resumes a job that waits for an operator. */
  resume(id: string, actor: string): Job {
    const job = this.get(id);
    const entry = this.running.get(id);
    if (!entry?.resume)
      throw conflict(
        `job ${id} (${job.kind} ${job.target}) is ${job.state}${job.state === 'running' ? ', not waiting for an operator' : ''}`,
      );
    entry.resume(actor);
    return this.get(id);
  }

  /** Asks a running job to stop; its state becomes cancelled once it has. */
  cancel(id: string, actor: string): Job {
    const job = this.get(id);
    const entry = this.running.get(id);
    if (!entry || job.state !== 'running')
      throw new HavenError('CONFLICT', `job ${id} is ${job.state}, not running: nothing to cancel`);
    this.appendLog(id, 'warning', `cancel requested by ${actor}`);
    entry.abort.abort(new HavenError('CANCELLED', `job ${id} cancelled by ${actor}`));
    return this.get(id);
  }

  get(id: string): Job {
    const row = this.db.prepare('SELECT * FROM jobs WHERE id = ?').get(id) as JobRow | undefined;
    if (!row) throw new HavenError('NOT_FOUND', `no job ${id}`);
    return toJob(row);
  }

  list(q: { state?: JobState; kind?: string; target?: string; limit?: number } = {}): Job[] {
    return selectNewest<JobRow>(
      this.db,
      'jobs',
      q,
      ['state', 'kind', 'target'],
      'created_at DESC, rowid DESC',
    ).map(toJob);
  }

  logOf(id: string): JobLogLine[] {
    this.get(id);
    return this.db
      .prepare('SELECT time, level, message FROM job_log WHERE job = ? ORDER BY rowid')
      .all(id) as JobLogLine[];
  }

  /** Resolves when the job has ended (or at once if it has). */
  async wait(id: string): Promise<Job> {
    const job = this.get(id);
    if (job.state !== 'running') return job;
    return new Promise((resolve) => {
      const onUpdate = (j: Job) => {
        if (j.id !== id || j.state === 'running') return;
        this.off('update', onUpdate);
        resolve(j);
      };
      this.on('update', onUpdate);
    });
  }

  /** Cancels every running job and waits for them (the daemon is stopping). */
  async cancelAll(): Promise<void> {
    const ids = [...this.running.keys()];
    for (const id of ids) this.cancel(id, 'site shutdown');
    await Promise.all(ids.map((id) => this.wait(id)));
  }

  private finish(
    id: string,
    state: JobState,
    out: { result?: unknown; error?: string; errorCode?: HavenErrorCode },
  ): void {
    const job = this.get(id);
    const done = state === 'succeeded' ? Math.max(job.progress.totalBytes, job.progress.doneBytes) : null;
    this.db
      .prepare(
        'UPDATE jobs SET state = ?, result = ?, error = ?, error_code = ?, ended_at = ?, done_bytes = COALESCE(?, done_bytes), total_bytes = COALESCE(?, total_bytes) WHERE id = ?',
      )
      .run(
        state,
        out.result === undefined ? null : JSON.stringify(out.result),
        out.error ?? null,
        out.errorCode ?? null,
        now(),
        done,
        done,
        id,
      );
    this.appendLog(id, state === 'succeeded' ? 'info' : 'error', out.error ?? state);
    this.events.append({
      actor: job.actor,
      action: job.kind,
      target: job.target,
      outcome: state === 'succeeded' ? 'ok' : 'failed',
      message: `${job.kind} ${job.target}: ${out.error ?? 'succeeded'}`,
      details: { job: id },
    });
    if (state !== 'succeeded') log.warn({ job: id, kind: job.kind, target: job.target, state }, out.error);
    this.emit('update', this.get(id));
  }

  private appendLog(id: string, level: JobLogLine['level'], message: string): void {
    const line: JobLogLine = { time: now(), level, message };
    this.db
      .prepare('INSERT INTO job_log (job, time, level, message) VALUES (?, ?, ?, ?)')
      .run(id, line.time, level, message);
    if (this.listenerCount('log')) this.emit('log', id, line);
  }
}

function toJob(r: JobRow): Job {
  const start = r.started_at ? Date.parse(r.started_at) : undefined;
  const end = r.ended_at ? Date.parse(r.ended_at) : Date.now();
  const seconds = start !== undefined ? Math.max((end - start) / 1000, 0.001) : 0;
  const rate = seconds > 0 ? Math.round(r.done_bytes / seconds) : 0;
  const left = r.total_bytes - r.done_bytes;
  return {
    id: r.id,
    kind: r.kind,
    target: r.target,
    state: r.state,
    progress: {
      ...(r.phase ? { phase: r.phase } : {}),
      doneBytes: r.done_bytes,
      totalBytes: r.total_bytes,
      rateBytesPerSecond: rate,
      ...(r.state === 'running' && rate > 0 && left >= 0 ? { etaSeconds: Math.ceil(left / rate) } : {}),
    },
    ...(r.result !== null ? { result: JSON.parse(r.result) as unknown } : {}),
    ...(r.error !== null ? { error: r.error } : {}),
    ...(r.error !== null ? { errorCode: (r.error_code ?? 'INTERNAL') as HavenErrorCode } : {}),
    actor: r.actor,
    createdAt: r.created_at,
    ...(r.started_at ? { startedAt: r.started_at } : {}),
    ...(r.ended_at ? { endedAt: r.ended_at } : {}),
  };
}
