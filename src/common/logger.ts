import { createRequire } from 'node:module';
import type { Logger } from 'pino';

export type { Logger };

let root: Logger | undefined;

/**
 * The structured logger: JSON lines on stderr, level from HAVEN_LOG_LEVEL (default "info").
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
        level: process.env.HAVEN_LOG_LEVEL ?? 'info',
        redact: {
          paths: ['token', '*.token', 'passphrase', '*.passphrase', 'key', '*.key', 'authorization'],
          censor: '[secret]',
        },
      },
      pino.destination(2),
    );
  }
  return root;
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
