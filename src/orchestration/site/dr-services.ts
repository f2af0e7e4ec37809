import { setTimeout as sleep } from 'node:timers/promises';
import { HavenError } from '../../common/index.js';
import type { JobContext } from './jobs.js';
import {
  cleanupRehearsal,
  planRehearsal,
  runRehearsal,
  type RehearsalHost,
  type RehearsalReport,
  type RehearsalRequest,
} from './dr-rehearsal.js';
import {
  planTakeover,
  round,
  runTakeover,
  type TakeoverHost,
  type TakeoverReport,
  type TakeoverRequest,
} from './dr-takeover.js';
import type { BusinessService } from './services.js';

/** What a service-wide operation did, tier by tier. */
export interface ServiceReport<T> {
  service: string;
  tiers: { tier: number; startedAt: string; groups: T[] }[];
  startedAt: string;
  endedAt: string;
  elapsedSeconds: number;
}

type Host = TakeoverHost & RehearsalHost;

/** Plans a takeover of every group of the service first: one refusal, and nothing changes anywhere. */
export function planServiceTakeover(host: Host, s: BusinessService, req: Omit<TakeoverRequest, 'group'>) {
  return s.tiers.map((tier) => tier.map((group) => planTakeover(host, { ...req, group })));
}

/** Takes the service's groups over tier by tier (tier 1 first), waiting the boot delay between tiers. */
export async function runServiceTakeover(
  host: Host,
  s: BusinessService,
  plans: ReturnType<typeof planServiceTakeover>,
  opts: { start: boolean; peerReachable: boolean },
  ctx: JobContext,
): Promise<ServiceReport<TakeoverReport>> {
  return tierByTier(s, ctx, async (i) => {
    const out: TakeoverReport[] = [];
    for (const plan of plans[i]!) out.push(await runTakeover(host, plan, opts, ctx));
    return out;
  });
}

export function planServiceRehearsal(host: Host, s: BusinessService, req: Omit<RehearsalRequest, 'group'>) {
  return s.tiers.map((tier) =>
    tier.map((group) => ({ req: { ...req, group }, record: planRehearsal(host, { ...req, group }) })),
  );
}

export async function runServiceRehearsal(
  host: Host,
  s: BusinessService,
  plans: ReturnType<typeof planServiceRehearsal>,
  ctx: JobContext,
): Promise<ServiceReport<RehearsalReport>> {
  const report = await tierByTier(s, ctx, async (i) => {
    const out: RehearsalReport[] = [];
    for (const p of plans[i]!) out.push(await runRehearsal(host, p.req, p.record, ctx));
    return out;
  });
  const failed = report.tiers.flatMap((t) => t.groups).flatMap((g) => g.vms.filter((v) => !v.passed));
  if (failed.length)
    throw new HavenError(
      'CORRUPT',
      `rehearsal of business service ${s.name} failed: ${failed.map((v) => `${v.name}: ${v.detail}`).join('; ')} (its VMs stay up until haven dr cleanup ${s.name})`,
    );
  return report;
}

/** Cleans up the rehearsals of every group of the service that has one, last tier first. */
export async function cleanupService(
  host: Host,
  s: BusinessService,
): Promise<{ service: string; removed: string[] }> {
  const removed: string[] = [];
  for (const tier of [...s.tiers].reverse())
    for (const g of tier)
      if (host.replication.rehearsalOf(g)) removed.push(...(await cleanupRehearsal(host, g)).removed);
  return { service: s.name, removed };
}

/** Runs `run` for each tier in order, the service's boot delay between tiers; the report of each. */
export async function tierByTier<T>(
  s: BusinessService,
  ctx: JobContext,
  run: (tier: number) => Promise<T[]>,
): Promise<ServiceReport<T>> {
  const started = new Date();
  const tiers: ServiceReport<T>['tiers'] = [];
  for (let i = 0; i < s.tiers.length; i++) {
    if (i > 0 && s.bootDelaySeconds > 0) {
      ctx.log(`waiting ${s.bootDelaySeconds} s before tier ${i + 1}`);
      await sleep(s.bootDelaySeconds * 1000, undefined, { signal: ctx.signal });
    }
    const startedAt = new Date().toISOString();
    ctx.log(`tier ${i + 1}: ${s.tiers[i]!.join(', ')}`);
    tiers.push({ tier: i + 1, startedAt, groups: await run(i) });
  }
  const ended = new Date();
  return {
    service: s.name,
    tiers,
    startedAt: started.toISOString(),
    endedAt: ended.toISOString(),
    elapsedSeconds: round((ended.getTime() - started.getTime()) / 1000),
  };
}
