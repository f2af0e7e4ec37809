import type { Command } from 'commander';
import { registerNbd } from './nbd.js';
import {
  registerBitmap,
  registerPool,
  registerSnapshot,
  registerStorage,
  registerVolume,
} from './storage.js';

/** A command family adds its subcommands to the program. One line per family below. */
export type Register = (program: Command) => void;

export const commandFamilies: Register[] = [
  registerPool,
  registerVolume,
  registerSnapshot,
  registerBitmap,
  registerStorage,
  registerNbd,
];
