import type { Cron } from 'croner';
import {
  HavenError,
  errorMessage,
  invalidArgument,
  logger,
  wallClock,
  type Clock,
} from '../../common/index.js';
import type { Db } from './database.js';
import type { EventLog } from './events.js';
import type { ScheduleKind, ScheduleOwnerSink, ScheduleSpec } from './schedule-spec.js';
import { ScheduleStore, type RunOutcome, type StoredSchedule } from './schedule-store.js';
import { checkKeep, checkTiming, cronOf, decide, jitterMs, slotAfter } from './schedule-timing.js';

const log = logger('scheduler');

export const SCHEDULE_KINDS: readonly ScheduleKind[] = [
  'backup',
  'snapshot',
  'prune',
  'verify',
  'gc',
  'check',
];
/** The owner of schedules made by people (through the CLI or API). */
export const PERSON_OWNER = 'person';

/** A run as a site job, and its end (after whatever follows the job, such as retention). */
export interface ScheduleRun {
  job: string;
  done: Promise<{ outcome: Exclude<RunOutcome, 'skipped'>; message?: string }>;
}

/** What runs each kind: the site's jobs (schedule-runs.ts), or a fake in unit tests. */
export interface ScheduleRunner {
  /** Throws (INVALID_ARGUMENT, NOT_FOUND) unless the spec's target and params make sense. */
  check(spec: ScheduleSpec): void;
  /** The repository a run reads or writes, for the per-repository limit. */
  repository(spec: ScheduleSpec): string | undefined;
  /** Starts a run as a job, dated `at` (the scheduler's clock). */
  start(spec: ScheduleSpec, actor: string, at: Date): ScheduleRun;
}

export interface SchedulerOptions {
  clock?: Clock;
  /** Runs at a time on the site (default 4); more wait their turn. */
  maxRuns?: number;
  /** Runs at a time on one repository (default 2). */
  maxRunsPerRepository?: number;
}

/** A schedule as the API shows it. */
export interface Schedule extends ScheduleSpec {
  id: string;
  owner: string;
  /** When it runs next (with its jitter); absent: never again. */
  nextRun?: string;
  state: 'idle' | 'queued' | 'running';
  /** The job of the run now running. */
  job?: string;
  lastRun?: string;
  lastOutcome?: RunOutcome;
  lastMessage?: string;
  lastJob?: string;
  createdAt: string;
}

interface Entry {
  s: StoredSchedule;
  cron: Cron | undefined;
  /** When the next slot is due (jitter added), ms. */
  due: number | undefined;
  state: Schedule['state'];
}

/**
 * The site's scheduler: persisted schedules (schedule-store.ts), one timer for the earliest due
 * run (nothing polls: an idle site costs no CPU), and runs as site jobs through a runner. No two
 * runs of the same kind and target overlap (the later is skipped and recorded); runs wait for a
 * place within the site's and the repository's limits; a run missed while the daemon was down
 * runs once when it is back, or is skipped (`catchUp`), never once per missed slot
 * (schedule-timing.ts). Times are the clock's, so that a test can drive a month in seconds.
 */
export class Scheduler implements ScheduleOwnerSink {
  readonly clock: Clock;
  private readonly store: ScheduleStore;
  private readonly entries = new Map<string, Entry>();
  /** kind + target → the schedule whose run is queued or running. */
  private readonly busy = new Map<string, string>();
  private readonly queue: Entry[] = [];
  private readonly perRepository = new Map<string, number>();
  private running = 0;
  private readonly maxRuns: number;
  private readonly maxPerRepository: number;
  private armedAt: number | undefined;
  private cancelTimer: (() => void) | undefined;
  private idleWaiters: (() => void)[] = [];
  private closed = false;
  private pumpQueued = false;

  constructor(
    db: Db,
    private readonly events: EventLog,
    private readonly runner: ScheduleRunner,
    opts: SchedulerOptions = {},
  ) {
    this.clock = opts.clock ?? wallClock;
    this.maxRuns = opts.maxRuns ?? 4;
    this.maxPerRepository = opts.maxRunsPerRepository ?? 2;
    for (const [n, flag] of [
      [this.maxRuns, 'maxRuns'],
      [this.maxPerRepository, 'maxRunsPerRepository'],
    ] as const)
      if (!Number.isSafeInteger(n) || n < 1)
        throw invalidArgument(`scheduler ${flag} ${n}: must be 1 or more`);
    this.store = new ScheduleStore(db);
  }

  /** Loads the schedules and arms the timer: runs missed while the daemon was down come due now. */
  start(): void {
    for (const s of this.store.interrupted())
      this.store.ended(s.id, 'failed', `the site daemon stopped while this run (job ${s.runningJob}) ran`);
    for (const s of this.store.all()) this.add(s);
    this.arm();
  }

