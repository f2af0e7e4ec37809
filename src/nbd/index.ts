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
export {
  nbdInfo,
  formatNbdInfo,
  human,
  type NbdInfoOptions,
  type NbdInfoResult,
  type MapEntry,
} from './info.js';
export { nbdCopy, copyEndpoints, type NbdCopyOptions } from './copy.js';
export {
  openSource,
  openDestination,
  type Endpoint,
  type EndpointOptions,
  type DestinationOptions,
} from './endpoints.js';
export {
  serveImage,
  serveDevice,
  parseHostPort,
  DEFAULT_NBD_PORT,
  type ServeImageOptions,
  type ServingImage,
} from './serve-device.js';
