export * as protocol from './protocol.js';
export * from './client/index.js';
export * from './server/index.js';
export { startQemuNbd, imageInfo, IMAGE_FORMATS, type ImageInfo } from './qemu-nbd.js';
export { readPskFile } from './psk.js';