  /** Stops starting runs (running ones are the jobs', which the site cancels). */
  close(): void {
    this.closed = true;
    this.cancelTimer?.();
    this.cancelTimer = undefined;
  }

  /** A schedule of a person's. Bad input (kind, timing, target, retention) changes nothing. */
  create(actor: string, spec: ScheduleSpec): Schedule {
    const clean = this.validate(spec, true);
    const s = this.insert(PERSON_OWNER, clean);
    this.events.append({
      actor,
      action: 'schedule.create',
      target: s.s.id,
      outcome: 'ok',
      message: `schedule ${s.s.id}: ${clean.kind} ${clean.target} ${describe(clean)}`,
      details: { schedule: s.s.id, spec: clean },
    });
    this.arm();
    return this.show(s);
  }

  list(q: { owner?: string; kind?: string; target?: string } = {}): Schedule[] {
    return [...this.entries.values()]
      .filter(
        (e) =>
          (q.owner === undefined || e.s.owner === q.owner) &&
          (q.kind === undefined || e.s.spec.kind === q.kind) &&
          (q.target === undefined || e.s.spec.target === q.target),
      )
      .map((e) => this.show(e));
  }

  get(id: string): Schedule {
    const e = this.entries.get(id);
    if (!e) throw new HavenError('NOT_FOUND', `no schedule ${id} (haven schedule list shows them)`);
    return this.show(e);
  }

  /** Deletes a person's schedule (a policy's go with the policy: unassign it). A running run goes on. */
  delete(actor: string, id: string): void {
    const e = this.entries.get(id);
    if (!e) throw new HavenError('NOT_FOUND', `no schedule ${id} (haven schedule list shows them)`);
    if (e.s.owner !== PERSON_OWNER)
      throw new HavenError(
        'CONFLICT',
        `schedule ${id} belongs to ${e.s.owner.replace(/^policy:([^:]*):(.*)$/, 'policy $1 (assigned to $2)')}: change or unassign the policy instead`,
      );
    this.remove(e);
    this.events.append({
      actor,
      action: 'schedule.delete',
      target: id,
      outcome: 'ok',
      message: `schedule ${id} (${e.s.spec.kind} ${e.s.spec.target}) deleted`,
      details: { schedule: id },
    });
    this.arm();
  }

  /** A policy's schedules for one object; unchanged ones keep their next run and history. */
  replaceOwned(owner: string, specs: ScheduleSpec[]): void {
    const old = [...this.entries.values()].filter((e) => e.s.owner === owner);
    const wanted = new Map<string, ScheduleSpec>();
    for (const spec of specs)
      try {
        const clean = this.validate(spec, false);
        wanted.set(JSON.stringify(clean), clean);
      } catch (err) {
        log.warn(
          { owner, spec, err: errorMessage(err) },
          'a schedule of a policy is not valid: not scheduled',
        );
      }
    for (const e of old) {
      const key = JSON.stringify(e.s.spec);
      if (wanted.has(key)) wanted.delete(key);
      else this.remove(e);
    }
    for (const spec of wanted.values()) this.insert(owner, spec);
    this.arm();
  }

  /** Resolves once no run is queued or running (tests and the clock route wait on it). */
  idle(): Promise<void> {
    if (this.running === 0 && this.queue.length === 0) return Promise.resolve();
    return new Promise((r) => this.idleWaiters.push(r));
  }

  /** Runs queued or running now. */
  activeRuns(): { running: number; queued: number } {
    return { running: this.running, queued: this.queue.length };
  }

  // ---- internals -----------------------------------------------------------------------

