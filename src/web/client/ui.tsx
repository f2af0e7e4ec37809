// Small pieces every page uses: numbers people read, a progress bar, forms that show the API's
// refusal beside the field it concerns, and buttons that ask before they destroy.
import type { ComponentChildren } from 'preact';
import { useEffect, useRef, useState } from 'preact/hooks';
import { ApiError, type Job } from './api.js';

export function bytes(n: number | undefined): string {
  if (n === undefined || !Number.isFinite(n)) return '–';
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) {
    n /= 1024;
    i++;
  }
  return `${n >= 100 || i === 0 ? n.toFixed(0) : n.toFixed(1)} ${u[i]}`;
}

export const time = (iso: string | undefined) => (iso ? new Date(iso).toLocaleString() : '–');

export function percent(j: Job): number {
  if (j.state === 'succeeded') return 100;
  const { doneBytes, totalBytes } = j.progress;
  return totalBytes > 0 ? Math.min(100, Math.floor((doneBytes / totalBytes) * 100)) : 0;
}

export function Progress({ job }: { job: Job }) {
  const p = percent(job);
  return (
    <span class="progress">
      <progress max={100} value={p} aria-label={`${job.kind} ${job.target}`} />
      <span class="pct" data-pct={p}>
        {p}%
      </span>
      {job.state === 'running' && job.progress.rateBytesPerSecond > 0 ? (
        <span class="muted">
          {' '}
          {bytes(job.progress.rateBytesPerSecond)}/s
          {job.progress.etaSeconds !== undefined ? `, ${Math.ceil(job.progress.etaSeconds)} s left` : ''}
        </span>
      ) : null}
    </span>
  );
}

/** A table whose header row names its columns; the rows are its children. */
export function Table({
  cols,
  children,
  class: className,
}: {
  cols: string[];
  children: ComponentChildren;
  class?: string;
}) {
  return (
    <table class={className}>
      <thead>
        <tr>
          {cols.map((c) => (
            <th scope="col" key={c}>
              {c}
            </th>
          ))}
        </tr>
      </thead>
      <tbody>{children}</tbody>
    </table>
  );
}

export function Badge({ kind, children }: { kind: string; children: ComponentChildren }) {
  return <span class={`badge ${kind}`}>{children}</span>;
}

export function Bar({ used, total, label }: { used: number; total: number; label: string }) {
  const p = total > 0 ? Math.round((used / total) * 100) : 0;
  return (
    <span class="capacity">
      <meter min={0} max={100} value={p} high={85} optimum={10} aria-label={label} />
      <span>
        {bytes(used)} of {bytes(total)} ({p}%)
      </span>
    </span>
  );
}

export interface Field {
  name: string;
  label: string;
  type?: 'text' | 'number' | 'select' | 'checkbox' | 'textarea';
  options?: string[];
  value?: string;
  placeholder?: string;
  help?: string;
  /** Refused before sending when left empty. */
  required?: boolean;
  /** What the value must be, checked before sending (an empty optional field is not checked). */
  check?: Check | ((value: string) => string | undefined);
}

/** The checks a form makes before it sends: the API's own rules, so its refusals are rarer. */
export type Check = 'name' | 'names' | 'bytes' | 'seconds' | 'integer' | 'json';

const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
const nameRule = "1-64 letters, digits, '.', '_' or '-', starting with a letter or digit";

/** Why `value` fails `check`, or undefined. */
export function checkValue(check: Field['check'], value: string): string | undefined {
  if (typeof check === 'function') return check(value);
  const v = value.trim();
  switch (check) {
    case 'name':
      if (v.includes('/')) return `"${v}" is not a name: no "/" (${nameRule})`;
      return NAME.test(v) ? undefined : `"${v}" is not a name: ${nameRule}`;
    case 'names': {
      const bad = v.split(/[\s,]+/).filter((n) => n && !NAME.test(n));
      return bad.length ? `not a name: ${bad.join(', ')} (${nameRule})` : undefined;
    }
    case 'bytes':
      return /^[0-9]+$/.test(v) && Number(v) >= 1 && Number.isSafeInteger(Number(v))
        ? undefined
        : `"${v}" is not a size: a whole number of bytes, at least 1`;
    case 'integer':
      return /^[0-9]+$/.test(v) && Number.isSafeInteger(Number(v))
        ? undefined
        : `"${v}" is not a whole number, 0 or more`;
    case 'seconds':
      return /^[0-9]*\.?[0-9]+$/.test(v) && Number(v) > 0
        ? undefined
        : `"${v}" is not a number of seconds more than 0`;
    case 'json':
      try {
        JSON.parse(v);
        return undefined;
      } catch (e) {
        return `not JSON: ${e instanceof Error ? e.message : String(e)}`;
      }
    default:
      return undefined;
  }
}

