import { accessSync, constants } from 'node:fs';
import { isAbsolute } from 'node:path';
import { conflict, invalidArgument, notFound } from '../../common/index.js';
import { checkName } from '../../storage/index.js';
import { parseHeartbeat } from './check-heartbeat.js';
import { now, type Db } from './database.js';

/** One step of a plan. `target` names a group or business service (DR steps) or a VM (start, stop, heartbeat). */
export type PlanStep =
  | {
      kind: 'takeover' | 'rehearse' | 'cleanup' | 'resync' | 'migrate';
      target: string;
      options?: Record<string, unknown>;
    }
  | { kind: 'start' | 'stop'; target: string }
  | { kind: 'script'; path: string; args?: string[]; timeoutSeconds?: number }
  | { kind: 'wait'; message: string }
  | { kind: 'delay'; seconds: number }
  | { kind: 'heartbeat'; target: string; heartbeat?: string; timeoutSeconds?: number };

export interface Plan {
  name: string;
  steps: PlanStep[];
  createdAt: string;
}

export interface PlanRun {
  /** Also the id of the job running it now (a retry runs as a new job, under the same run id). */
  id: string;
  plan: string;
  steps: PlanStep[];
  /** The step to run next (0-based): where a retry goes on from. */
  nextStep: number;
  state: 'running' | 'waiting' | 'failed' | 'succeeded' | 'aborted';
  job?: string;
  error?: string;
  startedAt: string;
  updatedAt: string;
}

const DR_KINDS = ['takeover', 'rehearse', 'cleanup', 'resync', 'migrate'];

/** Checks one step (from a person or a file): a clear error naming the step and what is wrong. */
export function checkStep(raw: unknown, i: number): PlanStep {
  const s = raw as Record<string, unknown> | null;
  const bad = (what: string) => invalidArgument(`step ${i + 1}: ${what}`);
  if (!s || typeof s !== 'object' || typeof s.kind !== 'string') throw bad('no kind');
  const name = (k: string) => {
    if (typeof s[k] !== 'string' || !s[k]) throw bad(`${s.kind} needs ${k}`);
    return s[k] as string;
  };
  const seconds = (k: string, min: number) => {
    const v = s[k];
    if (v === undefined) return undefined;
    if (typeof v !== 'number' || !Number.isFinite(v) || v < min)
      throw bad(`${k} must be a number of seconds ≥ ${min}`);
    return v;
  };
  if (DR_KINDS.includes(s.kind)) {
    const options = s.options;
    if (options !== undefined && (typeof options !== 'object' || options === null))
      throw bad('options is not an object');
    return {
      kind: s.kind as 'takeover',
      target: name('target'),
      ...(options ? { options: options as Record<string, unknown> } : {}),
    };
  }
  switch (s.kind) {
    case 'start':
    case 'stop':
      return { kind: s.kind, target: name('target') };
    case 'script': {
      const path = name('path');
      if (!isAbsolute(path)) throw bad(`script ${path}: give an absolute path`);
      try {
        accessSync(path, constants.X_OK);
      } catch {
        throw bad(`script ${path} is not an executable file`);
      }
      const args = s.args;
      if (args !== undefined && (!Array.isArray(args) || args.some((a) => typeof a !== 'string')))
        throw bad('args must be strings');
      const timeoutSeconds = seconds('timeoutSeconds', 1);
      return {
        kind: 'script',
        path,
        ...(args ? { args: args as string[] } : {}),
        ...(timeoutSeconds !== undefined ? { timeoutSeconds } : {}),
      };
    }
    case 'wait':
      return { kind: 'wait', message: name('message') };
    case 'delay': {
      const sec = seconds('seconds', 0);
      if (sec === undefined) throw bad('delay needs seconds');
      return { kind: 'delay', seconds: sec };
    }
    case 'heartbeat': {
      const heartbeat = typeof s.heartbeat === 'string' ? s.heartbeat : undefined;
      parseHeartbeat(heartbeat);
      const timeoutSeconds = seconds('timeoutSeconds', 1);
      return {
        kind: 'heartbeat',
        target: name('target'),
        ...(heartbeat ? { heartbeat } : {}),
        ...(timeoutSeconds !== undefined ? { timeoutSeconds } : {}),
      };
    }
  }
  throw bad(
    `unknown kind ${s.kind}: use ${[...DR_KINDS, 'start', 'stop', 'script', 'wait', 'delay', 'heartbeat'].join(', ')}`,
  );
}

