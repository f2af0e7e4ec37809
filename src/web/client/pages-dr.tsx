// The pages of replication, disaster recovery, plans and policies. Like the others they read the
// API (and the live state of live.ts) and call it; destructive operations ask first, naming what
// is lost.
import { useEffect } from 'preact/hooks';
import {
  del,
  enc,
  get,
  post,
  put,
  type BusinessService,
  type Checkpoint,
  type Compliance,
  type Job,
  type Plan,
  type PlanRun,
  type PlanStep,
  type Policy,
  type ReplicationGroup,
  type ResiliencyGroup,
} from './api.js';
import { RpoChart } from './chart.js';
import { followLog, jobs, logs, rpo, rpoNow, useLive } from './live.js';
import { Action, Badge, Form, Loading, bytes, time, useLoad, Table } from './ui.js';

const go = (path: string) => {
  history.pushState(null, '', path);
  dispatchEvent(new PopStateEvent('popstate'));
};
const toJob = (j: Job) => go(`/jobs/${enc(j.id)}`);
const list = (v: string | undefined) => (v ?? '').split(/[\s,]+/).filter(Boolean);
const secs = (v: number | undefined) => (v === undefined ? '–' : `${v < 10 ? v.toFixed(2) : v.toFixed(1)} s`);

function stateOf(g: ReplicationGroup): string {
  if (g.takenOver) return 'taken over';
  if (g.fenced) return 'fenced';
  if (g.paused) return 'paused';
  return g.source?.state ?? (g.target ? `receiving, link ${g.target.link}` : 'stopped');
}
const stateKind = (s: string) =>
  s === 'replicating' || s.startsWith('receiving, link up') ? 'ok' : s === 'paused' ? 'info' : 'warning';

// ---- the dashboard's RPO charts ----------------------------------------------------------------

/** One live chart per replication group of the site; nothing when there is none. */
export function RpoCards() {
  useLive();
  const groups = [...rpoNow.values()].sort((a, b) => a.name.localeCompare(b.name));
  if (!groups.length) return null;
  const now = Date.now();
  return (
    <section aria-labelledby="h-rpo">
      <h2 id="h-rpo">Replication RPO (last 10 minutes)</h2>
      <div class="cards">
        {groups.map((g) => (
          <div class="card" key={g.name} data-rpo-group={g.name}>
            <h3>
              <a href={`/replication/${enc(g.name)}`}>{g.name}</a>{' '}
              <span class="muted">
                {g.role === 'source' ? `→ ${g.peer}` : `← ${g.peer}`}
                {g.state ? `, ${g.paused ? 'paused' : g.state}` : ''}
                {g.link ? `, link ${g.link}` : ''}
              </span>
            </h3>
            <RpoChart
              group={g.name}
              samples={rpo.get(g.name) ?? []}
              objective={g.objectiveSeconds}
              now={now}
            />
          </div>
        ))}
      </div>
    </section>
  );
}

// ---- replication -------------------------------------------------------------------------------