/** The fields that may not be sent as typed, with why (beside each field). */
export function invalid(fields: Field[], values: Record<string, string>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const f of fields) {
    const v = values[f.name] ?? '';
    if (f.type === 'select' || f.type === 'checkbox') continue;
    if (!v.trim()) {
      if (f.required) out[f.name] = `${f.label} is required`;
      continue;
    }
    const why = checkValue(f.check, v);
    if (why) out[f.name] = why;
  }
  return out;
}

/**
 * A form whose submit calls the API. What the form can tell is wrong (a required field left
 * empty, a name with "/", a size of -1: `required` and `check` of its fields) is shown beside the
 * field and nothing is sent; the API's refusal of the rest (an unknown pool, a name taken) goes
 * beside the field it names (the API's `field`, e.g. body.sizeBytes, or the field whose value the
 * message quotes), else under the form. What the API refuses is not done.
 */
export function Form({
  id,
  fields,
  submit,
  onSubmit,
  danger,
}: {
  id: string;
  fields: Field[];
  submit: string;
  onSubmit: (values: Record<string, string>) => Promise<unknown>;
  danger?: string;
}) {
  const [typed, setValues] = useState<Record<string, string>>(() =>
    Object.fromEntries(fields.map((f) => [f.name, f.value ?? ''])),
  );
  // A select shows its first option until one is chosen, also when the options came later.
  const values = { ...typed };
  for (const f of fields)
    if (f.type === 'select' && !f.options?.includes(values[f.name] ?? ''))
      values[f.name] = f.options?.[0] ?? '';
  const [errors, setErrors] = useState<Record<string, string>>({});
  const [busy, setBusy] = useState(false);
  const [done, setDone] = useState('');
  const send = async (e: Event) => {
    e.preventDefault();
    setDone('');
    const bad = invalid(fields, values);
    setErrors(bad);
    if (Object.keys(bad).length) {
      document.getElementById(`${id}-${Object.keys(bad)[0]}`)?.focus();
      return;
    }
    if (danger && !(await confirmDialog(danger))) return;
    setBusy(true);
    try {
      await onSubmit(values);
      setDone('done');
    } catch (err) {
      setErrors(errorsFor(err, fields, values));
    } finally {
      setBusy(false);
    }
  };
  return (
    <form id={id} class="form" onSubmit={send} noValidate>
      {fields.map((f) => {
        const fid = `${id}-${f.name}`;
        const err = errors[f.name];
        return (
          <div class="field" key={f.name}>
            <label for={fid}>{f.label}</label>
            {f.type === 'select' ? (
              <select
                id={fid}
                name={f.name}
                value={values[f.name]}
                onChange={(e) => setValues({ ...values, [f.name]: (e.target as HTMLSelectElement).value })}
              >
                {f.options?.map((o) => (
                  <option key={o} value={o}>
                    {o}
                  </option>
                ))}
              </select>
            ) : f.type === 'checkbox' ? (
              <input
                id={fid}
                name={f.name}
                type="checkbox"
                checked={values[f.name] === 'true'}
                onChange={(e) =>
                  setValues({ ...values, [f.name]: String((e.target as HTMLInputElement).checked) })
                }
              />
            ) : f.type === 'textarea' ? (
              <textarea
                id={fid}
                name={f.name}
                rows={6}
                value={values[f.name]}
                placeholder={f.placeholder}
                aria-required={f.required ? 'true' : undefined}
                aria-invalid={err ? 'true' : undefined}
                aria-describedby={describedBy(fid, f, err)}
                onInput={(e) => setValues({ ...values, [f.name]: (e.target as HTMLTextAreaElement).value })}
              />
            ) : (
              <input
                id={fid}
                name={f.name}
                type="text"
                inputMode={f.type === 'number' ? 'numeric' : undefined}
                value={values[f.name]}
                placeholder={f.placeholder}
                aria-required={f.required ? 'true' : undefined}
                aria-invalid={err ? 'true' : undefined}
                aria-describedby={describedBy(fid, f, err)}
                onInput={(e) => setValues({ ...values, [f.name]: (e.target as HTMLInputElement).value })}
              />
            )}
            {f.help ? (
              <small class="muted" id={`${fid}-help`}>
                {f.help}
              </small>
            ) : null}
            {err ? (
              <span class="error" id={`${fid}-error`} role="alert">
                {err}
              </span>
            ) : null}
          </div>
        );
      })}
      <div class="actions">
        <button type="submit" class={danger ? 'danger' : 'primary'} disabled={busy}>
          {submit}
        </button>
        {errors._ ? (
          <span class="error" role="alert">
            {errors._}
          </span>
        ) : null}
        {done && !busy ? (
          <span class="muted" role="status">
            {done}
          </span>
        ) : null}
      </div>
    </form>
  );
}

