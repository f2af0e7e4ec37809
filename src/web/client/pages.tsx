// The console's pages. Each reads the API (and the live state of live.ts) and calls it for the
// operations; none decides anything the API does not.
import { useEffect, useRef, useState } from 'preact/hooks';
import {
  del,
  enc,
  get,
  post,
  q,
  type Backup,
  type Compliance,
  type Job,
  type Pool,
  type Repository,
  type SiteEvent,
  type Vm,
  type Volume,
} from './api.js';
import { events, followLog, jobs, logs, useLive } from './live.js';
import { RpoCards } from './pages-dr.js';
import { Action, Badge, Bar, Form, Loading, Progress, bytes, time, useLoad, Table } from './ui.js';

export const go = (path: string) => {
  history.pushState(null, '', path);
  dispatchEvent(new PopStateEvent('popstate'));
};

const link = (kind: 'vms' | 'volumes' | 'jobs' | 'pools', name: string) => (
  <a href={`/${kind}/${enc(name)}`}>{name}</a>
);

function protection(vm: string, compliance: Compliance[]): { state: string; why: string } {
  const c = compliance.find((x) => x.kind === 'vm' && x.object === vm);
  if (!c) return { state: 'unprotected', why: 'no policy assigned' };
  return c.compliant
    ? { state: 'protected', why: `policy ${c.policy}` }
    : { state: 'not-compliant', why: c.reasons.map((r) => r.message).join('; ') };
}

const running = () => [...jobs.values()].filter((j) => j.state === 'running');

function JobRows({ list }: { list: Job[] }) {
  if (!list.length) return <p class="muted">No jobs.</p>;
  return (
    <Table cols={['job', 'target', 'state', 'progress', 'started']}>
      {list.map((j) => (
        <tr key={j.id} data-job={j.id}>
          <td>
            <a href={`/jobs/${enc(j.id)}`}>{j.kind}</a>
          </td>
          <td>{j.target}</td>
          <td>
            <Badge kind={j.state}>{j.state}</Badge>
          </td>
          <td>
            <Progress job={j} />
          </td>
          <td>{time(j.createdAt)}</td>
        </tr>
      ))}
    </Table>
  );
}

// ---- dashboard ---------------------------------------------------------------------------------

