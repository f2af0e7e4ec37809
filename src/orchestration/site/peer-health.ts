import { setTimeout as sleep } from 'node:timers/promises';
import { errorMessage, invalidArgument } from '../../common/index.js';
import type { EventLog } from './events.js';

/**
 * What this site knows of a paired site: `reachable` (its last heartbeat was answered),
 * `unreachable` (the last `missedLimit` were not), `taken-over` (this site took over groups
 * replicated from it, so whether it answers no longer decides anything for them), or `unknown`
 * (no heartbeat has ended since this daemon started).
 */
export type PeerState = 'unknown' | 'reachable' | 'unreachable' | 'taken-over';

export interface PeerHealth {
  state: PeerState;
  /** The link alone, whatever was taken over: reachable, unreachable or unknown. */
  link: 'unknown' | 'reachable' | 'unreachable';
  /** Heartbeats missed in a row (0 once one is answered). */
  missed: number;
  /** When the state last changed (or the daemon started watching). */
  since: string;
  /** The last heartbeat answered, and its round trip. */
  lastSeenAt?: string;
  rttMs?: number;
  /** Why the last heartbeat failed, while it does. */
  error?: string;
  /** The groups this site took over from it (state taken-over). */
  takenOver?: string[];
}

export interface HeartbeatOptions {
  /** Milliseconds between heartbeats to each peer (default 1000). */
  intervalMs?: number;
  /** Heartbeats missed in a row that make a peer unreachable (default 3). */
  missed?: number;
}

export const HEARTBEAT_DEFAULTS = { intervalMs: 1000, missed: 3 } as const;

/**
 * The link state of one peer from its heartbeats: a pure state machine (no I/O, no clock of its
 * own). One answered heartbeat makes it reachable; `missedLimit` unanswered in a row make it
 * unreachable; in between it stays what it was (one lost heartbeat is no outage).
 */
export class HeartbeatState {
  link: PeerHealth['link'] = 'unknown';
  missed = 0;
  since: Date;
  lastSeenAt?: Date;
  rttMs?: number;
  error?: string;

  constructor(
    private readonly missedLimit: number,
    at: Date,
  ) {
    this.since = at;
  }

  /** One heartbeat ended: answered (with its round trip) or not (why). Returns whether the link state changed. */
  beat(r: { ok: true; rttMs: number } | { ok: false; error: string }, at: Date): boolean {
    const before = this.link;
    if (r.ok) {
      this.missed = 0;
      this.lastSeenAt = at;
      this.rttMs = r.rttMs;
      delete this.error;
      this.link = 'reachable';
    } else {
      this.missed++;
      this.error = r.error;
      if (this.missed >= this.missedLimit) this.link = 'unreachable';
    }
    if (this.link === before) return false;
    this.since = at;
    return true;
  }
}

/** What the watcher needs: the peers paired now, a heartbeat call, which groups were taken over. */
export interface HealthParts {
  peers(): string[];
  ping(peer: string, timeoutMs: number): Promise<unknown>;
  /** The groups this site took over from `peer` (set by the site once replication exists). */
  takenOver?: (peer: string) => string[];
}

/**
 * Heartbeats to every paired site over the peer link (a `ping` call each `intervalMs`, one at a
 * time per peer), their state per peer, and an event (`peer.health`) for every change of it.
 */
export class PeerHealthWatch {
  private readonly states = new Map<string, HeartbeatState>();
  private readonly inFlight = new Map<string, Promise<boolean>>();
  /** The state each peer was last told in an event (for taken-over, with its link). */
  private readonly told = new Map<string, string>();
  private timer: NodeJS.Timeout | undefined;
  readonly intervalMs: number;
  readonly missedLimit: number;

  constructor(
    private readonly parts: HealthParts,
    private readonly events: EventLog,
    opts: HeartbeatOptions = {},
  ) {
    this.intervalMs = opts.intervalMs ?? HEARTBEAT_DEFAULTS.intervalMs;
    this.missedLimit = opts.missed ?? HEARTBEAT_DEFAULTS.missed;
    if (!(Number.isFinite(this.intervalMs) && this.intervalMs >= 100 && this.intervalMs <= 3_600_000))
      throw invalidArgument(`the peer heartbeat interval must be 0.1 s to 1 h, not ${this.intervalMs} ms`);
    if (!(Number.isInteger(this.missedLimit) && this.missedLimit >= 1 && this.missedLimit <= 1000))
      throw invalidArgument(
        `missed heartbeats must be a whole number from 1 to 1000, not ${this.missedLimit}`,
      );
  }

