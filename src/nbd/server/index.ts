export { NbdServer, type NbdServerOptions, type NbdTlsOptions, type ListenAddress } from './server.js';
export type { NbdExport } from './handshake.js';
