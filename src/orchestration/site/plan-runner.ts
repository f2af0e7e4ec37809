import { spawn } from 'node:child_process';
import { setTimeout as sleep } from 'node:timers/promises';
import { HavenError, errorMessage } from '../../common/index.js';
import { parseHeartbeat, waitForHeartbeat } from './check-heartbeat.js';
import type { ComputeService } from './compute.js';
import type { Actor } from './domain.js';
import type { SiteDr } from './dr.js';
import type { EventLog } from './events.js';
import type { Job, JobContext, JobManager } from './jobs.js';
import type { PlanRun, PlanStep, Plans } from './plans.js';
import type { SiteVms } from './vms.js';

export interface PlanHost {
  plans: Plans;
  jobs: JobManager;
  events: EventLog;
  compute: ComputeService;
  dr: SiteDr;
  vms: SiteVms;
  siteName: string;
}

/** What a run did, step by step (the job's result). */
export interface PlanRunReport {
  run: string;
  plan: string;
  steps: { step: number; kind: string; outcome: 'ok' | 'skipped'; seconds: number; detail?: string }[];
}

const SCRIPT_OUTPUT_BYTES = 64 * 1024;
const DEFAULT_SCRIPT_SECONDS = 300;

export function describeStep(s: PlanStep): string {
  switch (s.kind) {
    case 'script':
      return `script ${s.path}${s.args?.length ? ` ${s.args.join(' ')}` : ''}`;
    case 'wait':
      return `wait for an operator: ${s.message}`;
    case 'delay':
      return `delay ${s.seconds} s`;
    default:
      return `${s.kind} ${s.target}`;
  }
}

/**
 * Runs a plan's steps from `run.nextStep` on, inside its job: each step an event (`plan.step`);
 * the first that fails stops the run there (state failed, `nextStep` that step: a retry goes on
 * from it); an operator wait leaves the run waiting until `haven job resume`.
 */
export async function runPlanSteps(
  host: PlanHost,
  run: PlanRun,
  actor: Actor,
  ctx: JobContext,
): Promise<PlanRunReport> {
  const report: PlanRunReport = { run: run.id, plan: run.plan, steps: [] };
  for (let i = 0; i < run.nextStep; i++)
    report.steps.push({
      step: i + 1,
      kind: run.steps[i]!.kind,
      outcome: 'skipped',
      seconds: 0,
      detail: 'done in an earlier attempt',
    });
  for (let i = run.nextStep; i < run.steps.length; i++) {
    const step = run.steps[i]!;
    const what = `step ${i + 1} of ${run.steps.length} (${describeStep(step)})`;
    ctx.progress(i, run.steps.length, what);
    ctx.log(`${what}: started`);
    const t0 = Date.now();
    try {
      const detail = await runStep(host, run, i, actor, ctx);
      const seconds = (Date.now() - t0) / 1000;
      report.steps.push({
        step: i + 1,
        kind: step.kind,
        outcome: 'ok',
        seconds,
        ...(detail ? { detail } : {}),
      });
      host.plans.update(run.id, { state: 'running', nextStep: i + 1 });
      host.events.append({
        actor,
        action: 'plan.step',
        target: run.plan,
        outcome: 'ok',
        message: `plan ${run.plan} run ${run.id}: ${what} done in ${seconds.toFixed(1)} s`,
        details: { run: run.id, step: i + 1 },
      });
    } catch (err) {
      const why = errorMessage(err);
      host.plans.update(run.id, { state: 'failed', nextStep: i, error: `${what}: ${why}` });
      host.events.append({
        actor,
        action: 'plan.step',
        target: run.plan,
        outcome: 'failed',
        message: `plan ${run.plan} run ${run.id}: ${what} failed: ${why}`,
        details: { run: run.id, step: i + 1 },
      });
      throw new HavenError(
        err instanceof HavenError ? err.code : 'INTERNAL',
        `${what} failed: ${why}; retry from it with haven plan retry ${run.id}, or abort`,
      );
    }
  }
  host.plans.update(run.id, { state: 'succeeded', nextStep: run.steps.length, error: null });
  return report;
}

