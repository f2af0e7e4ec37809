/**
 * pino's JSON lines made readable for a person at a terminal (pino-pretty's job, in a few lines):
 * `12:04:31.207 INFO  daemon: site daemon serving site=paris url=http://127.0.0.1:8710`.
 * Anything that is not a pino line passes through unchanged.
 */
const LEVELS: Record<number, string> = {
  10: 'TRACE',
  20: 'DEBUG',
  30: 'INFO ',
  40: 'WARN ',
  50: 'ERROR',
  60: 'FATAL',
};
const COLOURS: Record<number, string> = { 10: '90', 20: '90', 30: '32', 40: '33', 50: '31', 60: '35' };
/** pino's own fields, shown in the line's head or not at all. */
const HEAD = new Set(['level', 'time', 'pid', 'hostname', 'name', 'component', 'msg', 'v']);

export function prettyLogLine(line: string, colour = false): string {
  let rec: Record<string, unknown>;
  try {
    rec = JSON.parse(line) as Record<string, unknown>;
  } catch {
    return line;
  }
  if (typeof rec !== 'object' || rec === null || typeof rec.level !== 'number') return line;
  const time = typeof rec.time === 'number' ? new Date(rec.time).toISOString().slice(11, 23) : '';
  const level = LEVELS[rec.level] ?? String(rec.level);
  const tag = colour ? `\x1b[${COLOURS[rec.level] ?? '0'}m${level}\x1b[0m` : level;
  const who = typeof rec.component === 'string' ? `${rec.component}: ` : '';
  const rest = Object.entries(rec)
    .filter(
      ([k, v]) => !HEAD.has(k) && !(k === 'err' && typeof (v as { stack?: unknown })?.stack === 'string'),
    )
    .map(([k, v]) => `${k}=${typeof v === 'string' && !/\s/.test(v) ? v : JSON.stringify(v)}`);
  const msg = typeof rec.msg === 'string' ? rec.msg : '';
  // An error's stack goes below the line, indented, as a person reads it.
  const err = rec.err as { stack?: unknown } | undefined;
  const stack = typeof err?.stack === 'string' ? `\n    ${err.stack.split('\n').join('\n    ')}` : '';
  return `${[time, tag, `${who}${msg}`, ...rest].filter((x) => x !== '').join(' ')}${stack}\n`;
}