export function Replication() {
  const gen = useLive();
  const d = useLoad(
    async () =>
      Promise.all([
        get<ReplicationGroup[]>('/replication/groups'),
        get<ResiliencyGroup[]>('/groups'),
        get<{ name: string }[]>('/peers'),
      ]),
    [gen],
  );
  if (!d.data) return <Loading error={d.error} />;
  const [groups, resiliency, peers] = d.data;
  return (
    <div>
      <h1>Replication</h1>
      {groups.length ? (
        <Table
          class="replication"
          cols={['group', 'direction', 'state', 'RPO (objective)', 'lag', 'throughput', 'volumes']}
        >
          {groups.map((g) => {
            const st = stateOf(g);
            const now = rpoNow.get(g.name);
            return (
              <tr key={g.name} data-group={g.name}>
                <td>
                  <a href={`/replication/${enc(g.name)}`}>{g.name}</a>
                </td>
                <td>{g.role === 'source' ? `to ${g.peer}` : `from ${g.peer}`}</td>
                <td>
                  <Badge kind={stateKind(st)}>{st}</Badge>
                  {g.source ? <span class="muted"> link {g.source.link}</span> : null}
                </td>
                <td class="rpo-now">
                  {secs(now?.rpoSeconds ?? g.source?.rpoSeconds)}
                  {g.rpoObjectiveSeconds !== undefined ? ` (${g.rpoObjectiveSeconds} s)` : ''}
                </td>
                <td>{g.source ? `${g.source.lag.records} records, ${bytes(g.source.lag.bytes)}` : '–'}</td>
                <td>{g.source ? `${bytes(g.source.throughputBytesPerSecond)}/s` : '–'}</td>
                <td>{g.volumes.map((v) => v.source).join(', ')}</td>
              </tr>
            );
          })}
        </Table>
      ) : (
        <p class="muted">Nothing replicates to or from this site.</p>
      )}
      <h2>Replicate a group</h2>
      <Form
        id="enable"
        submit="Enable replication"
        fields={[
          {
            name: 'group',
            label: 'Group',
            required: true,
            check: 'name',
            help: 'a resiliency group, or a new name',
          },
          { name: 'vms', label: 'VMs (left empty: the resiliency group’s)', check: 'names' },
          {
            name: 'to',
            label: 'To site',
            type: 'select',
            options: peers.map((p) => p.name),
          },
          { name: 'pool', label: 'Pool there', required: true, check: 'name', value: 'default' },
          { name: 'rpo', label: 'RPO in seconds', check: 'seconds', placeholder: '15' },
        ]}
        onSubmit={(f) =>
          post('/replication/groups', {
            group: f.group,
            ...(list(f.vms).length ? { vms: list(f.vms) } : {}),
            to: f.to,
            pool: f.pool,
            ...(f.rpo ? { rpoSeconds: Number(f.rpo) } : {}),
          })
        }
      />
      <h2>Resiliency groups</h2>
      {resiliency.length ? (
        <Table cols={['group', 'VMs (start order)', 'replication', 'actions']}>
          {resiliency.map((g) => (
            <tr key={g.name}>
              <th scope="row">{g.name}</th>
              <td>{g.vms.join(', ')}</td>
              <td>{g.replication ? `${g.replication.role} ${g.replication.peer}` : '–'}</td>
              <td>
                {g.defined ? (
                  <Action
                    label={`Delete group ${g.name}`}
                    confirm={`Delete resiliency group ${g.name}? Its VMs (${g.vms.join(', ') || 'none'}) stay; they are no longer protected and recovered together.`}
                    run={() => del(`/groups/${enc(g.name)}`)}
                  />
                ) : null}
              </td>
            </tr>
          ))}
        </Table>
      ) : (
        <p class="muted">No resiliency group.</p>
      )}
      <Form
        id="group-create"
        submit="Create group"
        fields={[
          { name: 'name', label: 'Group name', required: true, check: 'name' },
          { name: 'vms', label: 'VMs, in start order', check: 'names' },
        ]}
        onSubmit={(f) => post('/groups', { name: f.name, vms: list(f.vms) })}
      />
    </div>
  );
}