export function Dashboard() {
  const gen = useLive();
  const d = useLoad(async () => {
    const [site, vms, compliance, alerts, pools, repos, peers] = await Promise.all([
      get<{ name: string; version: string; startedAt: string }>('/site'),
      get<Vm[]>('/vms'),
      get<Compliance[]>('/policy-compliance'),
      get<{ id: string; rule: string; object: string; message: string; severity: string }[]>(
        '/alerts?state=open',
      ),
      get<Pool[]>('/pools'),
      get<Repository[]>('/repositories'),
      get<{ name: string; health?: { state: string } }[]>('/peers'),
    ]);
    return { site, vms, compliance, alerts, pools, repos, peers };
  }, [gen]);
  if (!d.data) return <Loading error={d.error} />;
  const { site, vms, compliance, alerts, pools, repos, peers } = d.data;
  const states = vms.map((v) => ({ vm: v, ...protection(v.name, compliance) }));
  const count = (s: string) => states.filter((x) => x.state === s).length;
  const now = running();
  return (
    <div class="dashboard" data-ready="true">
      <h1>Dashboard</h1>
      <section class="cards" aria-label="summary">
        <div class="card">
          <h2>Sites</h2>
          <ul class="plain">
            <li>
              <Badge kind="ok">up</Badge> {site.name} (this site, {site.version})
            </li>
            {peers.map((p) => (
              <li key={p.name}>
                <Badge kind={p.health?.state === 'reachable' ? 'ok' : 'warning'}>
                  {p.health?.state ?? 'unknown'}
                </Badge>{' '}
                {p.name}
              </li>
            ))}
          </ul>
        </div>
        <div class="card">
          <h2>Protection</h2>
          <p>
            <Badge kind="protected">{count('protected')} protected</Badge>{' '}
            <Badge kind="not-compliant">{count('not-compliant')} not compliant</Badge>{' '}
            <Badge kind="unprotected">{count('unprotected')} unprotected</Badge>
          </p>
        </div>
        <div class="card">
          <h2>Alerts</h2>
          {alerts.length ? (
            <ul class="plain">
              {alerts.map((a) => (
                <li key={a.id}>
                  <Badge kind={a.severity === 'critical' ? 'failed' : 'warning'}>{a.severity}</Badge>{' '}
                  {a.message}
                </li>
              ))}
            </ul>
          ) : (
            <p class="muted">None firing.</p>
          )}
        </div>
      </section>
      <RpoCards />
      <section aria-labelledby="h-jobs">
        <h2 id="h-jobs">Running jobs</h2>
        <JobRows list={now} />
      </section>
      <section aria-labelledby="h-capacity">
        <h2 id="h-capacity">Capacity</h2>
        <table>
          <tbody>
            {pools.map((p) => (
              <tr key={p.name}>
                <th scope="row">pool {p.name}</th>
                <td>
                  <Bar used={p.allocatedBytes} total={p.capacityBytes} label={`pool ${p.name}`} />
                </td>
              </tr>
            ))}
            {repos.map((r) => (
              <tr key={r.path}>
                <th scope="row">repository {r.path}</th>
                <td>
                  {r.fs ? (
                    <Bar
                      used={r.fs.totalBytes - r.fs.freeBytes}
                      total={r.fs.totalBytes}
                      label={`repository ${r.path}`}
                    />
                  ) : (
                    <span class="error">{r.error}</span>
                  )}
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      </section>
      <section aria-labelledby="h-vms">
        <h2 id="h-vms">Virtual machines</h2>
        <VmTable rows={states} />
      </section>
    </div>
  );
}

function VmTable({ rows }: { rows: { vm: Vm; state: string; why: string }[] }) {
  return (
    <Table class="vms" cols={['VM', 'state', 'protection', 'disks']}>
      {rows.map(({ vm, state, why }) => (
        <tr key={vm.name} data-vm={vm.name}>
          <td>{link('vms', vm.name)}</td>
          <td>
            <Badge kind={vm.state}>{vm.state}</Badge>
          </td>
          <td>
            <Badge kind={state}>{state.replace('-', ' ')}</Badge> <span class="muted">{why}</span>
          </td>
          <td>{vm.disks.map((d) => d.volume).join(', ')}</td>
        </tr>
      ))}
    </Table>
  );
}

// ---- inventory ---------------------------------------------------------------------------------

export function Vms() {
  const gen = useLive();
  const d = useLoad(async () => {
    const [vms, compliance] = await Promise.all([get<Vm[]>('/vms'), get<Compliance[]>('/policy-compliance')]);
    return vms.map((vm) => ({ vm, ...protection(vm.name, compliance) }));
  }, [gen]);
  return (
    <div>
      <h1>Virtual machines</h1>
      {d.data ? <VmTable rows={d.data} /> : <Loading error={d.error} />}
    </div>
  );
}

export function Volumes() {
  const gen = useLive();
  const d = useLoad(async () => Promise.all([get<Volume[]>('/volumes'), get<Pool[]>('/pools')]), [gen]);
  if (!d.data) return <Loading error={d.error} />;
  const [vols, pools] = d.data;
  return (
    <div>
      <h1>Volumes</h1>
      <Table cols={['volume', 'pool', 'size', 'allocated']}>
        {vols.map((v) => (
          <tr key={v.name}>
            <td>{link('volumes', v.name)}</td>
            <td>{v.pool}</td>
            <td>{bytes(v.size)}</td>
            <td>{bytes(v.allocatedBytes)}</td>
          </tr>
        ))}
      </Table>
      <h2>Create a volume</h2>
      <Form
        id="create-volume"
        submit="Create volume"
        fields={[
          { name: 'name', label: 'Name', required: true, check: 'name' },
          {
            name: 'size',
            label: 'Size in bytes',
            type: 'number',
            placeholder: '1073741824',
            required: true,
            check: 'bytes',
          },
          { name: 'pool', label: 'Pool', placeholder: pools[0]?.name ?? 'default', check: 'name' },
        ]}
        onSubmit={(v) =>
          post('/volumes', {
            name: v.name,
            sizeBytes: Number(v.size),
            ...(v.pool ? { pool: v.pool } : {}),
          })
        }
      />
    </div>
  );
}

export function VolumePage({ name }: { name: string }) {
  const gen = useLive();
  const d = useLoad(
    async () =>
      Promise.all([
        get<Volume>(`/volumes/${enc(name)}`),
        get<{ name: string; createdAt?: string }[]>(`/volumes/${enc(name)}/snapshots`),
      ]),
    [name, gen],
  );
  if (!d.data) return <Loading error={d.error} />;
  const [v, snaps] = d.data;
  return (
    <div>
      <h1>Volume {v.name}</h1>
      <p>
        pool {v.pool}, {bytes(v.size)}, {bytes(v.allocatedBytes)} allocated
      </p>
      <h2>Snapshots</h2>
      {snaps.length ? (
        <table>
          <tbody>
            {snaps.map((s) => (
              <tr key={s.name}>
                <th scope="row">{s.name}</th>
                <td>{time(s.createdAt)}</td>
                <td>
                  <Action
                    label="Revert"
                    confirm={`Revert volume ${v.name} to snapshot ${s.name}? Every write to ${v.name} since ${s.name} is lost.`}
                    run={() => post(`/volumes/${enc(v.name)}/snapshots/${enc(s.name)}/revert`)}
                  />{' '}
                  <Action
                    label="Delete"
                    confirm={`Delete snapshot ${s.name} of ${v.name}? It cannot be reverted to afterwards.`}
                    run={() => del(`/volumes/${enc(v.name)}/snapshots/${enc(s.name)}`)}
                  />
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      ) : (
        <p class="muted">No snapshots.</p>
      )}
      <h2>Take a snapshot</h2>
      <Form
        id="snapshot"
        submit="Take snapshot"
        fields={[{ name: 'name', label: 'Snapshot name', required: true, check: 'name' }]}
        onSubmit={(f) => post(`/volumes/${enc(v.name)}/snapshots`, { name: f.name })}
      />
      <h2>Clone a snapshot</h2>
      <Form
        id="clone"
        submit="Clone"
        fields={[
          { name: 'snapshot', label: 'Snapshot', type: 'select', options: snaps.map((s) => s.name) },
          { name: 'name', label: 'New volume name', required: true, check: 'name' },
        ]}
        onSubmit={(f) => post(`/volumes/${enc(v.name)}/clone`, { snapshot: f.snapshot, name: f.name })}
      />
      <h2>Delete</h2>
      <Action
        label={`Delete volume ${v.name}`}
        confirm={`Delete volume ${v.name}? Its data (${bytes(v.allocatedBytes)}) and its ${snaps.length} snapshot(s) are lost.`}
        run={async () => {
          await del(`/volumes/${enc(v.name)}`);
          go('/volumes');
        }}
      />
    </div>
  );
}

export function Pools() {
  const d = useLoad(() => get<Pool[]>('/pools'), []);
  if (!d.data) return <Loading error={d.error} />;
  return (
    <div>
      <h1>Pools</h1>
      <Table cols={['pool', 'type', 'capacity']}>
        {d.data.map((p) => (
          <tr key={p.name}>
            <td>{p.name}</td>
            <td>{String(p.type ?? p.kind ?? '')}</td>
            <td>
              <Bar used={p.allocatedBytes} total={p.capacityBytes} label={`pool ${p.name}`} />
            </td>
          </tr>
        ))}
      </Table>
    </div>
  );
}

async function backupsIn(repos: Repository[]): Promise<(Backup & { repo: string })[]> {
  const all = await Promise.all(
    repos.map(async (r) => {
      try {
        const s = await get<{ snapshots: Backup[] }>(`/repositories/snapshots${q({ repo: r.path })}`);
        return s.snapshots.map((b) => ({ ...b, repo: r.path }));
      } catch {
        return []; // an encrypted or gone repository: shown on the repositories page
      }
    }),
  );
  return all.flat().sort((a, b) => b.createdAt.localeCompare(a.createdAt));
}

export function Repositories() {
  const gen = useLive();
  const d = useLoad(async () => {
    const repos = await get<Repository[]>('/repositories');
    return { repos, backups: await backupsIn(repos) };
  }, [gen]);
  if (!d.data) return <Loading error={d.error} />;
  return (
    <div>
      <h1>Repositories</h1>
      {d.data.repos.length ? null : <p class="muted">No repository used yet: back a VM up into one.</p>}
      {d.data.repos.map((r) => (
        <section key={r.path} aria-label={`repository ${r.path}`}>
          <h2>{r.path}</h2>
          {r.fs ? (
            <Bar
              used={r.fs.totalBytes - r.fs.freeBytes}
              total={r.fs.totalBytes}
              label={`repository ${r.path}`}
            />
          ) : (
            <p class="error">{r.error}</p>
          )}
          <BackupTable list={d.data!.backups.filter((b) => b.repo === r.path)} />
        </section>
      ))}
    </div>
  );
}

function BackupTable({ list, recover }: { list: (Backup & { repo: string })[]; recover?: boolean }) {
  const [open, setOpen] = useState('');
  if (!list.length) return <p class="muted">No backups.</p>;
  return (
    <Table class="backups" cols={['backup', 'source', 'taken', 'actions']}>
      {list.map((b) => (
        <tr key={b.id} data-backup={b.id}>
          <td>
            <code>{b.id}</code>
          </td>
          <td>
            {b.source.kind}:{b.source.name}
          </td>
          <td>{time(b.createdAt)}</td>
          <td>
            {recover && b.vm ? (
              open === b.id ? (
                <Form
                  id={`recover-${b.id}`}
                  submit="Recover now"
                  fields={[
                    {
                      name: 'name',
                      label: 'Name of the recovered VM',
                      value: `${b.source.name}-recovered`,
                      check: 'name',
                    },
                    {
                      name: 'pool',
                      label: 'Pool of its new volumes',
                      placeholder: 'default',
                      check: 'name',
                    },
                  ]}
                  onSubmit={async (f) => {
                    await post('/recoveries', {
                      repo: b.repo,
                      snapshot: b.id,
                      ...(f.name ? { name: f.name } : {}),
                      ...(f.pool ? { pool: f.pool } : {}),
                    });
                    go(`/vms/${enc(f.name || `${b.source.name}-recovered`)}`);
                  }}
                />
              ) : (
                <button type="button" onClick={() => setOpen(b.id)}>
                  Instant recovery…
                </button>
              )
            ) : open === b.id ? (
              <Form
                id={`restore-${b.id}`}
                submit="Restore"
                fields={[
                  { name: 'name', label: 'New volume name', required: true, check: 'name' },
                  {
                    name: 'disk',
                    label: 'Disk of the backup',
                    type: 'number',
                    value: '0',
                    required: true,
                    check: 'integer',
                  },
                  { name: 'pool', label: 'Pool', placeholder: 'default', check: 'name' },
                ]}
                onSubmit={async (f) => {
                  const j = await post<Job>('/volumes/restore', {
                    repo: b.repo,
                    snapshot: b.id,
                    name: f.name,
                    disk: Number(f.disk),
                    ...(f.pool ? { pool: f.pool } : {}),
                  });
                  go(`/jobs/${enc(j.id)}`);
                }}
              />
            ) : (
              <button type="button" onClick={() => setOpen(b.id)}>
                Restore to a new volume…
              </button>
            )}
          </td>
        </tr>
      ))}
    </Table>
  );
}

// ---- a VM --------------------------------------------------------------------------------------

export function VmPage({ name }: { name: string }) {
  const gen = useLive();
  const d = useLoad(async () => {
    const [vm, repos, recoveries] = await Promise.all([
      get<Vm>(`/vms/${enc(name)}`),
      get<Repository[]>('/repositories'),
      get<{ vm: string; repo?: string; snapshot?: string }[]>('/recoveries'),
    ]);
    const backups = (await backupsIn(repos)).filter((b) => b.source.kind === 'vm' && b.source.name === name);
    return { vm, repos, backups, recovery: recoveries.find((r) => r.vm === name) };
  }, [name, gen]);
  if (!d.data) return <Loading error={d.error} />;
  const { vm, repos, backups, recovery } = d.data;
  const mine = [...jobs.values()].filter((j) => j.target === name).slice(0, 10);
  return (
    <div>
      <h1>
        VM {vm.name} <Badge kind={vm.state}>{vm.state}</Badge>
      </h1>
      <section aria-labelledby="h-disks">
        <h2 id="h-disks">Disks</h2>
        <ul>
          {vm.disks.map((x) => (
            <li key={x.volume}>{link('volumes', x.volume)}</li>
          ))}
        </ul>
      </section>
      {recovery ? (
        <section aria-labelledby="h-rec" class="card">
          <h2 id="h-rec">Running from a backup</h2>
          <p>
            This VM runs from backup <code>{recovery.snapshot}</code>; its disks read from the repository
            until it is finalized.
          </p>
          <Action label="Finalize" kind="primary" run={() => post(`/recoveries/${enc(name)}/finalize`)} />{' '}
          <Action
            label="Discard"
            confirm={`Discard the recovery of ${name}? The VM is stopped and deleted with its volumes: every write made since it started is lost.`}
            run={async () => {
              await post(`/recoveries/${enc(name)}/discard`);
            }}
          />
        </section>
      ) : null}
      <section aria-labelledby="h-actions">
        <h2 id="h-actions">Actions</h2>
        <div class="row">
          {vm.state === 'running' ? (
            <Action
              label="Stop"
              confirm={`Stop VM ${name}? Its guest is shut down.`}
              run={() => post(`/vms/${enc(name)}/stop`)}
            />
          ) : (
            <Action label="Start" run={() => post(`/vms/${enc(name)}/start`)} />
          )}
        </div>
        <h3>Back up now</h3>
        <Form
          id="backup"
          submit="Back up now"
          fields={[
            {
              name: 'repo',
              label: 'Repository (directory on the site host)',
              value: repos[0]?.path ?? '',
              placeholder: '/var/lib/haven/repo',
              required: true,
              check: (v) =>
                v.startsWith('/') ? undefined : 'the repository is a directory: an absolute path',
            },
          ]}
          onSubmit={async (f) => {
            const j = await post<Job>(`/vms/${enc(name)}/backup`, { repo: f.repo });
            go(`/jobs/${enc(j.id)}`);
          }}
        />
        <h3>Move storage (live)</h3>
        <Form
          id="move"
          submit="Move disks"
          fields={[{ name: 'pool', label: 'Destination pool', required: true, check: 'name' }]}
          onSubmit={async (f) => {
            const j = await post<Job>(`/vms/${enc(name)}/move-storage`, { pool: f.pool });
            go(`/jobs/${enc(j.id)}`);
          }}
        />
      </section>
      <section aria-labelledby="h-backups">
        <h2 id="h-backups">Backups</h2>
        <BackupTable list={backups} recover />
      </section>
      <section aria-labelledby="h-vmjobs">
        <h2 id="h-vmjobs">Jobs</h2>
        <JobRows list={mine} />
      </section>
      <ConsoleLog name={name} />
    </div>
  );
}

/** What the console keeps of a serial console log (the stream starts with as much). */
const CONSOLE_KEEP = 64 * 1024;

/**
 * The VM's serial console as it is written: a stream of its own (GET
 * /vms/NAME/console-log/stream), open while this page is, which the daemon feeds by tailing the
 * file; the page keeps the last 64 KiB.
 */
function ConsoleLog({ name }: { name: string }) {
  const [text, setText] = useState('');
  const [live, setLive] = useState(false);
  const pre = useRef<HTMLPreElement>(null);
  useEffect(() => {
    const es = new EventSource(`/api/v1/vms/${enc(name)}/console-log/stream`);
    es.addEventListener('open', () => setLive(true));
    es.addEventListener('error', () => setLive(false));
    es.addEventListener('text', (m) => setText(JSON.parse((m as MessageEvent<string>).data) as string));
    es.addEventListener('append', (m) =>
      setText((t) => (t + (JSON.parse((m as MessageEvent<string>).data) as string)).slice(-CONSOLE_KEEP)),
    );
    return () => es.close();
  }, [name]);
  useEffect(() => {
    if (pre.current) pre.current.scrollTop = pre.current.scrollHeight;
  }, [text]);
  return (
    <section aria-labelledby="h-console">
      <h2 id="h-console">
        Console log{' '}
        <span class="muted" data-live={live}>
          ({live ? 'following' : 'not connected'})
        </span>
      </h2>
      <pre class="console" ref={pre} tabIndex={0} aria-label={`console log of ${name}`} aria-live="off">
        {text || '(empty)'}
      </pre>
    </section>
  );
}

// ---- jobs and events ---------------------------------------------------------------------------

export function Jobs() {
  useLive();
  const [state, setState] = useState('');
  const list = [...jobs.values()]
    .filter((j) => !state || j.state === state)
    .sort((a, b) => b.createdAt.localeCompare(a.createdAt));
  return (
    <div>
      <h1>Jobs</h1>
      <label for="job-state">State </label>
      <select id="job-state" value={state} onChange={(e) => setState((e.target as HTMLSelectElement).value)}>
        {['', 'running', 'succeeded', 'failed', 'cancelled'].map((s) => (
          <option key={s} value={s}>
            {s || 'all'}
          </option>
        ))}
      </select>
      <JobRows list={list} />
    </div>
  );
}

export function JobPage({ id }: { id: string }) {
  useLive();
  const fetched = useLoad(() => get<Job>(`/jobs/${enc(id)}`), [id]);
  useEffect(() => void followLog(id), [id]);
  const j = jobs.get(id) ?? fetched.data;
  if (!j) return <Loading error={fetched.error} />;
  const lines = logs.get(id) ?? [];
  return (
    <div>
      <h1>
        Job {j.kind} {j.target} <Badge kind={j.state}>{j.state}</Badge>
      </h1>
      <p>
        <Progress job={j} /> {j.progress.phase ? <span class="muted">({j.progress.phase})</span> : null}
      </p>
      <p class="muted">
        {j.id}, by {j.actor}, started {time(j.createdAt)}
        {j.endedAt ? `, ended ${time(j.endedAt)}` : ''}
      </p>
      {j.error ? (
        <p class="error" role="alert">
          {j.error}
        </p>
      ) : null}
      {j.state === 'running' ? (
        <Action
          label="Cancel job"
          confirm={`Cancel ${j.kind} of ${j.target}? What it has done so far is undone or left unfinished.`}
          run={() => post(`/jobs/${enc(id)}/cancel`)}
        />
      ) : null}
      {j.result !== undefined ? (
        <details>
          <summary>Result</summary>
          <pre>{JSON.stringify(j.result, null, 2)}</pre>
        </details>
      ) : null}
      <h2>Log</h2>
      <pre class="log" tabIndex={0} aria-label="job log">
        {lines.map(
          (l) =>
            `${l.time.slice(11, 19)} ${l.level === 'info' ? '' : `${l.level.toUpperCase()} `}${l.message}\n`,
        )}
      </pre>
    </div>
  );
}

export function Events() {
  const gen = useLive();
  const [f, setF] = useState({ action: '', target: '', actor: '', outcome: '' });
  const d = useLoad(() => get<SiteEvent[]>(`/events${q({ ...f, limit: '200' })}`), [JSON.stringify(f), gen]);
  const input = (k: keyof typeof f, label: string) => (
    <span class="field inline">
      <label for={`ev-${k}`}>{label}</label>
      <input
        id={`ev-${k}`}
        type="text"
        value={f[k]}
        onChange={(e) => setF({ ...f, [k]: (e.target as HTMLInputElement).value })}
      />
    </span>
  );
  const list = d.data ?? events;
  return (
    <div>
      <h1>Events and audit</h1>
      <form class="filters" onSubmit={(e) => e.preventDefault()} aria-label="filters">
        {input('action', 'Action')}
        {input('target', 'Target')}
        {input('actor', 'Actor')}
        <span class="field inline">
          <label for="ev-outcome">Outcome</label>
          <select
            id="ev-outcome"
            value={f.outcome}
            onChange={(e) => setF({ ...f, outcome: (e.target as HTMLSelectElement).value })}
          >
            {['', 'ok', 'failed', 'info', 'warning'].map((s) => (
              <option key={s} value={s}>
                {s || 'any'}
              </option>
            ))}
          </select>
        </span>
      </form>
      {d.error ? <p class="error">{d.error}</p> : null}
      <Table cols={['time', 'actor', 'action', 'target', 'outcome', 'message']}>
        {list.map((e) => (
          <tr key={e.id}>
            <td>{time(e.time)}</td>
            <td>{e.actor}</td>
            <td>{e.action}</td>
            <td>{e.target}</td>
            <td>
              <Badge kind={e.outcome}>{e.outcome}</Badge>
            </td>
            <td>{e.message}</td>
          </tr>
        ))}
      </Table>
    </div>
  );
}