const describedBy = (fid: string, f: Field, err: string | undefined) =>
  [f.help ? `${fid}-help` : '', err ? `${fid}-error` : ''].filter(Boolean).join(' ') || undefined;

function errorsFor(err: unknown, fields: Field[], values: Record<string, string>): Record<string, string> {
  const message = err instanceof Error ? err.message : String(err);
  if (err instanceof ApiError) {
    // body.sizeBytes → the field sending it (size → sizeBytes is the form's own mapping).
    const leaf = err.field?.split('.').pop();
    const byField = fields.find((f) => f.name === leaf || `${f.name}Bytes` === leaf);
    if (byField) return { [byField.name]: message };
    // Else the field whose value (or one of its words: a list of names) the message quotes, the
    // longest quote winning; a name field last, as a message names what it was about.
    const quoted = (f: Field) =>
      Math.max(
        0,
        ...(values[f.name] ?? '')
          .split(/[\s,]+/)
          .filter((w) => w.length >= 2 && new RegExp(`(^|[^\\w.-])${escape(w)}($|[^\\w-])`).test(message))
          .map((w) => w.length),
      );
    for (const pass of [fields.filter((f) => f.name !== 'name'), fields]) {
      const best = pass.reduce<[Field | undefined, number]>(
        (b, f) => (quoted(f) > b[1] ? [f, quoted(f)] : b),
        [undefined, 0],
      )[0];
      if (best) return { [best.name]: message };
    }
  }
  return { _: message };
}

const escape = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

/** Asks in a modal dialog; resolves true when the user confirms. */
export function confirmDialog(text: string): Promise<boolean> {
  return new Promise((resolve) => {
    const d = document.createElement('dialog');
    d.className = 'confirm';
    d.setAttribute('aria-labelledby', 'confirm-text');
    const p = document.createElement('p');
    p.id = 'confirm-text';
    p.textContent = text;
    const no = document.createElement('button');
    no.textContent = 'Cancel';
    no.type = 'button';
    const yes = document.createElement('button');
    yes.textContent = 'Confirm';
    yes.type = 'button';
    yes.className = 'danger';
    const row = document.createElement('div');
    row.className = 'actions';
    row.append(no, yes);
    d.append(p, row);
    document.body.append(d);
    const end = (v: boolean) => {
      d.close();
      d.remove();
      resolve(v);
    };
    no.onclick = () => end(false);
    yes.onclick = () => end(true);
    d.addEventListener('cancel', () => end(false));
    d.showModal();
    no.focus();
  });
}

/** A button that calls the API; a refusal is shown beside it. */
export function Action({
  label,
  run,
  confirm,
  kind,
}: {
  label: string;
  run: () => Promise<unknown>;
  confirm?: string;
  kind?: string;
}) {
  const [error, setError] = useState('');
  const [busy, setBusy] = useState(false);
  return (
    <span class="action">
      <button
        type="button"
        class={kind ?? (confirm ? 'danger' : '')}
        disabled={busy}
        onClick={async () => {
          if (confirm && !(await confirmDialog(confirm))) return;
          setBusy(true);
          setError('');
          try {
            await run();
          } catch (e) {
            setError(e instanceof Error ? e.message : String(e));
          } finally {
            setBusy(false);
          }
        }}
      >
        {label}
      </button>
      {error ? (
        <span class="error" role="alert">
          {error}
        </span>
      ) : null}
    </span>
  );
}

/** Loads with `load` whenever one of `deps` changes; shows the refusal when it fails. */
export function useLoad<T>(load: () => Promise<T>, deps: unknown[]): { data?: T; error?: string } {
  const [state, set] = useState<{ data?: T; error?: string }>({});
  const seq = useRef(0);
  useEffect(() => {
    const n = ++seq.current;
    load().then(
      (data) => n === seq.current && set({ data }),
      (e: unknown) =>
        n === seq.current && set((s) => ({ ...s, error: e instanceof Error ? e.message : String(e) })),
    );
  }, deps);
  return state;
}

export function Loading({ error }: { error?: string | undefined }) {
  return error ? (
    <p class="error" role="alert">
      {error}
    </p>
  ) : (
    <p class="muted">Loading…</p>
  );
}
