import pino, { type Logger } from 'pino';

export type { Logger };

/**
 * The structured logger: JSON lines on stderr, level from HAVEN_LOG_LEVEL (default "info").
 * Secrets never go into log fields; `redact` is a second line of defence for the usual names.
 */
export const rootLogger: Logger = pino(
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

export function logger(component: string): Logger {
  return rootLogger.child({ component });
}
