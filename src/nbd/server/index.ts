export {
  NbdServer,
  DEFAULT_HANDSHAKE_TIMEOUT_MS,
  type NbdServerOptions,
  type NbdTlsOptions,
  type ListenAddress,
} from './server.js';
export type { NbdExport } from './handshake.js';
