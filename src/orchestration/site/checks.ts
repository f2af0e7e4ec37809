import { spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { accessSync, constants, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  HavenError,
  conflict,
  type HavenErrorCode,
  errorMessage,
  invalidArgument,
  logger,
  notFound,
} from '../../common/index.js';
import { openRepository, repoAccess } from '../../protection/index.js';
import { checkName } from '../../storage/index.js';
import { parseHeartbeat, waitForHeartbeat, type Heartbeat } from './check-heartbeat.js';
import { now, selectNewest, type Db } from './database.js';
import { SiteDomain, type Actor, type SiteParts } from './domain.js';
import type { Job, JobContext } from './jobs.js';
import type { RecoveryService } from './recovery.js';

const log = logger('checks');
/** The console log kept per check: its last 256 KiB. */
const KEPT_CONSOLE_BYTES = 256 * 1024;
const DEFAULT_TIMEOUT_SECONDS = 120;

/** What a recoverability check is asked to do (the scheduler's spec: target = vm, params = the rest). */
export interface CheckRequest {
  /** The VM whose backup is checked (it need not exist on this site any more). */
  vm: string;
  repo: string;
  passphraseFile?: string;
  /** A VM backup of `vm` (default: its newest in `repo`). */
  snapshot?: string;
  /** agent (default), console:REGEX or tcp:HOST:PORT (see parseHeartbeat). */
  heartbeat?: string;
  /** Run after the heartbeat: exit 0 passes (env: HAVEN_CHECK_VM, HAVEN_CHECK_CONSOLE_LOG, …). */
  script?: string;
  /** For the heartbeat, and again for the script (default 120). */
  timeoutSeconds?: number;
  /** An existing network for every NIC, or none; default: an isolated network made for the check. */
  network?: string;
}

export interface RecoveryCheck {
  id: string;
  vm: string;
  repo: string;
  snapshot?: string;
  /** The recovered copy, while it exists: VM-check-<short id>. */
  checkVm: string;
  network?: string;
  heartbeat: string;
  script?: string;
  job?: string;
  actor: string;
  state: 'running' | 'passed' | 'failed';
  reason?: string;
  startedAt: string;
  endedAt?: string;
  durationSeconds?: number;
  /** The guest's console during the check (its last 256 KiB), kept under the data directory. */
  consoleLog?: string;
}

interface CheckRow {
  id: string;
  vm: string;
  repo: string;
  snapshot: string | null;
  check_vm: string;
  network: string | null;
  made_network: number;
  heartbeat: string;
  script: string | null;
  job: string | null;
  actor: string;
  state: RecoveryCheck['state'];
  reason: string | null;
  started_at: string;
  ended_at: string | null;
  duration_seconds: number | null;
  console_log: string | null;
}

/** Why a check failed: the backup, or the guest booted from it, did not pass verification. */
const failed = (reason: string, code: 'CORRUPT' | 'TIMEOUT' = 'CORRUPT') => new HavenError(code, reason);

/**
 * Recoverability checks (beyond SureBackup): a VM's backup is instantly recovered under a new
 * name on an isolated network made for the check (or none), booted, checked — a heartbeat (guest
 * agent, console pattern, TCP port) and an optional script — and torn down whatever happened:
 * the VM killed and deleted, its volumes (the overlay over the backup) deleted, the backup
 * released, the network removed. Each check is recorded with its console log. A check the
 * daemon did not finish (killed) is torn down and recorded failed at the next start.
 */
export class SiteChecks extends SiteDomain {
  constructor(
    parts: SiteParts,
    private readonly db: Db,
    private readonly recovery: RecoveryService,
    private readonly dataDir: string,
  ) {
    super(parts);
  }

  /** Starts a check as a job (kind recovery.check, target the VM); it fails when the check fails. */
  start(actor: Actor, req: CheckRequest): Job {
    checkName('VM', req.vm);
    const heartbeat = parseHeartbeat(req.heartbeat);
    const timeout = req.timeoutSeconds ?? DEFAULT_TIMEOUT_SECONDS;
    if (!(timeout > 0 && timeout <= 86400))
      throw invalidArgument(`the check's timeout must be from 1 s to 1 day, not ${timeout} s`);
    if (req.script !== undefined) {
      try {
        accessSync(req.script, constants.X_OK);
      } catch {
        throw invalidArgument(`check script ${req.script} is not an executable file the site daemon can run`);
      }
    }
    if (req.network !== undefined && req.network !== 'none') this.compute.network(req.network);
    if (this.runningFor(req.vm))
      throw conflict(
        `a recoverability check of ${req.vm} is running already (haven recover checks --vm ${req.vm})`,
      );
    const id = randomUUID();
    // Short enough that its volumes (NAME-DISK) stay within the 64 characters of a name.
    const checkVm = `${req.vm.slice(0, 32)}-check-${id.slice(0, 8)}`;
    const madeNetwork = req.network === undefined;
    const network = madeNetwork ? checkVm : req.network === 'none' ? undefined : req.network;
    this.db
      .prepare(
        `INSERT INTO recovery_checks (id, vm, repo, check_vm, network, made_network, heartbeat, script, actor, state, started_at)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'running', ?)`,
      )
      .run(
        id,
        req.vm,
        req.repo,
        checkVm,
        network ?? null,
        madeNetwork ? 1 : 0,
        req.heartbeat ?? 'agent',
        req.script ?? null,
        actor,
        now(),
      );
    const job = this.jobs.start({ kind: 'recovery.check', target: req.vm, actor }, (ctx) =>
      this.run(id, req, heartbeat, timeout, ctx),
    );
    this.db.prepare('UPDATE recovery_checks SET job = ? WHERE id = ?').run(job.id, id);
    return job;
  }

  list(q: { vm?: string; limit?: number } = {}): RecoveryCheck[] {
    return selectNewest<CheckRow>(this.db, 'recovery_checks', q, ['vm'], 'started_at DESC, rowid DESC').map(
      toCheck,
    );
  }

  get(id: string): RecoveryCheck {
    const r = this.db.prepare('SELECT * FROM recovery_checks WHERE id = ?').get(id) as CheckRow | undefined;
    if (!r) throw notFound(`no recoverability check ${id}`);
    return toCheck(r);
  }

  /** The newest finished check of a VM (what compliance reads: "last recoverability check passed"). */
  last(vm: string): RecoveryCheck | undefined {
    const r = this.db
      .prepare(
        "SELECT * FROM recovery_checks WHERE vm = ? AND state != 'running' ORDER BY started_at DESC, rowid DESC LIMIT 1",
      )
      .get(vm) as CheckRow | undefined;
    return r ? toCheck(r) : undefined;
  }

  /**
   * At site open, after the VMs are reattached: every check the previous daemon left running is
   * torn down (its VM, volumes, backup and network) and recorded failed.
   */
  async cleanupInterrupted(): Promise<void> {
    const rows = this.db.prepare("SELECT * FROM recovery_checks WHERE state = 'running'").all() as CheckRow[];
    for (const r of rows) {
      const kept = this.keepConsole(r);
      let note = '';
      try {
        await this.teardown(r);
      } catch (err) {
        note = `; tearing down failed: ${errorMessage(err)}`;
        log.error(
          { check: r.id, vm: r.check_vm, err: errorMessage(err) },
          'an interrupted check was not torn down',
        );
      }
      this.finish(
        r,
        'failed',
        `the site daemon stopped during the check; torn down at the next start${note}`,
        kept,
      );
      log.warn({ check: r.id, vm: r.vm }, 'an interrupted recoverability check was torn down');
    }
  }

  private async run(
    id: string,
    req: CheckRequest,
    heartbeat: Heartbeat,
    timeout: number,
    ctx: JobContext,
  ): Promise<RecoveryCheck> {
    const row = () => this.db.prepare('SELECT * FROM recovery_checks WHERE id = ?').get(id) as CheckRow;
    let reason: string | undefined;
    let code: HavenErrorCode = 'CORRUPT';
    try {
      const access = repoAccess(req.repo, req.passphraseFile);
      const snapshot = req.snapshot ?? (await this.newestBackup(req.vm, access));
      this.db.prepare('UPDATE recovery_checks SET snapshot = ? WHERE id = ?').run(snapshot, id);
      const r = row();
      if (r.made_network) {
        this.compute.createNetwork(r.network!, 'isolated');
        ctx.log(`isolated network ${r.network} made for the check`);
      }
      ctx.progress(0, 0, 'recovering');
      const { seconds } = await this.recovery.instant({
        ...access,
        ...(req.passphraseFile ? { passphraseFile: req.passphraseFile } : {}),
        snapshot,
        name: r.check_vm,
        network: r.network ?? 'none',
      });
      ctx.log(
        `backup ${snapshot} runs as VM ${r.check_vm} (started in ${seconds.toFixed(1)} s); waiting for ${r.heartbeat}`,
      );
      ctx.progress(0, 0, 'heartbeat');
      const beat = await this.heartbeat(r.check_vm, heartbeat, timeout, ctx.signal);
      ctx.log(beat);
      if (req.script !== undefined) {
        ctx.progress(0, 0, 'script');
        const out = await this.script(r, snapshot, req.script, timeout, ctx.signal);
        ctx.log(`script ${req.script} passed${out ? `: ${out}` : ''}`);
      }
    } catch (err) {
      reason = errorMessage(err);
      code = err instanceof HavenError ? err.code : 'INTERNAL';
      if (ctx.signal.aborted) reason = `cancelled: ${reason}`;
    }
    const r = row();
    const kept = this.keepConsole(r);
    ctx.progress(0, 0, 'teardown');
    try {
      await this.teardown(r);
      ctx.log(`torn down: VM ${r.check_vm}, its volumes${r.made_network ? `, network ${r.network}` : ''}`);
    } catch (err) {
      reason = `${reason ?? 'passed'}; tearing down failed: ${errorMessage(err)}`;
      ctx.log(`tearing down failed: ${errorMessage(err)}`, 'error');
    }
    this.finish(r, reason === undefined ? 'passed' : 'failed', reason, kept);
    // The job fails with the check (event recovery.check failed), with the code of what failed it.
    if (reason !== undefined) throw new HavenError(code, reason);
    return this.get(id);
  }

  private async newestBackup(vm: string, access: ReturnType<typeof repoAccess>): Promise<string> {
    const repo = await openRepository(access);
    const of = (await repo.listSnapshots()).filter(
      (s) => s.vm !== undefined && (s.source.name === vm || (s.vm as { name?: string }).name === vm),
    );
    if (!of.length)
      throw notFound(`repository ${access.repo} holds no VM backup of ${vm} (haven backup vm:${vm})`);
    return of.reduce((a, b) => (b.createdAt > a.createdAt ? b : a)).id;
  }

  /** Resolves with what was seen; rejects with why not, as soon as it is clear. */
  private heartbeat(vm: string, hb: Heartbeat, timeoutSeconds: number, signal: AbortSignal): Promise<string> {
    return waitForHeartbeat(this.compute, vm, hb, {
      timeoutSeconds,
      signal,
      // The backup itself failing to read is the clearest reason there is.
      failIf: () => {
        const re = this.recovery.readError(vm);
        return re
          ? `the backup could not be read: disk ${re.disk} at offset ${re.offset}: ${re.message} (${re.failedReads} failed read${re.failedReads === 1 ? '' : 's'})`
          : undefined;
      },
    });
  }

  /** Runs the check's script; resolves with the end of its output when it exits 0. */
  private script(
    r: CheckRow,
    snapshot: string,
    path: string,
    timeoutSeconds: number,
    signal: AbortSignal,
  ): Promise<string> {
    return new Promise((resolve, reject) => {
      const child = spawn(path, [], {
        stdio: ['ignore', 'pipe', 'pipe'],
        env: {
          ...process.env,
          HAVEN_CHECK_VM: r.check_vm,
          HAVEN_CHECK_SOURCE_VM: r.vm,
          HAVEN_CHECK_SNAPSHOT: snapshot,
          HAVEN_CHECK_CONSOLE_LOG: this.compute.consoleLogPath(r.check_vm),
          ...(r.network ? { HAVEN_CHECK_NETWORK: r.network } : {}),
        },
      });
      let out = '';
      const take = (b: Buffer) => {
        out = (out + b.toString('utf8')).slice(-2000);
      };
      child.stdout.on('data', take);
      child.stderr.on('data', take);
      let why: string | undefined;
      const kill = (reason: string) => {
        why = reason;
        child.kill('SIGKILL');
      };
      const timer = setTimeout(
        () => kill(`script ${path} ran longer than ${timeoutSeconds} s`),
        timeoutSeconds * 1000,
      );
      const onAbort = () => kill('cancelled');
      signal.addEventListener('abort', onAbort, { once: true });
      child.once('error', (e) => {
        why ??= `script ${path} could not run: ${e.message}`;
      });
      child.once('close', (code, sig) => {
        clearTimeout(timer);
        signal.removeEventListener('abort', onAbort);
        const tail = out.trim().split('\n').slice(-3).join(' | ');
        if (why) reject(failed(why));
        else if (code === 0) resolve(tail);
        else
          reject(
            failed(
              `script ${path} failed (${sig ? `signal ${sig}` : `exit ${code}`})${tail ? `: ${tail}` : ''}`,
            ),
          );
      });
    });
  }

  /** The check VM's console, bounded, into DATA/checks/ID.console.log (before the VM and its files go). */
  private keepConsole(r: CheckRow): string | undefined {
    if (!this.compute.listVms().some((v) => v.name === r.check_vm)) return undefined;
    try {
      const dir = join(this.dataDir, 'checks');
      mkdirSync(dir, { recursive: true, mode: 0o700 });
      const path = join(dir, `${r.id}.console.log`);
      writeFileSync(path, this.compute.consoleLog(r.check_vm, KEPT_CONSOLE_BYTES), { mode: 0o600 });
      return path;
    } catch (err) {
      log.warn({ check: r.id, err: errorMessage(err) }, 'the console log of a check was not kept');
      return undefined;
    }
  }

  /** Everything the check made goes, whatever state it is in; each step skipped when done already. */
  private async teardown(r: CheckRow): Promise<void> {
    await this.recovery.drop(r.check_vm);
    // A daemon killed inside the instant recovery may have made volumes before it recorded them.
    for (const v of this.storage.listVolumes())
      if (v.name.startsWith(`${r.check_vm}-`) && !v.name.includes('@')) {
        this.exports.withdraw(v.name);
        this.storage.deleteVolume(v.name);
      }
    this.exports.refresh();
    if (r.made_network && r.network && this.compute.listNetworks().some((n) => n.name === r.network))
      this.compute.deleteNetwork(r.network);
  }

  private finish(
    r: CheckRow,
    state: 'passed' | 'failed',
    reason: string | undefined,
    consoleLog: string | undefined,
  ): void {
    const ended = now();
    this.db
      .prepare(
        'UPDATE recovery_checks SET state = ?, reason = ?, ended_at = ?, duration_seconds = ?, console_log = COALESCE(?, console_log) WHERE id = ?',
      )
      .run(
        state,
        reason ?? null,
        ended,
        (Date.parse(ended) - Date.parse(r.started_at)) / 1000,
        consoleLog ?? null,
        r.id,
      );
  }

  private runningFor(vm: string): boolean {
    return !!this.db.prepare("SELECT 1 FROM recovery_checks WHERE vm = ? AND state = 'running'").get(vm);
  }
}

function toCheck(r: CheckRow): RecoveryCheck {
  return {
    id: r.id,
    vm: r.vm,
    repo: r.repo,
    ...(r.snapshot ? { snapshot: r.snapshot } : {}),
    checkVm: r.check_vm,
    ...(r.network ? { network: r.network } : {}),
    heartbeat: r.heartbeat,
    ...(r.script ? { script: r.script } : {}),
    ...(r.job ? { job: r.job } : {}),
    actor: r.actor,
    state: r.state,
    ...(r.reason ? { reason: r.reason } : {}),
    startedAt: r.started_at,
    ...(r.ended_at ? { endedAt: r.ended_at } : {}),
    ...(r.duration_seconds !== null ? { durationSeconds: r.duration_seconds } : {}),
    ...(r.console_log ? { consoleLog: r.console_log } : {}),
  };
}