  private validate(spec: ScheduleSpec, checkTarget: boolean): ScheduleSpec {
    if (!spec || typeof spec !== 'object') throw invalidArgument('a schedule is an object');
    if (!SCHEDULE_KINDS.includes(spec.kind))
      throw invalidArgument(`unknown schedule kind "${String(spec.kind)}": use ${SCHEDULE_KINDS.join(', ')}`);
    if (typeof spec.target !== 'string' || !spec.target)
      throw invalidArgument(`a ${spec.kind} schedule needs a target`);
    const what = `${spec.kind} schedule of ${spec.target}`;
    checkTiming(what, spec);
    if (spec.catchUp !== undefined && spec.catchUp !== 'once' && spec.catchUp !== 'skip')
      throw invalidArgument(`${what}: catch-up "${String(spec.catchUp)}": use once or skip`);
    const params = spec.params ?? {};
    if (params.keep !== undefined) {
      if (spec.kind !== 'backup' && spec.kind !== 'snapshot' && spec.kind !== 'prune')
        throw invalidArgument(
          `${what}: a retention (--keep-…) belongs to backup, snapshot and prune schedules`,
        );
      checkKeep(what, params.keep);
    } else if (spec.kind === 'prune')
      throw invalidArgument(`${what}: a prune schedule needs a retention (e.g. --keep-daily 7)`);
    if ((spec.kind === 'backup' || spec.kind === 'check') && typeof params.repo !== 'string')
      throw invalidArgument(`${what}: a ${spec.kind} schedule needs a repository (--repo)`);
    if (checkTarget) this.runner.check(spec);
    // Normalised: the same schedule always reads the same (replaceOwned compares them).
    return {
      kind: spec.kind,
      target: spec.target,
      ...(spec.cron !== undefined ? { cron: spec.cron } : {}),
      ...(spec.everySeconds !== undefined ? { everySeconds: spec.everySeconds } : {}),
      ...(spec.timezone !== undefined ? { timezone: spec.timezone } : {}),
      ...(spec.jitterSeconds ? { jitterSeconds: spec.jitterSeconds } : {}),
      ...(spec.catchUp !== undefined ? { catchUp: spec.catchUp } : {}),
      ...(spec.params && Object.keys(spec.params).length ? { params: spec.params } : {}),
    };
  }

  private insert(owner: string, spec: ScheduleSpec): Entry {
    const now = this.clock.now();
    const cron = cronOf(spec);
    const s = this.store.insert(owner, spec, now, slotAfter(spec, now, now, cron));
    return this.add(s, cron);
  }

  private add(s: StoredSchedule, cron = cronOf(s.spec)): Entry {
    const e: Entry = { s, cron, due: undefined, state: 'idle' };
    e.due = this.dueOf(e);
    this.entries.set(s.id, e);
    return e;
  }

  private remove(e: Entry): void {
    this.entries.delete(e.s.id);
    this.store.delete(e.s.id);
    const i = this.queue.indexOf(e);
    if (i >= 0) {
      this.queue.splice(i, 1);
      this.busy.delete(keyOf(e.s.spec));
      this.notifyIdle();
    }
  }

  private dueOf(e: Entry): number | undefined {
    const slot = e.s.nextSlotMs;
    return slot === undefined ? undefined : slot + jitterMs(e.s.id, slot, e.s.spec.jitterSeconds);
  }

  private show(e: Entry): Schedule {
    const { s } = e;
    return {
      id: s.id,
      owner: s.owner,
      ...s.spec,
      ...(e.due !== undefined ? { nextRun: new Date(e.due).toISOString() } : {}),
      state: e.state,
      ...(e.state === 'running' && s.runningJob ? { job: s.runningJob } : {}),
      ...(s.lastRunAt ? { lastRun: s.lastRunAt } : {}),
      ...(s.lastOutcome ? { lastOutcome: s.lastOutcome } : {}),
      ...(s.lastMessage ? { lastMessage: s.lastMessage } : {}),
      ...(s.lastJob ? { lastJob: s.lastJob } : {}),
      createdAt: s.createdAt,
    };
  }

  /** One timer, for the earliest due run. */
  private arm(): void {
    if (this.closed) return;
    let min: number | undefined;
    for (const e of this.entries.values())
      if (e.due !== undefined && (min === undefined || e.due < min)) min = e.due;
    if (min === this.armedAt && this.cancelTimer) return;
    this.cancelTimer?.();
    this.cancelTimer = undefined;
    this.armedAt = min;
    if (min === undefined) return;
    this.cancelTimer = this.clock.at(min, () => {
      this.cancelTimer = undefined;
      this.armedAt = undefined;
      this.tick();
    });
  }

  private tick(): void {
    if (this.closed) return;
    const now = this.clock.now();
    const due = [...this.entries.values()]
      .filter((e) => e.due !== undefined && e.due <= now)
      .sort((a, b) => a.due! - b.due!);
    for (const e of due) this.fire(e, now);
    this.pump();
    this.arm();
  }

  private fire(e: Entry, now: number): void {
    const { s } = e;
    const d = decide(s.spec, s.id, s.anchorMs, s.nextSlotMs!, now, s.spec.catchUp, e.cron);
    s.nextSlotMs = d.nextSlot;
    e.due = this.dueOf(e);
    if (!d.run) return this.skip(e, now, d.reason);
    const holder = this.busy.get(keyOf(s.spec));
    if (holder !== undefined) {
      const other = this.entries.get(holder);
      const job = other?.s.runningJob;
      return this.skip(
        e,
        now,
        `skipped: previous run still running${holder !== s.id ? ` (schedule ${holder})` : ''}${job && other?.state === 'running' ? ` (job ${job})` : other?.state === 'queued' ? ' (queued)' : ''}`,
      );
    }
    this.store.setNext(s.id, s.nextSlotMs);
    if (d.missed)
      log.info({ schedule: s.id, missed: d.missed }, 'runs missed while the daemon was down: running once');
    e.state = 'queued';
    this.busy.set(keyOf(s.spec), s.id);
    this.queue.push(e);
  }

