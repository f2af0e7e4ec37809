/**
 * Haven's typed errors. Every error a user can meet names what is wrong in its message and
 * carries a stable `code`, so faces can map it (CLI exit status, HTTP status) without parsing text.
 */
export type HavenErrorCode =
  | 'INVALID_ARGUMENT' // bad input from a user or a peer
  | 'NOT_FOUND'
  | 'CONFLICT' // the operation clashes with the current state
  | 'READ_ONLY'
  | 'OUT_OF_RANGE' // an offset or length beyond what a device holds or Haven can represent
  | 'NO_SPACE'
  | 'UNSUPPORTED'
  | 'PROTOCOL' // a peer broke a protocol
  | 'IO' // an operating-system I/O error
  | 'CORRUPT' // stored data failed verification
  | 'TIMEOUT'
  | 'CANCELLED'
  | 'UNAUTHENTICATED' // no valid credentials
  | 'PERMISSION_DENIED' // valid credentials, but their role may not do this
  | 'INTERNAL';

const CODES = new Set<string>([
  'INVALID_ARGUMENT',
  'NOT_FOUND',
  'CONFLICT',
  'READ_ONLY',
  'OUT_OF_RANGE',
  'NO_SPACE',
  'UNSUPPORTED',
  'PROTOCOL',
  'IO',
  'CORRUPT',
  'TIMEOUT',
  'CANCELLED',
  'UNAUTHENTICATED',
  'PERMISSION_DENIED',
  'INTERNAL',
] satisfies HavenErrorCode[]);

/** A code that came over a wire (a peer's answer) is one of ours. */
export const isHavenErrorCode = (c: string): c is HavenErrorCode => CODES.has(c);

export class HavenError extends Error {
  readonly code: HavenErrorCode;
  constructor(code: HavenErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = 'HavenError';
  }
}

export const invalidArgument = (msg: string) => new HavenError('INVALID_ARGUMENT', msg);
export const notFound = (msg: string) => new HavenError('NOT_FOUND', msg);
export const conflict = (msg: string) => new HavenError('CONFLICT', msg);
export const outOfRange = (msg: string) => new HavenError('OUT_OF_RANGE', msg);
export const unsupported = (msg: string) => new HavenError('UNSUPPORTED', msg);
export const protocolError = (msg: string) => new HavenError('PROTOCOL', msg);
export const unauthenticated = (msg: string) => new HavenError('UNAUTHENTICATED', msg);
export const permissionDenied = (msg: string) => new HavenError('PERMISSION_DENIED', msg);

/** Maps Node's system errors (ENOSPC, EIO, …) to HavenError with the path or operation named. */
export function fromSystemError(err: unknown, what: string): HavenError {
  if (err instanceof HavenError) return err;
  const e = err as NodeJS.ErrnoException;
  const code: HavenErrorCode =
    e?.code === 'ENOSPC' || e?.code === 'EDQUOT'
      ? 'NO_SPACE'
      : e?.code === 'ENOENT'
        ? 'NOT_FOUND'
        : e?.code === 'EROFS' || e?.code === 'EACCES' || e?.code === 'EPERM'
          ? 'READ_ONLY'
          : 'IO';
  return new HavenError(code, `${what}: ${e?.message ?? String(err)}`, { cause: err });
}

export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