export function ReplicationGroupPage({ name }: { name: string }) {
  const gen = useLive();
  const d = useLoad(async () => {
    const g = await get<ReplicationGroup>(`/replication/groups/${enc(name)}`);
    const cps = await get<Checkpoint[]>(`/replication/groups/${enc(name)}/checkpoints`).catch(() => []);
    return { g, cps };
  }, [name, gen]);
  if (!d.data) return <Loading error={d.error} />;
  const { g, cps } = d.data;
  const st = stateOf(g);
  const sample = rpoNow.get(name);
  return (
    <div>
      <h1>
        Replication group {g.name} <Badge kind={stateKind(st)}>{st}</Badge>
      </h1>
      <p>
        {g.role === 'source'
          ? `Replicates VMs ${g.vms?.join(', ') ?? ''} to site ${g.peer}, pool ${g.pool}.`
          : `Holds the replica of site ${g.peer}'s group in pool ${g.pool}.`}{' '}
        Since {time(g.createdAt)}.
      </p>
      {g.source?.error || g.target?.error ? (
        <p class="error" role="alert">
          {g.source?.error ?? g.target?.error}
        </p>
      ) : null}
      <div class="card">
        <RpoChart
          group={g.name}
          samples={rpo.get(g.name) ?? []}
          objective={g.rpoObjectiveSeconds ?? sample?.objectiveSeconds}
          now={Date.now()}
        />
      </div>
      {g.source ? (
        <dl class="facts">
          <dt>link</dt>
          <dd>{g.source.link}</dd>
          <dt>lag</dt>
          <dd>
            {g.source.lag.records} records, {bytes(g.source.lag.bytes)}
          </dd>
          <dt>journal</dt>
          <dd>
            {bytes(g.source.journal.bytes)} of {bytes(g.source.journal.maxBytes)}
          </dd>
          <dt>throughput</dt>
          <dd>{bytes(g.source.throughputBytesPerSecond)}/s</dd>
          <dt>bandwidth limit</dt>
          <dd>{g.bytesPerSecond ? `${bytes(g.bytesPerSecond)}/s` : 'none'}</dd>
        </dl>
      ) : null}
      <h2>Volumes</h2>
      <ul>
        {g.volumes.map((v) => (
          <li key={v.source}>
            {v.source} → {v.replica}
          </li>
        ))}
      </ul>
      <h2>Checkpoints</h2>
      {cps.length ? (
        <Table cols={['sequence', 'taken', 'name']}>
          {cps
            .slice(-10)
            .reverse()
            .map((c) => (
              <tr key={c.seq}>
                <td>{c.seq}</td>
                <td>{time(c.time)}</td>
                <td>{c.name ?? ''}</td>
              </tr>
            ))}
        </Table>
      ) : (
        <p class="muted">None held here.</p>
      )}
      <h2>Actions</h2>
      {g.role === 'source' ? (
        <>
          <div class="row">
            {g.paused ? (
              <Action
                label="Resume replication"
                run={() => post(`/replication/groups/${enc(name)}/resume`)}
              />
            ) : (
              <Action label="Pause replication" run={() => post(`/replication/groups/${enc(name)}/pause`)} />
            )}
            <Action
              label="Verify the replica"
              run={async () => toJob(await post<Job>(`/replication/groups/${enc(name)}/verify`, {}))}
            />
          </div>
          <h3>Mark a checkpoint</h3>
          <Form
            id="checkpoint"
            submit="Mark checkpoint"
            fields={[{ name: 'name', label: 'Checkpoint name (optional)', placeholder: 'before-upgrade' }]}
            onSubmit={(f) =>
              post(`/replication/groups/${enc(name)}/checkpoints`, f.name ? { name: f.name } : {})
            }
          />
          <h3>Bandwidth</h3>
          <Form
            id="limit"
            submit="Set limit"
            fields={[
              {
                name: 'bytesPerSecond',
                label: 'Bytes per second (0: unlimited)',
                type: 'number',
                required: true,
                check: 'integer',
              },
            ]}
            onSubmit={(f) =>
              put(`/replication/groups/${enc(name)}/limit`, { bytesPerSecond: Number(f.bytesPerSecond) })
            }
          />
        </>
      ) : null}
      <p>
        Takeover, migrate, rehearsal and failback: on the <a href="/dr">disaster recovery</a> page.
      </p>
      <h3>Disable</h3>
      <Action
        label={`Disable replication of ${name}`}
        confirm={
          g.role === 'source'
            ? `Disable replication of group ${name} to ${g.peer}? Replication stops now: the replica at ${g.peer} stays at its last checkpoint and no longer follows the VMs, the journal here (${bytes(g.source?.journal.bytes)} not yet applied) is deleted, and replicating again starts with a new full sync.`
            : `Disable the replica of group ${name} from ${g.peer}? This site stops receiving it: the replica volumes stay at their last checkpoint; ${g.peer} can no longer replicate the group here.`
        }
        run={async () => {
          await del(`/replication/groups/${enc(name)}`);
          go('/replication');
        }}
      />
    </div>
  );
}

// ---- disaster recovery -------------------------------------------------------------------------

