export * as protocol from './protocol.js';
export * from './client/index.js';
