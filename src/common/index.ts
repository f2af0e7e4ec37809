export * from './errors.js';
export * from './logger.js';
export * from './maybe.js';
export * from './atomic-file.js';
export * from './dir-lock.js';
export { defaultDataDir } from './paths.js';
export * from './staged-file.js';
export * from './clock.js';
