import type { ApiClient } from '../api/client.js';
import { HavenError, errorMessage, invalidArgument } from '../common/index.js';
import type { Job } from '../orchestration/index.js';
import { withSite, type ApiOpts } from './api.js';
import { printResult } from './output.js';
import { barLine, progressView } from './progress.js';

/**
 * What every job-starting command prints with --json (docs/cli.md): the job, with its `result`
 * once it succeeded. A job a site ran (its daemon, or the site opened here with --data) has its
 * `id` (and `actor`); an operation this process ran itself (image files, NBD URIs, repositories)
 * has no id.
 */
export type JobView = Omit<Job, 'id' | 'actor'> & { id?: string; actor?: string };

/** Follows a site job to its end, with progress on stderr; returns the finished job, whatever its state. */
export async function followJob(client: ApiClient, job: Job, o: { json?: boolean } = {}): Promise<Job> {
  const view = progressView(`${job.kind} ${job.target}`, o);
  let last = job;
  try {
    await client.stream(`/jobs/${job.id}/watch`, (data) => {
      last = data as Job;
      const p = last.progress;
      if (last.state === 'running' && p.totalBytes > 0)
        view.update({
          done: p.doneBytes,
          total: p.totalBytes,
          phase: p.phase ?? last.kind,
          rate: p.rateBytesPerSecond,
          ...(p.etaSeconds !== undefined ? { eta: p.etaSeconds } : {}),
        });
    });
  } finally {
    view.end();
  }
  if (last.state === 'running') last = await client.get<Job>(`/jobs/${job.id}`);
  return last;
}

/** The error of a job that did not succeed: its own code, so a user's mistake reads as one. */
export function jobFailure(j: JobView): HavenError {
  return new HavenError(
    j.state === 'cancelled' ? 'CANCELLED' : (j.errorCode ?? 'INTERNAL'),
    `${j.id ? `job ${j.id} ` : ''}(${j.kind} ${j.target}) ${j.state}: ${j.error ?? 'no reason given'}`,
  );
}

/**
 * Starts a job through the API and, unless --no-wait, follows it to its end. --json prints the
 * job (running, with --no-wait; else finished, with its result or error); a job that did not
 * succeed also ends the command with its error. With --data the site runs in this process
 * (withSite), so the command always waits: its job cannot outlive it.
 */
export async function runJob(
  o: ApiOpts & { wait: boolean; data?: string },
  start: (client: ApiClient) => Promise<Job>,
  done: (j: Job) => string,
): Promise<void> {
  if (o.data && !o.wait)
    throw invalidArgument(
      `--no-wait needs the site daemon: with --data ${o.data} the job runs in this command's process and ends with it`,
    );
  return withSite(o, async (client) => {
    const job = await start(client);
    if (!o.wait) return printResult(!!o.json, job, () => `job ${job.id} (${job.kind} ${job.target}) started`);
    const end = await followJob(client, job, { json: !!o.json });
    if (end.state !== 'succeeded') {
      if (o.json) printResult(true, end, () => '');
      throw jobFailure(end);
    }
    printResult(!!o.json, end, () => done(end));
  });
}

/** Reports progress of an in-process operation: (bytes done, bytes in all, phase). */
export type OnProgress = (done: number, total: number, phase?: string) => void;

/**
 * Runs an operation in this process with the same face as a site job: progress on stderr while
 * it runs, and with --json the job shape with `result` (or, when it fails, its error).
 */
export async function runLocal<T>(
  o: { json?: boolean },
  // progress false: none shown (`nbd copy` without --progress).
  spec: { kind: string; target: string; progress?: boolean },
  run: (onProgress: OnProgress) => Promise<T>,
  human: (r: T) => string,
): Promise<T> {
  const createdAt = new Date().toISOString();
  const t0 = Date.now();
  const view =
    spec.progress === false
      ? { update: () => undefined, end: () => undefined }
      : progressView(`${spec.kind} ${spec.target}`, o);
  let doneBytes = 0;
  let totalBytes = 0;
  let phase: string | undefined;
  const job = (state: Job['state'], extra: Partial<JobView>): JobView => {
    const secs = (Date.now() - t0) / 1000;
    return {
      kind: spec.kind,
      target: spec.target,
      state,
      progress: {
        ...(phase ? { phase } : {}),
        doneBytes,
        totalBytes,
        rateBytesPerSecond: secs > 0 ? Math.round(doneBytes / secs) : 0,
      },
      createdAt,
      startedAt: createdAt,
      endedAt: new Date().toISOString(),
      ...extra,
    };
  };
  let r: T;
  try {
    r = await run((done, total, p) => {
      doneBytes = done;
      totalBytes = total;
      phase = p;
      view.update({ done, total, ...(p ? { phase: p } : {}) });
    });
  } catch (err) {
    view.end();
    if (o.json) {
      const code = err instanceof HavenError ? err.code : 'INTERNAL';
      printResult(
        true,
        job(code === 'CANCELLED' ? 'cancelled' : 'failed', {
          error: errorMessage(err),
          errorCode: code,
        }),
        () => '',
      );
    }
    throw err;
  }
  view.end();
  printResult(!!o.json, job('succeeded', { result: r }), () => human(r));
  return r;
}

/** A job in one line, as `haven job show` starts: kind, target, bar, bytes, rate, ETA, state. */
export function progressLine(j: Job): string {
  const p = j.progress;
  const frac = p.totalBytes > 0 ? Math.min(p.doneBytes / p.totalBytes, 1) : j.state === 'succeeded' ? 1 : 0;
  const step = { done: p.doneBytes, total: p.totalBytes };
  const eta = j.state === 'running' ? p.etaSeconds : undefined;
  return `${barLine(`${j.kind} ${j.target}`, frac, step, p.rateBytesPerSecond, eta)} ${j.state}`;
}
