export * from './uri.js';
export {
  negotiate,
  listExports,
  type TlsCredentials,
  type ExportEntry,
  type Negotiated,
} from './handshake.js';
export { NbdConnection } from './connection.js';
export * from './device.js';