export function Dr() {
  const gen = useLive();
  const d = useLoad(
    async () =>
      Promise.all([get<ReplicationGroup[]>('/replication/groups'), get<BusinessService[]>('/services')]),
    [gen],
  );
  if (!d.data) return <Loading error={d.error} />;
  const [groups, services] = d.data;
  const here = groups.filter((g) => g.role === 'target');
  const from = groups.filter((g) => g.role === 'source');
  return (
    <div>
      <h1>Disaster recovery</h1>
      <p class="muted">
        Operations are jobs: each opens its job page with its progress and log. Plans of several steps are on
        the <a href="/plans">plans</a> page.
      </p>
      <h2>Groups replicated to this site</h2>
      {here.length ? null : <p class="muted">None.</p>}
      {here.map((g) => (
        <section
          class="card dr"
          key={g.name}
          aria-label={`group ${g.name} from ${g.peer}`}
          data-dr-group={g.name}
        >
          <h3>
            {g.name} <span class="muted">from {g.peer}</span>{' '}
            <Badge kind={stateKind(stateOf(g))}>{stateOf(g)}</Badge>
          </h3>
          <p class="muted">
            newest checkpoint:{' '}
            {g.target?.newestCheckpoint
              ? `${g.target.newestCheckpoint.seq}, ${time(g.target.newestCheckpoint.time)}`
              : 'none yet'}
          </p>
          {g.takenOver ? (
            <>
              <p>Taken over at {time(g.takenOver.at)}: its VMs run here.</p>
              <Form
                id={`resync-${g.name}`}
                submit="Resync back"
                fields={[{ name: 'rpo', label: 'RPO in seconds of the reversed group', check: 'seconds' }]}
                onSubmit={(f) =>
                  post(`/dr/groups/${enc(g.name)}/resync`, f.rpo ? { rpoSeconds: Number(f.rpo) } : {})
                }
              />
              <Failback g={g} />
            </>
          ) : (
            <>
              <Form
                id={`rehearse-${g.name}`}
                submit="Rehearse"
                fields={[
                  { name: 'checkpoint', label: 'Checkpoint (newest if empty)' },
                  { name: 'heartbeat', label: 'Heartbeat', placeholder: 'agent' },
                ]}
                onSubmit={async (f) =>
                  toJob(
                    await post<Job>(`/dr/groups/${enc(g.name)}/rehearse`, {
                      ...(f.checkpoint ? { checkpoint: f.checkpoint } : {}),
                      ...(f.heartbeat ? { heartbeat: f.heartbeat } : {}),
                    }),
                  )
                }
              />
              <Action
                label={`Clean up the rehearsal of ${g.name}`}
                confirm={`Clean up the rehearsal of ${g.name}? Its VMs are stopped and deleted with their clone volumes and isolated network: whatever was written in the rehearsal is lost (production and the replica are untouched).`}
                run={() => post(`/dr/groups/${enc(g.name)}/cleanup`)}
              />
              <h4>Take over</h4>
              <Form
                id={`takeover-${g.name}`}
                submit={`Take over ${g.name}`}
                danger={`Take over group ${g.name} here? Its VMs start at this site from the checkpoint chosen; ${g.peer} is fenced (its VMs of the group are stopped and not started again) and replication from it ends. Every write made at ${g.peer} after that checkpoint is lost.`}
                fields={[
                  { name: 'checkpoint', label: 'Checkpoint (newest if empty)' },
                  { name: 'force', label: `Even though ${g.peer} answers`, type: 'checkbox' },
                ]}
                onSubmit={async (f) =>
                  toJob(
                    await post<Job>(`/dr/groups/${enc(g.name)}/takeover`, {
                      ...(f.checkpoint ? { checkpoint: f.checkpoint } : {}),
                      ...(f.force === 'true' ? { force: true } : {}),
                    }),
                  )
                }
              />
            </>
          )}
        </section>
      ))}
      <h2>Groups replicated from this site</h2>
      {from.length ? null : <p class="muted">None.</p>}
      {from.map((g) => (
        <section
          class="card dr"
          key={g.name}
          aria-label={`group ${g.name} to ${g.peer}`}
          data-dr-group={g.name}
        >
          <h3>
            {g.name} <span class="muted">to {g.peer}</span>{' '}
            <Badge kind={stateKind(stateOf(g))}>{stateOf(g)}</Badge>
          </h3>
          <p class="muted">VMs {g.vms?.join(', ')}</p>
          <Form
            id={`migrate-${g.name}`}
            submit={`Migrate ${g.name} to ${g.peer}`}
            danger={`Migrate group ${g.name} to ${g.peer}? Its VMs (${g.vms?.join(', ') ?? ''}) are shut down here, the last writes are drained and verified, and they start at ${g.peer}; they are down meanwhile and afterwards run there, replicating back here.`}
            fields={[
              {
                name: 'grace',
                label: 'Seconds each guest has to power off',
                check: 'seconds',
                placeholder: '60',
              },
            ]}
            onSubmit={async (f) =>
              toJob(
                await post<Job>(
                  `/dr/groups/${enc(g.name)}/migrate`,
                  f.grace ? { graceSeconds: Number(f.grace) } : {},
                ),
              )
            }
          />
          <Failback g={g} />
        </section>
      ))}
      <h2>Business services</h2>
      {services.length ? (
        <Table cols={['service', 'tiers (start order)', 'actions']}>
          {services.map((s) => (
            <tr key={s.name}>
              <th scope="row">{s.name}</th>
              <td>{s.tiers.map((t, i) => `${i + 1}: ${t.join(', ')}`).join('; ')}</td>
              <td class="row">
                <Action
                  label="Start"
                  run={async () => toJob(await post<Job>(`/services/${enc(s.name)}/start`))}
                />
                <Action
                  label="Stop"
                  confirm={`Stop business service ${s.name}? Its VMs here are shut down, the last tier first.`}
                  run={async () => toJob(await post<Job>(`/services/${enc(s.name)}/stop`, {}))}
                />
                <Action
                  label="Delete"
                  confirm={`Delete business service ${s.name}, here and at its peers? Its groups stay and replicate; they are no longer started and recovered in its order.`}
                  run={() => del(`/services/${enc(s.name)}`)}
                />
              </td>
            </tr>
          ))}
        </Table>
      ) : (
        <p class="muted">No business service.</p>
      )}
      <Form
        id="service-create"
        submit="Create service"
        fields={[
          { name: 'name', label: 'Service name', required: true, check: 'name' },
          {
            name: 'tiers',
            label: 'Tiers: groups, tiers separated by ";"',
            required: true,
            placeholder: 'db; app, web',
            check: (v) =>
              v
                .split(';')
                .map((t) => list(t))
                .some((t) => !t.length)
                ? 'every tier names at least one group'
                : checkValueNames(v.replace(/;/g, ',')),
          },
        ]}
        onSubmit={(f) =>
          post('/services', {
            name: f.name,
            tiers: (f.tiers ?? '').split(';').map((t) => list(t)),
          })
        }
      />
    </div>
  );
}

