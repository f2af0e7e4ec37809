import { writeSync } from 'node:fs';
import { createRequire } from 'node:module';
import type { DestinationStream, Logger } from 'pino';
import { prettyLogLine } from './log-format.js';

export type { Logger };

let root: Logger | undefined;
let defaultLevel = 'info';

/**
 * The level when HAVEN_LOG_LEVEL does not say: a one-shot command that opens a site in its own
 * process (the CLI with --data) keeps the site's info lines off the user's terminal ("warn").
 */
export function setDefaultLogLevel(level: string): void {
  defaultLevel = level;
  if (root && process.env.HAVEN_LOG_LEVEL === undefined) root.level = level;
}

/**
 * The structured logger on stderr, level from HAVEN_LOG_LEVEL (default "info", see
 * setDefaultLogLevel): human-readable
 * lines when stderr is a terminal, JSON lines (for journald, log shippers, tests) when it is not;
 * HAVEN_LOG_FORMAT=json|pretty decides instead.
 * Secrets never go into log fields; `redact` is a second line of defence for the usual names.
 * pino is loaded on the first log call, not at import: short-lived processes (the CLI, worker
 * threads) that never log do not pay for it.
 */
export function rootLogger(): Logger {
  if (!root) {
    const pino = createRequire(import.meta.url)('pino') as typeof import('pino');
    root = pino.pino(
      {
        name: 'haven',
        level: process.env.HAVEN_LOG_LEVEL ?? defaultLevel,
        redact: {
          paths: ['token', '*.token', 'passphrase', '*.passphrase', 'key', '*.key', 'authorization'],
          censor: '[secret]',
        },
      },
      stderrLines(logFormat() === 'pretty'),
    );
  }
  return root;
}

export function logFormat(): 'json' | 'pretty' {
  const f = process.env.HAVEN_LOG_FORMAT;
  if (f === 'json' || f === 'pretty') return f;
  return process.stderr.isTTY ? 'pretty' : 'json';
}

/**
 * Log lines to stderr, written synchronously (nothing logged is lost when the process exits).
 * A terminal that hung up (EIO) or a reader that went away (EPIPE) loses the log, never the
 * process: a daemon stopping on SIGHUP must still get to remove its api.json.
 */
function stderrLines(pretty: boolean): DestinationStream {
  const colour = pretty && !!process.stderr.isTTY && !process.env.NO_COLOR;
  return {
    write: (line: string) => writeAll(2, pretty ? prettyLogLine(line.replace(/\n$/, ''), colour) : line),
  };
}

const pause = new Int32Array(new SharedArrayBuffer(4));

function writeAll(fd: number, text: string): void {
  let buf = Buffer.from(text);
  for (let waits = 0; buf.length > 0;) {
    try {
      buf = buf.subarray(writeSync(fd, buf));
    } catch (err) {
      // A non-blocking pipe that is full: wait for the reader a little, then give the line up.
      if ((err as NodeJS.ErrnoException).code !== 'EAGAIN' || ++waits > 1000) return;
      Atomics.wait(pause, 0, 0, 1);
    }
  }
}

/** A component's logger, created when it first logs. */
export function logger(component: string): Logger {
  let real: Logger | undefined;
  return new Proxy({} as Logger, {
    get(_, prop) {
      real ??= rootLogger().child({ component });
      const v = Reflect.get(real, prop, real) as unknown;
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(real) : v;
    },
  });
}

/** A component's logger created now (for libraries that inspect the object they are given). */
export function eagerLogger(component: string): Logger {
  return rootLogger().child({ component });
}
