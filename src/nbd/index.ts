export * as protocol from './protocol.js';
export * from './client/index.js';
export * from './server/index.js';
export { startQemuNbd } from './qemu-nbd.js';
export {
  IMAGE_FORMATS,
  checkReadable,
  imageInfo,
  inspectImage,
  type ImageInfo,
  type InspectedImage,
} from './image-file.js';
export { readPskFile } from './psk.js';
