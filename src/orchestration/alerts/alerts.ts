import type { EventEmitter } from 'node:events';
import { errorMessage, invalidArgument, logger, notFound } from '../../common/index.js';
import { Channels, describeChannel, type AddChannelRequest, type Channel } from './channels.js';
import { Deliveries, type DeliveryOptions } from './deliveries.js';
import {
  RULES,
  STATE_RULES,
  alertKey,
  eventSignals,
  ruleInfo,
  stateObjects,
  stateSignals,
  type JobFacts,
  type RuleEvent,
  type RuleInfo,
  type Signal,
} from './rules.js';
import { sendEmail, sendWebhook, type Notification } from './senders.js';
import { Silences, type Silence } from './silences.js';
import { gatherState, type StateParts } from './state.js';
import { AlertStore, type Alert } from './store.js';

const log = logger('alerts');

/** The site's event log as the alerts use it: they follow it and write their own events into it. */
export interface AlertEventLog extends EventEmitter {
  append(e: {
    actor: string;
    action: string;
    target: string;
    outcome: 'ok' | 'failed' | 'info' | 'warning';
    message: string;
    details?: Record<string, unknown>;
  }): unknown;
}

export interface AlertOptions {
  /** How often the state rules look (default 60 s). */
  checkIntervalSeconds?: number;
  /** A pool or repository file system this full fires (percent, default 90). */
  fullPercent?: number;
  delivery?: DeliveryOptions;
}

export interface AlertParts extends StateParts {
  site: string;
  version: string;
  events: AlertEventLog;
  /** What the job of a job event ended with (its error code), if it is known. */
  job(id: string): JobFacts | undefined;
}

export interface AlertQuery {
  state?: 'open' | 'resolved';
  rule?: string;
  limit?: number;
}

/**
 * Alerts of a site: the rules (rules.ts) applied to every event of the log as it is appended and
 * to the site's state on one timer; an alert per rule and object, opened once, seen again (count,
 * last seen), resolved; `alert.fire` and `alert.resolve` events; notifications to the channels
 * unless a silence holds them back (the alert is still recorded).
 */
export class SiteAlerts {
  private readonly store: AlertStore;
  private readonly silencesStore: Silences;
  private readonly channelStore: Channels;
  private readonly deliveries: Deliveries;
  private timer: NodeJS.Timeout | undefined;
  private checking: Promise<void> | undefined;
  private readonly intervalMs: number;
  private readonly fullPercent: number;
  private readonly onEvent = (e: RuleEvent & { details?: Record<string, unknown> }) => this.follow(e);
  private closed = false;

  constructor(
    private readonly p: AlertParts,
    opts: AlertOptions = {},
  ) {
    const interval = opts.checkIntervalSeconds ?? 60;
    if (!(interval > 0)) throw invalidArgument(`the alert check interval must be above 0 s, not ${interval}`);
    const full = opts.fullPercent ?? 90;
    if (!(full > 0 && full <= 100))
      throw invalidArgument(`the "near full" threshold is a percentage in (0, 100], not ${full}`);
    this.intervalMs = interval * 1000;
    this.fullPercent = full;
    this.store = new AlertStore(p.db);
    this.silencesStore = new Silences(p.db, this.store);
    this.channelStore = new Channels(p.db);
    this.deliveries = new Deliveries(
      p.db,
      this.channelStore,
      (c, n, id) => this.sendTo(c, n, id),
      (c, n, why) =>
        this.p.events.append({
          actor: 'system',
          action: 'alert.notify',
          target: String(c.id),
          outcome: 'failed',
          message: `notification ${n.type} to ${describeChannel(c)}: ${why}`,
          ...(n.alert ? { details: { alert: n.alert.id } } : {}),
        }),
      opts.delivery,
    );
    // Follows from the start, so that jobs a previous daemon left running, failed at open, count.
    p.events.on('event', this.onEvent);
  }

  /** Starts the state check and sends what a previous daemon left pending. */
  start(): void {
    this.deliveries.start();
    this.timer = setInterval(() => void this.check(), this.intervalMs).unref();
    void this.check();
  }

