import { buildProgram } from './program.js';
import { reportError } from './output.js';

buildProgram()
  .parseAsync(process.argv)
  .catch((err: unknown) => {
    reportError(err);
    process.exitCode = 1;
  });
