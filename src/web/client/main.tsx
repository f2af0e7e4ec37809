// The console's shell: the session (sign-in, sign-out), the navigation and the router. Paths are
// the page's own (/vms/NAME, /jobs/ID …); the daemon answers every one of them with this page.
import { render } from 'preact';
import { useEffect, useState } from 'preact/hooks';
import { ApiError, call, get, useSession, type Session } from './api.js';
import { connect, connected, disconnect, useLive } from './live.js';
import {
  Dashboard,
  Events,
  JobPage,
  Jobs,
  Pools,
  Repositories,
  VmPage,
  Vms,
  VolumePage,
  Volumes,
  go,
} from './pages.js';
import { Dr, PlanRunPage, Plans, Policies, Replication, ReplicationGroupPage } from './pages-dr.js';

const NAV: [string, string][] = [
  ['/', 'Dashboard'],
  ['/vms', 'VMs'],
  ['/volumes', 'Volumes'],
  ['/pools', 'Pools'],
  ['/repositories', 'Repositories'],
  ['/replication', 'Replication'],
  ['/dr', 'DR'],
  ['/plans', 'Plans'],
  ['/policies', 'Policies'],
  ['/jobs', 'Jobs'],
  ['/events', 'Events'],
];

function route(path: string) {
  const parts = path.split('/').filter(Boolean).map(decodeURIComponent);
  const [top, name] = parts;
  if (!top) return <Dashboard />;
  if (top === 'vms') return name ? <VmPage name={name} key={name} /> : <Vms />;
  if (top === 'volumes') return name ? <VolumePage name={name} key={name} /> : <Volumes />;
  if (top === 'pools') return <Pools />;
  if (top === 'repositories') return <Repositories />;
  if (top === 'jobs') return name ? <JobPage id={name} key={name} /> : <Jobs />;
  if (top === 'events') return <Events />;
  if (top === 'replication') return name ? <ReplicationGroupPage name={name} key={name} /> : <Replication />;
  if (top === 'dr') return <Dr />;
  if (top === 'plans') return <Plans />;
  if (top === 'plan-runs' && name) return <PlanRunPage id={name} key={name} />;
  if (top === 'policies') return <Policies />;
  return <p>No such page: {path}</p>;
}

function Login({ signedIn }: { signedIn: (s: Session) => void }) {
  const [error, setError] = useState('');
  const [busy, setBusy] = useState(false);
  return (
    <main class="login" id="main">
      <h1>Haven</h1>
      <form
        onSubmit={async (e) => {
          e.preventDefault();
          const f = new FormData(e.target as HTMLFormElement);
          setBusy(true);
          setError('');
          try {
            signedIn(
              await call<Session>('POST', '/session', { user: f.get('user'), password: f.get('password') }),
            );
          } catch (err) {
            setError(err instanceof Error ? err.message : String(err));
          } finally {
            setBusy(false);
          }
        }}
      >
        <div class="field">
          <label for="user">User</label>
          <input id="user" name="user" autocomplete="username" required />
        </div>
        <div class="field">
          <label for="password">Password</label>
          <input id="password" name="password" type="password" autocomplete="current-password" required />
        </div>
        <button type="submit" class="primary" disabled={busy}>
          Sign in
        </button>
        {error ? (
          <p class="error" role="alert">
            {error}
          </p>
        ) : null}
      </form>
    </main>
  );
}

function App() {
  const [session, setSession] = useState<Session | null | undefined>(undefined);
  const [path, setPath] = useState(location.pathname);
  useLive();
  const signedOut = () => {
    disconnect();
    setSession(null);
  };
  useSession(session ?? null, signedOut);
  useEffect(() => {
    get<Session>('/session').then(setSession, (e: unknown) => {
      if (e instanceof ApiError && e.status === 401) setSession(null);
      else setSession(null);
    });
    const onPop = () => setPath(location.pathname);
    addEventListener('popstate', onPop);
    // Same-origin links move within the page: no reload, the stream stays.
    const onClick = (e: MouseEvent) => {
      const a = (e.target as Element).closest?.('a');
      if (!a || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || a.target) return;
      const url = new URL(a.href, location.href);
      if (url.origin !== location.origin) return;
      e.preventDefault();
      go(url.pathname);
    };
    addEventListener('click', onClick);
    return () => {
      removeEventListener('popstate', onPop);
      removeEventListener('click', onClick);
    };
  }, []);
  useEffect(() => {
    if (session) void connect();
  }, [session?.user]);
  useEffect(() => {
    const page =
      NAV.find(([p]) => p === path)?.[1] ?? path.split('/').filter(Boolean).map(decodeURIComponent).join(' ');
    document.title = `${page || 'Dashboard'} · Haven`;
    (document.getElementById('main') as HTMLElement | null)?.focus({ preventScroll: true });
  }, [path]);
  if (session === undefined) return <p class="muted">Loading…</p>;
  if (session === null) return <Login signedIn={setSession} />;
  const active = (p: string) => (p === '/' ? path === '/' : path === p || path.startsWith(`${p}/`));
  return (
    <>
      <a
        class="skip"
        href="#main"
        onClick={(e) => (e.preventDefault(), document.getElementById('main')?.focus())}
      >
        Skip to content
      </a>
      <header>
        <span class="brand">Haven</span>
        <nav aria-label="main">
          {NAV.map(([p, label]) => (
            <a key={p} href={p} aria-current={active(p) ? 'page' : undefined}>
              {label}
            </a>
          ))}
        </nav>
        <span class="who">
          <span class={connected ? 'live on' : 'live'} title={connected ? 'live updates' : 'reconnecting'}>
            {connected ? 'live' : 'offline'}
          </span>{' '}
          {session.user} ({session.role}){' '}
          <button
            type="button"
            onClick={async () => {
              await call('DELETE', '/session').catch(() => undefined);
              signedOut();
            }}
          >
            Sign out
          </button>
        </span>
      </header>
      {session.role === 'viewer' ? (
        <p class="notice" role="note">
          You are signed in as a viewer: you may look at everything; the site refuses operations.
        </p>
      ) : null}
      <main id="main" tabIndex={-1}>
        {route(path)}
      </main>
    </>
  );
}

render(<App />, document.getElementById('app')!);
