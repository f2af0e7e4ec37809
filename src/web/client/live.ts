// What changes while the console is open: jobs, their log lines and the event log, from the one
// event stream (GET /api/v1/events/stream) the browser keeps. Pages read it and re-render when
// it changes (at most once per animation frame).
import { useEffect, useState } from 'preact/hooks';
import { get, type Job, type LogLine, type SiteEvent } from './api.js';

export const jobs = new Map<string, Job>();
export const logs = new Map<string, LogLine[]>();
export const events: SiteEvent[] = [];
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
    logs.get(job)?.push(line);
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
}

/** What the stream does not replay: the jobs and events as they are now. */
async function reload(): Promise<void> {
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
  const past = await get<LogLine[]>(`/jobs/${encodeURIComponent(id)}/log`);
  const live = logs.get(id) ?? [];
  logs.set(id, [
    ...past,
    ...live.filter((l) => !past.some((p) => p.time === l.time && p.message === l.message)),
  ]);
  changed();
}
