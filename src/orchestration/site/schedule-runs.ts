import { existsSync } from 'node:fs';
import { isAbsolute, join, resolve } from 'node:path';
import { HavenError, invalidArgument } from '../../common/index.js';
import { openRepository, repoAccess } from '../../protection/index.js';
import { prune, selectRetained, type RetentionPolicy } from '../../repository/index.js';
import type { SiteBackups } from './backups.js';
import type { SiteChecks } from './checks.js';
import { SiteDomain, type SiteParts } from './domain.js';
import type { Job } from './jobs.js';
import type { ScheduleRun, ScheduleRunner } from './scheduler.js';
import type { ScheduleSpec } from './schedule-spec.js';

/** Scheduled snapshots are named for their time; retention looks at these only (a person's stay). */
export const SCHEDULED_SNAPSHOT_PREFIX = 'sched-';

/**
 * How each schedule kind runs on a site: a backup (of a VM or a volume, with its retention in the
 * same job), a snapshot of a volume or of every disk of a VM (with its retention), a prune, verify
 * or gc of a repository, a recoverability check (site.checks). Each run is a site job of that
 * kind's job type, dated by the scheduler's clock.
 */
export class ScheduledRuns extends SiteDomain implements ScheduleRunner {
  constructor(
    parts: SiteParts,
    private readonly backups: SiteBackups,
    private readonly checks: SiteChecks,
  ) {
    super(parts);
  }

  check(spec: ScheduleSpec): void {
    const p = spec.params ?? {};
    switch (spec.kind) {
      case 'backup':
      case 'snapshot':
        if (!this.isVm(spec.target) && !this.isVolume(spec.target))
          throw new HavenError(
            'NOT_FOUND',
            `unknown target ${spec.target}: a ${spec.kind} schedule takes a VM or a volume of this site`,
          );
        if (spec.kind === 'backup') this.checkRepository(String(p.repo), spec);
        break;
      case 'check':
        if (!this.isVm(spec.target))
          throw new HavenError('NOT_FOUND', `unknown target ${spec.target}: a check schedule takes a VM`);
        this.checkRepository(String(p.repo), spec);
        break;
      default:
        this.checkRepository(spec.target, spec);
    }
    if (p.passphraseFile !== undefined && !existsSync(String(p.passphraseFile)))
      throw invalidArgument(`passphrase file ${String(p.passphraseFile)} does not exist`);
  }

  repository(spec: ScheduleSpec): string | undefined {
    if (spec.kind === 'snapshot') return undefined;
    const r = spec.kind === 'backup' || spec.kind === 'check' ? spec.params?.repo : spec.target;
    return typeof r === 'string' ? resolve(r) : undefined;
  }

  start(spec: ScheduleSpec, actor: string, at: Date): ScheduleRun {
    const p = spec.params ?? {};
    const access = () =>
      repoAccess(this.repository(spec)!, typeof p.passphraseFile === 'string' ? p.passphraseFile : undefined);
    let job: Job;
    switch (spec.kind) {
      case 'backup':
        job = this.backups.backup(
          actor,
          this.isVm(spec.target) ? { vm: spec.target } : { volume: spec.target },
          access(),
          { at, ...(p.keep ? { retain: p.keep } : {}), ...(p.full === true ? { full: true } : {}) },
        );
        break;
      case 'snapshot':
        job = this.snapshot(actor, spec.target, at, p.keep);
        break;
      case 'prune':
        job = this.prune(actor, spec.target, access(), p.keep!);
        break;
      case 'verify':
        job = this.backups.verifyRepository(actor, {
          ...access(),
          ...(typeof p.rolling === 'number' ? { rolling: p.rolling } : {}),
        });
        break;
      case 'gc':
        job = this.backups.gcRepository(actor, access());
        break;
      case 'check':
        job = this.checks.start(actor, {
          vm: spec.target,
          repo: this.repository(spec)!,
          ...(typeof p.passphraseFile === 'string' ? { passphraseFile: p.passphraseFile } : {}),
          ...(typeof p.heartbeat === 'string' ? { heartbeat: p.heartbeat } : {}),
          ...(typeof p.script === 'string' ? { script: p.script } : {}),
          ...(typeof p.network === 'string' ? { network: p.network } : {}),
          ...(typeof p.timeoutSeconds === 'number' ? { timeoutSeconds: p.timeoutSeconds } : {}),
        });
        break;
      default:
        throw invalidArgument(`unknown schedule kind ${String(spec.kind)}`);
    }
    return {
      job: job.id,
      done: this.jobs.wait(job.id).then((j) => ({
        outcome: j.state === 'running' ? 'failed' : (j.state as 'succeeded' | 'failed' | 'cancelled'),
        ...(j.error ? { message: j.error } : {}),
      })),
    };
  }