const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
const checkValueNames = (v: string) => {
  const bad = list(v).filter((n) => !NAME.test(n));
  return bad.length ? `not a group name: ${bad.join(', ')}` : undefined;
};

function Failback({ g }: { g: ReplicationGroup }) {
  return (
    <Action
      label={`Fail ${g.name} back`}
      confirm={`Fail group ${g.name} back to its original site? What differs is resynchronised, then its VMs are shut down here and started there: they are down meanwhile, and writes made here after the final checkpoint would be lost if the guests do not stop in time.`}
      run={async () => toJob(await post<Job>(`/dr/groups/${enc(g.name)}/failback`, {}))}
    />
  );
}

// ---- plans -------------------------------------------------------------------------------------

export function describeStep(s: PlanStep): string {
  switch (s.kind) {
    case 'wait':
      return `wait for an operator: ${s.message ?? ''}`;
    case 'script':
      return `script ${s.path ?? ''}`;
    case 'delay':
      return `delay ${s.seconds ?? 0} s`;
    default:
      return `${s.kind} ${s.target ?? ''}`;
  }
}

export function Plans() {
  const gen = useLive();
  const d = useLoad(async () => Promise.all([get<Plan[]>('/plans'), get<PlanRun[]>('/plan-runs')]), [gen]);
  if (!d.data) return <Loading error={d.error} />;
  const [plans, runs] = d.data;
  return (
    <div>
      <h1>Plans</h1>
      {plans.length ? (
        <Table cols={['plan', 'steps', 'actions']}>
          {plans.map((p) => (
            <tr key={p.name} data-plan={p.name}>
              <th scope="row">{p.name}</th>
              <td>
                <ol class="steps">
                  {p.steps.map((s, i) => (
                    <li key={i}>{describeStep(s)}</li>
                  ))}
                </ol>
              </td>
              <td class="row">
                <Action
                  label={`Run ${p.name}`}
                  kind="primary"
                  run={async () => {
                    const j = await post<Job>(`/plans/${enc(p.name)}/run`);
                    const r = (await get<PlanRun[]>(`/plan-runs?plan=${enc(p.name)}`)).find(
                      (x) => x.job === j.id,
                    );
                    go(`/plan-runs/${enc(r?.id ?? j.id)}`);
                  }}
                />
                <Action
                  label={`Delete ${p.name}`}
                  confirm={`Delete plan ${p.name}? Its ${p.steps.length} steps are gone; its past runs stay listed.`}
                  run={() => del(`/plans/${enc(p.name)}`)}
                />
              </td>
            </tr>
          ))}
        </Table>
      ) : (
        <p class="muted">No plan.</p>
      )}
      <h2>Runs</h2>
      {runs.length ? (
        <Table cols={['run', 'plan', 'state', 'steps done', 'started']}>
          {runs.map((r) => (
            <tr key={r.id}>
              <td>
                <a href={`/plan-runs/${enc(r.id)}`}>{r.id.slice(0, 8)}</a>
              </td>
              <td>{r.plan}</td>
              <td>
                <Badge kind={runKind(r.state)}>{r.state}</Badge>
              </td>
              <td>
                {r.nextStep} of {r.steps.length}
              </td>
              <td>{time(r.startedAt)}</td>
            </tr>
          ))}
        </Table>
      ) : (
        <p class="muted">No run yet.</p>
      )}
      <h2>Define a plan</h2>
      <Form
        id="plan-create"
        submit="Create plan"
        fields={[
          { name: 'name', label: 'Plan name', required: true, check: 'name' },
          {
            name: 'steps',
            label: 'Steps (JSON array, docs/dr.md)',
            type: 'textarea',
            required: true,
            placeholder:
              '[{"kind": "rehearse", "target": "g1"}, {"kind": "wait", "message": "check the app"}, {"kind": "cleanup", "target": "g1"}]',
            check: (v) => {
              try {
                const a = JSON.parse(v) as unknown;
                return Array.isArray(a) && a.length
                  ? undefined
                  : 'the steps are a JSON array of at least one step';
              } catch (e) {
                return `not JSON: ${e instanceof Error ? e.message : String(e)}`;
              }
            },
          },
        ]}
        onSubmit={(f) => post('/plans', { name: f.name, steps: JSON.parse(f.steps ?? '[]') as unknown })}
      />
    </div>
  );
}