  async close(): Promise<void> {
    this.closed = true;
    this.p.events.off('event', this.onEvent);
    clearInterval(this.timer);
    await this.checking;
    await this.deliveries.close();
  }

  rules(): readonly RuleInfo[] {
    return RULES;
  }

  /** How many alerts are open, per rule (every rule, zero included). */
  openCounts(): { rule: string; severity: string; open: number }[] {
    const open = this.store.openByRule();
    return RULES.map((r) => ({ rule: r.name, severity: r.severity, open: open.get(r.name) ?? 0 }));
  }

  list(q: AlertQuery = {}): Alert[] {
    if (q.rule !== undefined) this.knownRule(q.rule);
    const now = Date.now();
    return this.store.list(q).map((a) => this.withSilence(a, now));
  }

  get(id: number): Alert {
    const a = this.store.get(id);
    if (!a) throw notFound(`no alert ${id}: see haven alert list`);
    return this.withSilence(a, Date.now());
  }

  /** Runs the state rules now (the timer does it every interval); one check at a time. */
  check(): Promise<void> {
    this.checking ??= this.runCheck().finally(() => (this.checking = undefined));
    return this.checking;
  }

  silence(actor: string, target: string, forSeconds: number, comment?: string): Silence {
    const s = this.silencesStore.add(actor, target, forSeconds, comment, Date.now());
    this.silencesStore.prune(Date.now());
    this.p.events.append({
      actor,
      action: 'alert.silence',
      target,
      outcome: 'ok',
      message: `alerts of ${s.rule ? `rule ${s.rule}` : `alert ${s.alert}`} silenced until ${s.expiresAt}${comment ? `: ${comment}` : ''}`,
      details: { silence: s.id },
    });
    return s;
  }

  silences(): Silence[] {
    return this.silencesStore.active(Date.now());
  }

  unsilence(actor: string, id: number): Silence {
    const s = this.silencesStore.remove(id);
    this.p.events.append({
      actor,
      action: 'alert.unsilence',
      target: s.rule ?? String(s.alert),
      outcome: 'ok',
      message: `silence ${id} removed`,
      details: { silence: id },
    });
    return s;
  }

  addChannel(actor: string, req: AddChannelRequest): Channel {
    const c = this.channelStore.add(req, new Date().toISOString());
    this.p.events.append({
      actor,
      action: 'alert.notify.add',
      target: String(c.id),
      outcome: 'ok',
      message: `alerts go to ${describeChannel(c)} (channel ${c.id})`,
    });
    return c;
  }

  channels(): Channel[] {
    return this.channelStore.list();
  }

  removeChannel(actor: string, id: number): Channel {
    const c = this.channelStore.remove(id);
    this.p.events.append({
      actor,
      action: 'alert.notify.remove',
      target: String(id),
      outcome: 'ok',
      message: `alerts no longer go to ${describeChannel(c)} (channel ${id})`,
    });
    return c;
  }

  /** Sends a test notification to one channel now, once; its failure is the answer's error. */
  async testChannel(actor: string, id: number): Promise<{ channel: number; sent: true }> {
    const c = this.channelStore.get(id);
    const n: Notification = {
      type: 'alert.test',
      site: this.p.site,
      summary: `[haven ${this.p.site}] test notification from ${actor}`,
    };
    try {
      await this.sendTo(c, n, 0);
    } catch (err) {
      this.p.events.append({
        actor,
        action: 'alert.notify.test',
        target: String(id),
        outcome: 'failed',
        message: `test notification to ${describeChannel(c)} failed: ${errorMessage(err)}`,
      });
      throw err;
    }
    this.p.events.append({
      actor,
      action: 'alert.notify.test',
      target: String(id),
      outcome: 'ok',
      message: `test notification sent to ${describeChannel(c)}`,
    });
    return { channel: id, sent: true };
  }

  /** Deliveries waiting to be sent or retried. */
  pendingDeliveries(): number {
    return this.deliveries.pending();
  }