  /**
   * Snapshots a volume, or every disk of a VM at one point, named sched-<time>; then keeps of the
   * scheduled snapshots of each what `keep` says (dated by their names), never the newest.
   */
  private snapshot(actor: string, target: string, at: Date, keep: RetentionPolicy | undefined): Job {
    const volumes = this.isVm(target) ? this.compute.vm(target).disks.map((d) => d.volume) : [target];
    const name = `${SCHEDULED_SNAPSHOT_PREFIX}${at
      .toISOString()
      .replace(/[-:]/g, '')
      .replace(/\.\d+Z$/, 'Z')}`;
    for (const v of volumes)
      if (this.storage.listSnapshots(v).some((s) => s.name === name))
        throw new HavenError('CONFLICT', `volume ${v} already has a snapshot ${name}`);
    return this.jobs.start({ kind: 'snapshot.create', target: `${target}@${name}`, actor }, async (ctx) => {
      ctx.progress(0, 1, 'snapshot');
      // One synchronous step: no write is served between two disks of a VM.
      for (const v of volumes) this.storage.snapshot(v, name);
      for (const v of volumes) this.exports.refreshVolume(v);
      const removed: string[] = [];
      if (keep)
        for (const v of volumes) {
          const mine = this.storage
            .listSnapshots(v)
            .filter((s) => s.name.startsWith(SCHEDULED_SNAPSHOT_PREFIX))
            .map((s) => ({ id: s.name, createdAt: snapshotTime(s.name) }))
            .filter((s) => s.createdAt !== undefined) as { id: string; createdAt: string }[];
          const kept = selectRetained(mine, keep);
          kept.set(name, ['newest']);
          for (const s of mine)
            if (!kept.has(s.id) && !this.exports.clientsOf(`${v}@${s.id}`)) {
              this.exports.withdraw(`${v}@${s.id}`);
              this.storage.deleteSnapshot(v, s.id);
              removed.push(`${v}@${s.id}`);
            }
        }
      if (removed.length) ctx.log(`retention: deleted ${removed.join(', ')}`);
      return { snapshot: name, volumes, removed };
    });
  }

  private prune(
    actor: string,
    repo: string,
    access: ReturnType<typeof repoAccess>,
    keep: RetentionPolicy,
  ): Job {
    return this.jobs.start({ kind: 'repository.prune', target: resolve(repo), actor }, async (ctx) => {
      const r = await openRepository(access);
      const report = await prune(r, keep);
      const removed = report.sources.flatMap((s) => s.removed);
      ctx.log(`forgot ${removed.length} snapshot(s)${removed.length ? `: ${removed.join(', ')}` : ''}`);
      return report;
    });
  }

  private checkRepository(repo: string, spec: ScheduleSpec): void {
    if (!isAbsolute(repo))
      throw invalidArgument(`a ${spec.kind} schedule's repository must be an absolute path, not ${repo}`);
    if (!existsSync(join(repo, 'config.json')))
      throw new HavenError(
        'NOT_FOUND',
        `unknown ${spec.kind === 'backup' || spec.kind === 'check' ? 'repository' : 'target'} ${repo}: not a Haven repository (create one with "haven repo init")`,
      );
  }

  private isVm(name: string): boolean {
    return this.compute.listVms().some((v) => v.name === name);
  }

  private isVolume(name: string): boolean {
    return this.storage.listVolumes().some((v) => v.name === name);
  }
}

/** sched-20260101T010000Z → 2026-01-01T01:00:00.000Z */
function snapshotTime(name: string): string | undefined {
  const m = /^sched-(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z$/.exec(name);
  return m ? `${m[1]}-${m[2]}-${m[3]}T${m[4]}:${m[5]}:${m[6]}.000Z` : undefined;
}
