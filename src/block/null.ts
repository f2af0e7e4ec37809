import {
  DEFAULT_BLOCK_SIZES,
  EXTENT_HOLE,
  EXTENT_ZERO,
  type BlockDevice,
  type BlockSizes,
  type Extent,
} from './device.js';

/** A device that drops every write and reads as zeroes (nbdcopy's `null:`), for measuring a source. */
export class NullDevice implements BlockDevice {
  readonly readOnly = false;
  readonly blockSizes: BlockSizes = { ...DEFAULT_BLOCK_SIZES };
  readonly flushCoversAll = true;
  constructor(readonly size: number) {}
  read(buf: Uint8Array): void {
    buf.fill(0);
  }
  write(): void {}
  flush(): void {}
  trim(): void {}
  writeZeroes(): void {}
  blockStatus(offset: number, length: number): Extent[] {
    return length
      ? [{ offset, length: Math.min(length, this.size - offset), flags: EXTENT_HOLE | EXTENT_ZERO }]
      : [];
  }
  close(): void {}
}