const runKind = (s: string) =>
  s === 'succeeded'
    ? 'succeeded'
    : s === 'failed'
      ? 'failed'
      : s === 'waiting'
        ? 'warning'
        : s === 'aborted'
          ? 'cancelled'
          : 'running';

/** A plan run: its steps with the one running (or waiting for an operator) now, live. */
export function PlanRunPage({ id }: { id: string }) {
  const gen = useLive();
  const d = useLoad(async () => {
    // A run's id, or the id of its job (the first job of a run is not named like the run).
    const r = (await get<PlanRun[]>('/plan-runs')).find((x) => x.id === id || x.job === id);
    if (!r) throw new Error(`no plan run ${id}`);
    return r;
  }, [id, gen]);
  const run = d.data;
  const jobId = run?.job ?? '';
  useEffect(() => void (jobId && followLog(jobId)), [jobId]);
  const fetched = useLoad(async () => (jobId ? get<Job>(`/jobs/${enc(jobId)}`) : undefined), [jobId]);
  if (!run) return <Loading error={d.error} />;
  const job = jobs.get(jobId) ?? fetched.data;
  const running = job?.state === 'running';
  const phase = job?.progress.phase ?? '';
  const waiting = running && phase.startsWith('waiting');
  // While the job runs its progress says which step it is on (or the run's record, when that
  // was read later); after, the run's record does.
  const current = running ? Math.max(job.progress.doneBytes, run.nextStep) : run.nextStep;
  const report = (
    job?.result as
      { steps?: { step: number; outcome: string; seconds: number; detail?: string }[] } | undefined
  )?.steps;
  const stepState = (i: number) => {
    if (run.state === 'succeeded' && !running) return 'done';
    if (i < current) return 'done';
    if (i > current) return 'pending';
    if (running) return waiting ? 'waiting' : 'running';
    return run.state === 'failed' ? 'failed' : 'pending';
  };
  const overall = running ? (waiting ? 'waiting' : 'running') : run.state;
  const lines = logs.get(jobId) ?? [];
  return (
    <div>
      <h1>
        Plan {run.plan} <Badge kind={runKind(overall)}>{overall}</Badge>
      </h1>
      <p class="muted">
        run {run.id}, started {time(run.startedAt)}
        {job ? `, by ${job.actor}` : ''}
      </p>
      <p class="muted" data-phase={phase}>
        {running
          ? `step ${Math.min(current + 1, run.steps.length)} of ${run.steps.length}${waiting ? ', waiting for an operator' : ''}`
          : `${run.nextStep} of ${run.steps.length} steps done`}
      </p>
      <ol class="plan-steps" aria-label="steps">
        {run.steps.map((s, i) => {
          const st = stepState(i);
          const r = report?.find((x) => x.step === i + 1);
          return (
            <li key={i} data-step={i + 1} data-state={st} class={`step ${st}`}>
              <Badge
                kind={
                  st === 'done' ? 'succeeded' : st === 'pending' ? 'info' : st === 'waiting' ? 'warning' : st
                }
              >
                {st}
              </Badge>{' '}
              {describeStep(s)}
              {r ? (
                <span class="muted">
                  {' '}
                  — {r.seconds.toFixed(1)} s{r.detail ? `, ${r.detail}` : ''}
                </span>
              ) : null}
              {st === 'waiting' ? (
                <div class="wait">
                  <p role="status">
                    Waiting for an operator: <strong>{s.message}</strong>
                  </p>
                  <Action
                    label="Resume"
                    kind="primary"
                    run={async () => {
                      const j = await post<Job>(`/jobs/${enc(jobId)}/resume`);
                      jobs.set(j.id, j);
                    }}
                  />
                </div>
              ) : null}
            </li>
          );
        })}
      </ol>
      {run.error && !running ? (
        <p class="error" role="alert">
          {run.error}
        </p>
      ) : null}
      <div class="row">
        {running ? (
          <Action
            label="Cancel run"
            confirm={`Cancel the run of plan ${run.plan}? The step running now (${describeStep(run.steps[current] ?? { kind: '?' })}) is stopped where it is; the steps after it do not run.`}
            run={() => post(`/jobs/${enc(jobId)}/cancel`)}
          />
        ) : run.state === 'failed' ? (
          <>
            <Action
              label="Retry from the failed step"
              kind="primary"
              run={async () => {
                await post<Job>(`/plan-runs/${enc(run.id)}/retry`);
              }}
            />
            <Action
              label="Abort run"
              confirm={`Abort the run of plan ${run.plan}? It cannot be retried afterwards; steps ${current + 1} to ${run.steps.length} do not run.`}
              run={() => post(`/plan-runs/${enc(run.id)}/abort`)}
            />
          </>
        ) : null}
      </div>
      <h2>Log</h2>
      <pre class="log" tabIndex={0} aria-label="plan run log">
        {lines.map(
          (l) =>
            `${l.time.slice(11, 19)} ${l.level === 'info' ? '' : `${l.level.toUpperCase()} `}${l.message}\n`,
        )}
      </pre>
    </div>
  );
}

