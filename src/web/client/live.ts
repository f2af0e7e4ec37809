// What changes while the console is open: jobs, their log lines, the event log and the RPO of
// every replication group, from the one event stream (GET /api/v1/events/stream) the browser
// keeps. Pages read it and re-render when it changes (at most once per animation frame).
import { useEffect, useState } from 'preact/hooks';
import { get, type Job, type LogLine, type ReplicationGroup, type RpoSample, type SiteEvent } from './api.js';

export const jobs = new Map<string, Job>();
export const logs = new Map<string, LogLine[]>();
export const events: SiteEvent[] = [];
/** How far back the RPO charts reach: samples older than this are dropped. */
export const RPO_WINDOW_MS = 10 * 60 * 1000;
/** Each replication group's RPO samples (time in ms, seconds or null before a first checkpoint), oldest first. */
export const rpo = new Map<string, { t: number; v: number | null }[]>();
/** Each replication group's newest sample. */
export const rpoNow = new Map<string, RpoSample>();

function addRpo(t: number, g: RpoSample): void {
  const list = rpo.get(g.name) ?? [];
  if (!rpo.has(g.name)) rpo.set(g.name, list);
  list.push({ t, v: g.rpoSeconds ?? null });
  let old = 0;
  while (old < list.length && list[old]!.t < t - RPO_WINDOW_MS) old++;
  if (old) list.splice(0, old);
  rpoNow.set(g.name, g);
}
/** Bumped whenever something else changed (a job ended, an event): pages reload what they show. */
export let generation = 0;
export let connected = false;

const listeners = new Set<() => void>();
let scheduled = false;
function changed(): void {
  if (scheduled) return;
  scheduled = true;
  requestAnimationFrame(() => {
    scheduled = false;
    for (const l of listeners) l();
  });
}

/** Re-renders the calling component whenever the live state changes. */
export function useLive(): number {
  const [, set] = useState(0);
  useEffect(() => {
    const l = () => set((n) => n + 1);
    listeners.add(l);
    return () => void listeners.delete(l);
  }, []);
  return generation;
}

let source: EventSource | undefined;

// Closed before the page goes (a reload, another site): the browser ends it cleanly.
addEventListener('pagehide', () => source?.close());

export async function connect(): Promise<void> {
  disconnect();
  source = new EventSource('/api/v1/events/stream');
  source.addEventListener('open', () => {
    connected = true;
    void reload();
  });
  source.addEventListener('error', () => {
    connected = false;
    changed();
  });
  source.addEventListener('job', (m) => {
    const j = JSON.parse((m as MessageEvent<string>).data) as Job;
    const before = jobs.get(j.id);
    jobs.set(j.id, j);
    if (!before || before.state !== j.state) generation++;
    changed();
  });
  source.addEventListener('log', (m) => {
    const { job, line } = JSON.parse((m as MessageEvent<string>).data) as { job: string; line: LogLine };
    const list = logs.get(job);
    // A line written just before followLog read the log may arrive after it (the stream holds
    // lines up to 100 ms): it is there already.
    if (list && !list.slice(-50).some((p) => p.time === line.time && p.message === line.message))
      list.push(line);
    changed();
  });
  source.addEventListener('rpo', (m) => {
    const { time, groups } = JSON.parse((m as MessageEvent<string>).data) as {
      time: string;
      groups: RpoSample[];
    };
    const t = Date.parse(time);
    for (const g of groups) addRpo(t, g);
    for (const name of rpoNow.keys()) if (!groups.some((g) => g.name === name)) rpoNow.delete(name);
    changed();
  });
  source.addEventListener('event', (m) => {
    events.unshift(JSON.parse((m as MessageEvent<string>).data) as SiteEvent);
    if (events.length > 200) events.length = 200;
    generation++;
    changed();
  });
}

export function disconnect(): void {
  source?.close();
  source = undefined;
  connected = false;
  jobs.clear();
  logs.clear();
  events.length = 0;
  rpo.clear();
  rpoNow.clear();
}

/** What the stream does not replay: the jobs, events and replication groups as they are now. */
async function reload(): Promise<void> {
  // The RPO at (re)connect, the first point of each chart (the stream brings the next ones),
  // apart: the jobs and events do not wait for it.
  void get<ReplicationGroup[]>('/replication/groups').then(
    (rs) => {
      const t = Date.now();
      for (const g of rs) addRpo(t, rpoOf(g, t));
      changed();
    },
    () => undefined, // shown by the pages that read it
  );
  const [js, es] = await Promise.all([get<Job[]>('/jobs?limit=200'), get<SiteEvent[]>('/events?limit=100')]);
  for (const j of js) jobs.set(j.id, j);
  events.splice(0, events.length, ...es);
  generation++;
  changed();
}

/** A job's log: loaded once, then followed from the stream. */
export async function followLog(id: string): Promise<void> {
  if (logs.has(id)) return;
  logs.set(id, []);
  let past: LogLine[];
  try {
    past = await get<LogLine[]>(`/jobs/${encodeURIComponent(id)}/log`);
  } catch {
    logs.delete(id); // no such job (yet): the page says so; asked again when it shows it
    return;
  }
  const live = logs.get(id) ?? [];
  logs.set(id, [
    ...past,
    ...live.filter((l) => !past.some((p) => p.time === l.time && p.message === l.message)),
  ]);
  changed();
}

/** A replication group of the REST API as an RPO sample (the same as the stream computes). */
export function rpoOf(g: ReplicationGroup, now: number): RpoSample {
  const newest = g.target?.newestCheckpoint?.time;
  const v =
    g.source?.rpoSeconds ??
    (newest && !g.takenOver ? Math.max(0, (now - Date.parse(newest)) / 1000) : undefined);
  return {
    name: g.name,
    role: g.role,
    peer: g.peer,
    paused: g.paused,
    ...(g.source ? { state: g.source.state, link: g.source.link } : {}),
    ...(g.target ? { link: g.target.link } : {}),
    ...(g.takenOver ? { state: 'taken over' } : {}),
    ...(v !== undefined ? { rpoSeconds: v } : {}),
    ...(g.rpoObjectiveSeconds !== undefined ? { objectiveSeconds: g.rpoObjectiveSeconds } : {}),
  };
}