  set takenOver(fn: (peer: string) => string[]) {
    this.parts.takenOver = fn;
  }

  start(): void {
    if (this.timer) return;
    const tick = () => {
      for (const p of this.parts.peers()) if (!this.inFlight.has(p)) void this.beat(p);
    };
    tick();
    this.timer = setInterval(tick, this.intervalMs).unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }

  /** A peer's health now (unknown when no heartbeat to it has ended). */
  health(peer: string): PeerHealth {
    const s = this.state(peer);
    const takenOver = this.parts.takenOver?.(peer) ?? [];
    return {
      state: takenOver.length ? 'taken-over' : s.link,
      link: s.link,
      missed: s.missed,
      since: s.since.toISOString(),
      ...(s.lastSeenAt ? { lastSeenAt: s.lastSeenAt.toISOString() } : {}),
      ...(s.rttMs !== undefined ? { rttMs: s.rttMs } : {}),
      ...(s.error !== undefined ? { error: s.error } : {}),
      ...(takenOver.length ? { takenOver } : {}),
    };
  }

  /**
   * The link state, settled now: heartbeats until one is answered (reachable) or the peer has
   * missed enough to be unreachable — at most `missed` intervals. What a takeover asks before it
   * decides whether the source still answers.
   */
  async settle(peer: string): Promise<'reachable' | 'unreachable'> {
    for (;;) {
      if (await this.beat(peer)) return 'reachable';
      if (this.state(peer).link === 'unreachable') return 'unreachable';
      await sleep(this.intervalMs);
    }
  }

  /** The state may have changed without a heartbeat (a takeover here): tell it. */
  recheck(peer: string): void {
    this.tell(peer);
  }

  /** Forgets an unpaired peer. */
  forget(peer: string): void {
    this.states.delete(peer);
    this.told.delete(peer);
  }

  /** One heartbeat to `peer` (joining one in flight); whether it was answered. */
  private beat(peer: string): Promise<boolean> {
    const running = this.inFlight.get(peer);
    if (running) return running;
    const p = (async () => {
      const t = performance.now();
      let ok = false;
      try {
        await this.parts.ping(peer, Math.max(this.intervalMs, 2000));
        ok = true;
        this.state(peer).beat({ ok, rttMs: Math.round((performance.now() - t) * 10) / 10 }, new Date());
      } catch (err) {
        this.state(peer).beat({ ok: false, error: errorMessage(err) }, new Date());
      }
      this.tell(peer);
      return ok;
    })().finally(() => this.inFlight.delete(peer));
    this.inFlight.set(peer, p);
    return p;
  }

  private state(peer: string): HeartbeatState {
    let s = this.states.get(peer);
    if (!s) {
      s = new HeartbeatState(this.missedLimit, new Date());
      this.states.set(peer, s);
    }
    return s;
  }

  private tell(peer: string): void {
    if (!this.parts.peers().includes(peer)) return; // unpaired meanwhile
    const h = this.health(peer);
    const before = this.told.get(peer);
    const key = h.state === 'taken-over' ? `taken-over, link ${h.link}` : h.state;
    if (h.state === 'unknown' || key === before) return;
    this.told.set(peer, key);
    this.events.append({
      actor: 'site',
      action: 'peer.health',
      target: peer,
      outcome: h.state === 'unreachable' ? 'warning' : h.state === 'taken-over' ? 'info' : 'ok',
      message:
        h.state === 'reachable'
          ? `site ${peer} is reachable (heartbeat answered in ${h.rttMs} ms)`
          : h.state === 'unreachable'
            ? `site ${peer} is unreachable: ${h.missed} heartbeats missed in a row (${h.error})`
            : `site ${peer} is taken over (its link is ${h.link}): this site runs its group(s) ${h.takenOver!.join(', ')}`,
      details: { state: h.state, link: h.link, missed: h.missed, ...(before ? { was: before } : {}) },
    });
  }
}
