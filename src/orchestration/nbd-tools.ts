/**
 * The NBD tools the faces offer without a site (`haven nbd serve`, `info`, `copy`), by module
 * rather than through the layer's index: `haven nbd serve` would otherwise load SQLite, zstd and
 * the rest of the site (~10 MiB of RSS) for nothing.
 */
export { serveImage, type ServeImageOptions, type ServingImage } from '../nbd/serve-device.js';