  private knownRule(rule: string): void {
    if (!ruleInfo(rule))
      throw invalidArgument(`unknown alert rule ${rule}: use one of ${RULES.map((r) => r.name).join(', ')}`);
  }

  private withSilence(a: Alert, now: number): Alert {
    const s = a.state === 'open' ? this.silencesStore.matching(a, now) : undefined;
    return s ? { ...a, silencedBy: s.id } : a;
  }

  private follow(e: RuleEvent & { details?: Record<string, unknown> }): void {
    if (this.closed) return;
    // Called inside whoever appended the event: a problem here is logged, never thrown into it.
    try {
      const id = e.details?.job;
      const facts = typeof id === 'string' ? this.jobFacts(id) : undefined;
      for (const s of eventSignals(e, facts)) this.apply(s, true);
    } catch (err) {
      log.error(
        { err: errorMessage(err), action: e.action, target: e.target },
        'alert rules failed on an event',
      );
    }
  }

  private jobFacts(id: string): JobFacts | undefined {
    try {
      return this.p.job(id);
    } catch {
      return undefined; // an event naming a job this site does not have
    }
  }

  private async runCheck(): Promise<void> {
    try {
      const state = await gatherState(this.p);
      if (this.closed) return;
      for (const s of stateSignals(state, { fullPercent: this.fullPercent })) this.apply(s, false);
      // What a state rule fired for and is gone now (a pool removed, a group disabled …) resolves.
      const looked = stateObjects(state);
      for (const a of this.store.openAll())
        if ((STATE_RULES as string[]).includes(a.rule) && !looked.has(alertKey(a.rule, a.object)))
          this.apply(
            { rule: a.rule, object: a.object, firing: false, message: `${a.object} is gone` },
            false,
          );
    } catch (err) {
      log.error({ err: errorMessage(err) }, 'alert state check failed');
    }
  }

  /** One signal: opens, counts or resolves the alert of its rule and object. */
  private apply(s: Signal, counts: boolean): void {
    const time = new Date().toISOString();
    const open = this.store.open(s.rule, s.object);
    if (s.firing) {
      if (open) {
        this.store.seen(open.id, s.message, s.details, time, counts);
        return;
      }
      const a = this.store.insert({
        rule: s.rule,
        object: s.object,
        severity: ruleInfo(s.rule)!.severity,
        message: s.message,
        ...(s.details ? { details: s.details } : {}),
        time,
      });
      const silence = this.silencesStore.matching(a, Date.now());
      this.p.events.append({
        actor: 'system',
        action: 'alert.fire',
        target: s.object,
        outcome: 'warning',
        message: `alert ${a.id} (${s.rule}) fired: ${s.message}${silence ? ` [silenced by silence ${silence.id}]` : ''}`,
        details: {
          alert: a.id,
          rule: s.rule,
          severity: a.severity,
          ...(silence ? { silence: silence.id } : {}),
        },
      });
      if (!silence) {
        this.store.markNotified(a.id);
        this.notify('alert.fire', { ...a, notified: true });
      }
      return;
    }
    if (!open) return;
    const a = this.store.resolve(open.id, time);
    const silence = this.silencesStore.matching(a, Date.now());
    this.p.events.append({
      actor: 'system',
      action: 'alert.resolve',
      target: s.object,
      outcome: 'info',
      message: `alert ${a.id} (${s.rule}) resolved: ${s.message}`,
      details: { alert: a.id, rule: s.rule },
    });
    // Those told it fired are told it is over (unless silenced now).
    if (a.notified && !silence) this.notify('alert.resolve', a);
  }

  private notify(type: 'alert.fire' | 'alert.resolve', a: Alert): void {
    const what = type === 'alert.fire' ? 'FIRING' : 'RESOLVED';
    this.deliveries.enqueue({
      type,
      site: this.p.site,
      summary: `[haven ${this.p.site}] ${what}: ${a.rule} ${a.object}: ${a.message}`,
      alert: a,
    });
  }

  private sendTo(c: Channel, n: Notification, delivery: number): Promise<void> {
    return c.kind === 'webhook' ? sendWebhook(c, n, delivery, this.p.version) : sendEmail(c, n);
  }
}
