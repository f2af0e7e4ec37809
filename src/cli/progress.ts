import { bytes } from './args.js';

/** One step of a long operation, as a job or an in-process operation reports it. */
export interface ProgressStep {
  done: number;
  total: number;
  phase?: string;
  /** Bytes per second; computed from the start when absent. */
  rate?: number;
  /** Seconds left; computed from the rate when absent. */
  eta?: number;
}

export interface ProgressView {
  update(p: ProgressStep): void;
  /** Clears the bar (a terminal) or says 100% (plain lines, when it was not said yet). */
  end(): void;
}

/** A terminal redraws its bar at most this often (~5 times a second). */
const TTY_MS = 200;
/** Plain lines: one per tenth of the work, or this often when the work creeps. */
const PLAIN_MS = 10_000;

/**
 * Progress on stderr, never stdout: on a terminal one line redrawn in place (bar, percent, bytes,
 * rate, ETA, phase) and cleared at the end; otherwise a plain line every 10% or 10 s, so logs stay
 * short. With --json only a terminal gets progress (a script reading stdout wants no noise).
 */
export function progressView(label: string, o: { json?: boolean } = {}): ProgressView {
  const out = process.stderr;
  const tty = !!out.isTTY;
  if (o.json && !tty) return { update: () => undefined, end: () => undefined };
  const started = Date.now();
  let lastDraw = 0;
  let lastTenth = -1;
  let drawn = false;
  let last: ProgressStep | undefined;
  let lastPhase: string | undefined;
  const describe = (p: ProgressStep) => {
    const frac = p.total > 0 ? Math.min(p.done / p.total, 1) : 0;
    const secs = (Date.now() - started) / 1000;
    const rate = p.rate ?? (secs > 0.5 ? p.done / secs : 0);
    // A rate over the first few KiB says nothing about the rest ("ETA 19m40s" at 0%): no ETA yet.
    const early = frac < 0.02 && secs < 2;
    const eta = early
      ? undefined
      : (p.eta ?? (rate > 0 && p.total > p.done ? (p.total - p.done) / rate : undefined));
    return { frac, rate, eta, phase: p.phase ?? label };
  };
  return {
    update(p) {
      last = p;
      const now = Date.now();
      const d = describe(p);
      if (tty) {
        if (now - lastDraw < TTY_MS && p.done < p.total) return;
        lastDraw = now;
        drawn = true;
        out.write(`\r${barLine(d.phase, d.frac, p, d.rate, d.eta)}\x1b[K`);
        return;
      }
      if (d.phase !== lastPhase) lastTenth = -1; // a new phase counts its own tenths
      lastPhase = d.phase;
      const tenth = Math.floor(d.frac * 10);
      if (tenth <= lastTenth && now - lastDraw < PLAIN_MS) return;
      lastTenth = tenth;
      lastDraw = now;
      out.write(`haven: ${plainLine(d.phase, d.frac, p, d.rate, d.eta)}\n`);
    },
    end() {
      if (tty) {
        if (drawn) out.write('\r\x1b[K');
        return;
      }
      if (last && lastTenth < 10 && last.total > 0 && last.done >= last.total)
        out.write(`haven: ${plainLine(describe(last).phase, 1, last, describe(last).rate, undefined)}\n`);
    },
  };
}

const pct = (frac: number) => `${Math.floor(frac * 100)}%`;
const rateOf = (rate: number) => (rate > 0 ? `${bytes(Math.round(rate))}/s` : '');
const etaOf = (eta: number | undefined) => (eta === undefined ? '' : `ETA ${duration(eta)}`);

export function barLine(
  phase: string,
  frac: number,
  p: ProgressStep,
  rate: number,
  eta: number | undefined,
): string {
  const width = 24;
  const filled = Math.round(frac * width);
  return [
    `${phase} [${'#'.repeat(filled)}${'-'.repeat(width - filled)}]`,
    pct(frac).padStart(4),
    `${bytes(p.done)}/${bytes(p.total)}`,
    rateOf(rate),
    etaOf(eta),
  ]
    .filter(Boolean)
    .join(' ');
}

function plainLine(
  phase: string,
  frac: number,
  p: ProgressStep,
  rate: number,
  eta: number | undefined,
): string {
  return [`${phase}: ${pct(frac)}, ${bytes(p.done)} of ${bytes(p.total)}`, rateOf(rate), etaOf(eta)]
    .filter(Boolean)
    .join(', ');
}

/** 75 → "1m15s", 3700 → "1h01m", 9 → "9s". */
export function duration(seconds: number): string {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
}
