export {
  NbdServer,
  DEFAULT_HANDSHAKE_TIMEOUT_MS,
  DEFAULT_MAX_BYTES_IN_FLIGHT,
  type NbdMemoryStats,
  type NbdServerOptions,
  type NbdRequestObserver,
  type NbdRequestRecorder,
  type NbdTlsOptions,
  type ListenAddress,
} from './server.js';
export type { NbdExport } from './handshake.js';