async function runStep(
  host: PlanHost,
  run: PlanRun,
  index: number,
  actor: Actor,
  ctx: JobContext,
): Promise<string | undefined> {
  const step = run.steps[index]!;
  const opts = 'options' in step ? (step.options ?? {}) : {};
  switch (step.kind) {
    case 'takeover':
      return awaitJob(host, await host.dr.takeover(actor, { ...opts, group: step.target }), ctx);
    case 'rehearse':
      return awaitJob(host, host.dr.rehearse(actor, { ...opts, group: step.target }), ctx);
    case 'migrate':
      return awaitJob(host, await host.dr.migrate(actor, { ...opts, group: step.target }), ctx);
    case 'cleanup':
      return (await host.dr.cleanup(actor, step.target)).removed.join(', ') || 'nothing was left';
    case 'resync': {
      const r = await host.dr.resync(actor, step.target, opts as { rpoSeconds?: number });
      const groups = 'service' in r ? r.groups : [r];
      return groups.map((g) => `${g.name} replicating to ${g.peer}`).join(', ');
    }
    case 'start':
      return awaitJob(host, host.vms.startVm(actor, step.target), ctx);
    case 'stop':
      return awaitJob(host, host.vms.stopVm(actor, step.target, {}), ctx);
    case 'delay':
      await sleep(step.seconds * 1000, undefined, { signal: ctx.signal });
      return undefined;
    case 'heartbeat':
      return waitForHeartbeat(host.compute, step.target, parseHeartbeat(step.heartbeat), {
        timeoutSeconds: step.timeoutSeconds ?? 120,
        signal: ctx.signal,
      });
    case 'wait': {
      host.plans.update(run.id, { state: 'waiting' });
      const { actor: who } = await ctx.waitForOperator(step.message);
      host.plans.update(run.id, { state: 'running' });
      return `resumed by ${who}`;
    }
    case 'script':
      return runScript(host, run, index, step, ctx);
  }
}

async function awaitJob(host: PlanHost, job: Job, ctx: JobContext): Promise<string> {
  ctx.log(`job ${job.id} (${job.kind} ${job.target}) started`);
  const onAbort = () => host.jobs.cancel(job.id, 'plan');
  ctx.signal.addEventListener('abort', onAbort, { once: true });
  try {
    const end = await host.jobs.wait(job.id);
    if (end.state !== 'succeeded')
      throw new HavenError(
        end.errorCode ?? 'INTERNAL',
        `job ${job.id} (${job.kind} ${job.target}) ${end.state}: ${end.error ?? ''}`,
      );
    return `job ${job.id} succeeded`;
  } finally {
    ctx.signal.removeEventListener('abort', onAbort);
  }
}

/** A script step: its output (the last 64 KiB) goes to the job log; exit 0 goes on. */
function runScript(
  host: PlanHost,
  run: PlanRun,
  index: number,
  step: Extract<PlanStep, { kind: 'script' }>,
  ctx: JobContext,
): Promise<string> {
  const seconds = step.timeoutSeconds ?? DEFAULT_SCRIPT_SECONDS;
  return new Promise((resolve, reject) => {
    const child = spawn(step.path, step.args ?? [], {
      env: {
        PATH: process.env.PATH ?? '/usr/bin:/bin',
        HAVEN_PLAN: run.plan,
        HAVEN_PLAN_RUN: run.id,
        HAVEN_PLAN_STEP: String(index + 1),
        HAVEN_SITE: host.siteName,
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let output = '';
    const take = (b: Buffer) => {
      output = (output + b.toString('utf8')).slice(-SCRIPT_OUTPUT_BYTES);
    };
    child.stdout.on('data', take);
    child.stderr.on('data', take);
    const timer = setTimeout(() => child.kill('SIGKILL'), seconds * 1000);
    const onAbort = () => child.kill('SIGKILL');
    ctx.signal.addEventListener('abort', onAbort, { once: true });
    child.once('error', (err) => {
      clearTimeout(timer);
      reject(new HavenError('INVALID_ARGUMENT', `script ${step.path} could not run: ${err.message}`));
    });
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      ctx.signal.removeEventListener('abort', onAbort);
      for (const line of output.split('\n').filter(Boolean))
        ctx.log(`${step.path}: ${line}`, code === 0 ? 'info' : 'error');
      if (code === 0) return resolve(`exit 0`);
      const tail = output.trim().split('\n').slice(-3).join(' | ');
      reject(
        new HavenError(
          signal === 'SIGKILL' && !ctx.signal.aborted ? 'TIMEOUT' : 'INTERNAL',
          signal
            ? `script ${step.path} killed (${signal}${signal === 'SIGKILL' ? `, after ${seconds} s` : ''})`
            : `script ${step.path} exited ${code}${tail ? `: ${tail}` : ''}`,
        ),
      );
    });
  });
}