interface PlanRow {
  name: string;
  steps: string;
  created_at: string;
}
interface RunRow {
  id: string;
  plan: string;
  steps: string;
  next_step: number;
  state: PlanRun['state'];
  job: string | null;
  error: string | null;
  started_at: string;
  updated_at: string;
}

const toRun = (r: RunRow): PlanRun => ({
  id: r.id,
  plan: r.plan,
  steps: JSON.parse(r.steps) as PlanStep[],
  nextStep: r.next_step,
  state: r.state,
  ...(r.job ? { job: r.job } : {}),
  ...(r.error ? { error: r.error } : {}),
  startedAt: r.started_at,
  updatedAt: r.updated_at,
});

/** The site's plans and their runs (tables plans, plan_runs). */
export class Plans {
  constructor(private readonly db: Db) {}

  create(name: string, steps: unknown[]): Plan {
    checkName('plan', name);
    if (this.find(name)) throw conflict(`plan ${name} exists already`);
    if (!Array.isArray(steps) || !steps.length) throw invalidArgument(`plan ${name} needs at least one step`);
    const checked = steps.map((s, i) => checkStep(s, i));
    const t = now();
    this.db
      .prepare('INSERT INTO plans (name, steps, created_at, updated_at) VALUES (?, ?, ?, ?)')
      .run(name, JSON.stringify(checked), t, t);
    return this.get(name);
  }

  find(name: string): Plan | undefined {
    const r = this.db.prepare('SELECT * FROM plans WHERE name = ?').get(name) as PlanRow | undefined;
    return r && { name: r.name, steps: JSON.parse(r.steps) as PlanStep[], createdAt: r.created_at };
  }

  get(name: string): Plan {
    const p = this.find(name);
    if (!p) throw notFound(`plan ${name} does not exist on this site`);
    return p;
  }

  list(): Plan[] {
    return (this.db.prepare('SELECT name FROM plans ORDER BY name').all() as { name: string }[]).map((r) =>
      this.get(r.name),
    );
  }

  delete(name: string): void {
    this.get(name);
    this.db.prepare('DELETE FROM plans WHERE name = ?').run(name);
  }

  newRun(id: string, plan: Plan): PlanRun {
    const t = now();
    this.db
      .prepare(
        "INSERT INTO plan_runs (id, plan, steps, next_step, state, job, started_at, updated_at) VALUES (?, ?, ?, 0, 'running', ?, ?, ?)",
      )
      .run(id, plan.name, JSON.stringify(plan.steps), id, t, t);
    return this.run(id);
  }

  run(id: string): PlanRun {
    const r = this.db.prepare('SELECT * FROM plan_runs WHERE id = ?').get(id) as RunRow | undefined;
    if (!r) throw notFound(`no plan run ${id}`);
    return toRun(r);
  }

  runs(plan?: string): PlanRun[] {
    const rows = (
      plan
        ? this.db
            .prepare('SELECT * FROM plan_runs WHERE plan = ? ORDER BY started_at DESC LIMIT 100')
            .all(plan)
        : this.db.prepare('SELECT * FROM plan_runs ORDER BY started_at DESC LIMIT 100').all()
    ) as RunRow[];
    return rows.map(toRun);
  }

  update(
    id: string,
    change: { state: PlanRun['state']; nextStep?: number; job?: string; error?: string | null },
  ): void {
    const r = this.run(id);
    this.db
      .prepare(
        'UPDATE plan_runs SET state = ?, next_step = ?, job = ?, error = ?, updated_at = ? WHERE id = ?',
      )
      .run(
        change.state,
        change.nextStep ?? r.nextStep,
        change.job ?? r.job ?? null,
        change.error === undefined ? (r.error ?? null) : change.error,
        now(),
        id,
      );
  }

  /** Runs a daemon stopped in the middle of: failed, so that they can be retried from their step. */
  failInterrupted(): void {
    this.db
      .prepare(
        "UPDATE plan_runs SET state = 'failed', error = 'the site daemon stopped during this step', updated_at = ? WHERE state IN ('running', 'waiting')",
      )
      .run(now());
  }
}