// ---- policies ----------------------------------------------------------------------------------

function policySummary(p: Policy): string {
  const every = (t?: { cron?: string; everySeconds?: number }) =>
    t?.cron ? `cron ${t.cron}` : t?.everySeconds ? `every ${t.everySeconds} s` : 'on demand';
  const parts: string[] = [];
  if (p.requires.length) parts.push(`pools with ${p.requires.join(', ')}`);
  if (p.snapshot) parts.push(`snapshots ${every(p.snapshot)}`);
  if (p.backup) parts.push(`backups to ${p.backup.repo} ${every(p.backup)}`);
  if (p.verify) parts.push(`verify ${every(p.verify)}`);
  if (p.replication) parts.push(`replication to ${p.replication.to}, RPO ${p.replication.rpoSeconds} s`);
  return parts.join('; ') || 'nothing required';
}

export function Policies() {
  const gen = useLive();
  const d = useLoad(
    async () => Promise.all([get<Policy[]>('/policies'), get<Compliance[]>('/policy-compliance')]),
    [gen],
  );
  if (!d.data) return <Loading error={d.error} />;
  const [policies, compliance] = d.data;
  return (
    <div>
      <h1>Policies</h1>
      {policies.length ? (
        <Table cols={['policy', 'requires', 'assigned to', 'actions']}>
          {policies.map((p) => {
            const of = compliance.filter((c) => c.policy === p.name);
            return (
              <tr key={p.name}>
                <th scope="row">{p.name}</th>
                <td>{policySummary(p)}</td>
                <td>{of.map((c) => `${c.kind} ${c.object}`).join(', ') || '–'}</td>
                <td>
                  <Action
                    label={`Delete ${p.name}`}
                    confirm={`Delete policy ${p.name}? Its schedules end${of.length ? ` (it is assigned to ${of.map((c) => c.object).join(', ')}: unassign first)` : ''}; the backups and snapshots made stay.`}
                    run={() => del(`/policies/${enc(p.name)}`)}
                  />
                </td>
              </tr>
            );
          })}
        </Table>
      ) : (
        <p class="muted">No policy.</p>
      )}
      <h2>Compliance</h2>
      {compliance.length ? (
        <Table class="compliance" cols={['object', 'policy', 'compliance', 'actions']}>
          {compliance.map((c) => (
            <tr key={`${c.kind}:${c.object}`} data-object={c.object}>
              <td>
                {c.kind} {c.kind === 'vm' ? <a href={`/vms/${enc(c.object)}`}>{c.object}</a> : c.object}
              </td>
              <td>{c.policy}</td>
              <td>
                <Badge kind={c.compliant ? 'protected' : 'not-compliant'}>
                  {c.compliant ? 'compliant' : 'not compliant'}
                </Badge>
                {c.reasons.length ? (
                  <ul class="reasons">
                    {c.reasons.map((r) => (
                      <li key={r.code + r.message}>
                        <code>{r.code}</code> {r.message}
                      </li>
                    ))}
                  </ul>
                ) : null}
              </td>
              <td class="row">
                {c.kind === 'vm' && !c.compliant ? (
                  <Action
                    label={`Remediate ${c.object}`}
                    kind="primary"
                    run={async () => toJob(await post<Job>(`/vms/${enc(c.object)}/remediate`))}
                  />
                ) : null}
                <Action
                  label={`Unassign ${c.object}`}
                  confirm={`Unassign policy ${c.policy} from ${c.kind} ${c.object}? Its schedules for ${c.object} end: no more snapshots or backups are taken by it.`}
                  run={() => post('/policy-assignments/remove', { [c.kind]: c.object })}
                />
              </td>
            </tr>
          ))}
        </Table>
      ) : (
        <p class="muted">No policy is assigned.</p>
      )}
      <h2>Assign a policy</h2>
      <Form
        id="assign"
        submit="Assign"
        fields={[
          { name: 'policy', label: 'Policy', type: 'select', options: policies.map((p) => p.name) },
          { name: 'kind', label: 'To a', type: 'select', options: ['vm', 'volume'] },
          { name: 'object', label: 'VM or volume name', required: true, check: 'name' },
        ]}
        onSubmit={(f) => post(`/policies/${enc(f.policy ?? '')}/assign`, { [f.kind ?? 'vm']: f.object })}
      />
      <h2>Define a policy</h2>
      <Form
        id="policy-create"
        submit="Create policy"
        fields={[
          { name: 'name', label: 'Policy name', required: true, check: 'name' },
          { name: 'requires', label: 'Pool capabilities (e.g. snapshot, tier=ssd)' },
          {
            name: 'backupRepo',
            label: 'Back up into (repository directory)',
            check: (v) => (v.startsWith('/') ? undefined : 'the repository is a directory: an absolute path'),
          },
          { name: 'backupEvery', label: 'Back up every (seconds)', check: 'integer' },
          { name: 'backupCron', label: 'or back up at (cron expression)', placeholder: '0 2 * * *' },
          { name: 'replicateTo', label: 'Replicate to site', check: 'name' },
          { name: 'rpo', label: 'RPO in seconds', check: 'seconds' },
        ]}
        onSubmit={(f) =>
          post('/policies', {
            name: f.name,
            requires: list(f.requires),
            ...(f.backupRepo
              ? {
                  backup: {
                    repo: f.backupRepo,
                    ...(f.backupEvery ? { everySeconds: Number(f.backupEvery) } : {}),
                    ...(f.backupCron ? { cron: f.backupCron } : {}),
                  },
                }
              : {}),
            ...(f.replicateTo ? { replication: { to: f.replicateTo, rpoSeconds: Number(f.rpo || 15) } } : {}),
          })
        }
      />
    </div>
  );
}
