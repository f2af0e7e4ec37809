import { randomUUID } from 'node:crypto';
import { conflict } from '../../common/index.js';
import type { Db } from './database.js';
import { SiteDomain, type Actor, type SiteParts } from './domain.js';
import type { SiteDr } from './dr.js';
import type { Job } from './jobs.js';
import { runPlanSteps, type PlanHost } from './plan-runner.js';
import { Plans, type Plan, type PlanRun } from './plans.js';
import type { SiteVms } from './vms.js';

/**
 * DR plans of a site (issue 17): named lists of steps — DR operations, VM starts and stops,
 * scripts, operator waits, delays, heartbeat checks — run as jobs, retried from the step that
 * failed, or aborted. Every step is an event.
 */
export class SitePlans extends SiteDomain {
  private readonly store: Plans;
  private readonly host: PlanHost;

  constructor(parts: SiteParts, db: Db, dr: SiteDr, vms: SiteVms, siteName: string) {
    super(parts);
    this.store = new Plans(db);
    this.store.failInterrupted();
    this.host = {
      plans: this.store,
      jobs: this.jobs,
      events: this.events,
      compute: this.compute,
      dr,
      vms,
      siteName,
    };
  }

  create(actor: Actor, name: string, steps: unknown[]): Plan {
    return this.audited(actor, 'plan.create', name, () => this.store.create(name, steps));
  }

  list(): Plan[] {
    return this.store.list();
  }

  show(name: string): Plan {
    return this.store.get(name);
  }

  delete(actor: Actor, name: string): void {
    this.audited(actor, 'plan.delete', name, () => {
      const live = this.store.runs(name).find((r) => r.state === 'running' || r.state === 'waiting');
      if (live) throw conflict(`plan ${name} has run ${live.id} ${live.state}: abort it first`);
      this.store.delete(name);
    });
  }

  runs(plan?: string): PlanRun[] {
    if (plan) this.store.get(plan);
    return this.store.runs(plan);
  }

  run(actor: Actor, name: string): Job {
    const plan = this.store.get(name);
    const id = randomUUID();
    const run = this.store.newRun(id, plan);
    return this.start(actor, run);
  }

  /** Goes on with a failed run from the step that failed. */
  retry(actor: Actor, id: string): Job {
    const run = this.store.run(id);
    if (run.state !== 'failed')
      throw conflict(`plan run ${id} is ${run.state}: only a failed run is retried`);
    this.store.update(id, { state: 'running', error: null });
    return this.start(actor, this.store.run(id));
  }

  /** Gives up a failed (or waiting) run: it is never retried. */
  abort(actor: Actor, id: string): PlanRun {
    return this.audited(actor, 'plan.abort', id, () => {
      const run = this.store.run(id);
      if (run.state === 'waiting' && run.job) this.jobs.cancel(run.job, actor);
      else if (run.state !== 'failed') throw conflict(`plan run ${id} is ${run.state}: nothing to abort`);
      this.store.update(id, { state: 'aborted' });
      return this.store.run(id);
    });
  }

  private start(actor: Actor, run: PlanRun): Job {
    const job = this.jobs.start({ kind: 'plan.run', target: run.plan, actor }, (ctx) =>
      runPlanSteps(this.host, run, actor, ctx),
    );
    this.store.update(run.id, { state: 'running', job: job.id });
    return job;
  }
}
