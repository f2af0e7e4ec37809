export * from './device.js';
export { openRawFile, RawFileDevice, type RawFileOptions } from './raw-file.js';
export { nativeIo, EOPNOTSUPP, RECV, type NativeIo } from './native.js';
export { DirtyBitmap } from './dirty-bitmap.js';
export { OverlayDevice } from './overlay.js';
export { ThrottledDevice, type ThrottleLimits } from './throttle.js';
export { PassThroughDevice } from './pass-through.js';
export { ReadWatchDevice } from './read-watch.js';
export { NullDevice } from './null.js';
export * from './extents.js';
export {
  copyBlocks,
  runBounded,
  zeroRuns,
  type CopyOptions,
  type CopyProgress,
  type CopyResult,
} from './copy.js';