  private skip(e: Entry, now: number, reason: string): void {
    const at = new Date(now).toISOString();
    this.store.started(e.s.id, e.s.nextSlotMs, at, undefined);
    this.store.ended(e.s.id, 'skipped', reason);
    Object.assign(e.s, { lastRunAt: at, lastOutcome: 'skipped', lastMessage: reason });
    this.events.append({
      actor: 'scheduler',
      action: `schedule.${e.s.spec.kind}`,
      target: e.s.spec.target,
      outcome: 'warning',
      message: `schedule ${e.s.id} (${e.s.spec.kind} ${e.s.spec.target}): ${reason}`,
      details: { schedule: e.s.id, at },
    });
  }

  /**
   * The next runs start after the event loop has had its turn: runs that end without real I/O
   * (a snapshot) would otherwise start each other in one chain of microtasks, and a queue of a
   * thousand of them would keep the API from answering until all had run.
   */
  private pumpSoon(): void {
    if (this.pumpQueued) return;
    this.pumpQueued = true;
    setImmediate(() => {
      this.pumpQueued = false;
      this.pump();
      this.notifyIdle();
    });
  }

  /** Starts queued runs while the limits allow, oldest first (one held by its repository waits). */
  private pump(): void {
    for (let i = 0; i < this.queue.length && this.running < this.maxRuns && !this.closed;) {
      const e = this.queue[i]!;
      const repo = this.runner.repository(e.s.spec);
      if (repo !== undefined && (this.perRepository.get(repo) ?? 0) >= this.maxPerRepository) {
        i++;
        continue;
      }
      this.queue.splice(i, 1);
      this.launch(e, repo);
    }
  }

  private launch(e: Entry, repo: string | undefined): void {
    const { s } = e;
    const nowMs = this.clock.now();
    const at = new Date(nowMs).toISOString();
    let run: ScheduleRun;
    try {
      run = this.runner.start(s.spec, `schedule:${s.id}`, new Date(nowMs));
    } catch (err) {
      const message = `not started: ${errorMessage(err)}`;
      this.store.started(s.id, s.nextSlotMs, at, undefined);
      this.store.ended(s.id, 'failed', message);
      Object.assign(s, { lastRunAt: at, lastOutcome: 'failed', lastMessage: message });
      e.state = 'idle';
      this.busy.delete(keyOf(s.spec));
      this.events.append({
        actor: 'scheduler',
        action: `schedule.${s.spec.kind}`,
        target: s.spec.target,
        outcome: 'failed',
        message: `schedule ${s.id} (${s.spec.kind} ${s.spec.target}): ${message}`,
        details: { schedule: s.id, at },
      });
      this.notifyIdle();
      return;
    }
    this.running++;
    if (repo !== undefined) this.perRepository.set(repo, (this.perRepository.get(repo) ?? 0) + 1);
    e.state = 'running';
    Object.assign(s, { runningJob: run.job, lastRunAt: at, lastJob: run.job });
    this.store.started(s.id, s.nextSlotMs, at, run.job);
    void run.done
      .catch((err: unknown) => ({ outcome: 'failed' as const, message: errorMessage(err) }))
      .then((r) => {
        this.running--;
        if (repo !== undefined) this.perRepository.set(repo, this.perRepository.get(repo)! - 1);
        this.busy.delete(keyOf(s.spec));
        e.state = 'idle';
        delete s.runningJob;
        Object.assign(s, { lastOutcome: r.outcome, lastMessage: r.message });
        if (this.entries.get(s.id) === e) this.store.ended(s.id, r.outcome, r.message);
        this.pumpSoon();
        this.notifyIdle();
      });
  }

  private notifyIdle(): void {
    if (this.running !== 0 || this.queue.length !== 0) return;
    const ws = this.idleWaiters;
    this.idleWaiters = [];
    for (const w of ws) w();
  }
}

function keyOf(spec: ScheduleSpec): string {
  return `${spec.kind}\0${spec.target}`;
}

export function describe(t: ScheduleSpec): string {
  return `${t.cron !== undefined ? `cron "${t.cron}"` : `every ${t.everySeconds} s`}${t.timezone ? ` (${t.timezone})` : ''}`;
}
