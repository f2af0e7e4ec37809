import { Command, CommanderError } from 'commander';
import { readFileSync } from 'node:fs';
import { commandFamilies } from './commands/index.js';
import { usageStatus } from './output.js';

const pkg = JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as {
  version: string;
};

/**
 * The `haven` command. Each command family lives in its own file under commands/ and registers
 * itself here; the CLI holds no logic of its own (it calls the orchestration layer).
 */
export function buildProgram(): Command {
  const program = new Command('haven')
    .description('Haven protects QEMU/KVM virtual machines: volumes, backup, recovery, replication, DR.')
    .version(pkg.version)
    .showSuggestionAfterError(true)
    .exitOverride(onCommanderExit)
    .configureOutput({ outputError: (str, write) => write(str.split('\n')[0] + '\n') });
  for (const register of commandFamilies) register(program);
  // Every subcommand inherits the one-line error handling.
  const visit = (cmd: Command) => {
    cmd.exitOverride((err) => onCommanderExit(err, cmd)).showSuggestionAfterError(true);
    cmd.configureOutput({ outputError: (str, write) => write(str.split('\n')[0] + '\n') });
    cmd.commands.forEach(visit);
  };
  program.commands.forEach(visit);
  return program;
}

function onCommanderExit(err: CommanderError, cmd?: Command): never {
  // --help and --version end with exit 0; every usage error with a non-zero exit (the command's own, if it has one).
  process.exit(cmd ? usageStatus(cmd, err.exitCode) : err.exitCode);
}
