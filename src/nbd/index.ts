export * as protocol from './protocol.js';
export * from './client/index.js';
export * from './server/index.js';
