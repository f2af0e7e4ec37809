import type { Command } from 'commander';

/** A command family adds its subcommands to the program. One line per family below. */
export type Register = (program: Command) => void;

export const commandFamilies: Register[] = [];
