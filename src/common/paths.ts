import { homedir } from 'node:os';
import { join, resolve } from 'node:path';

/** Where a site keeps its data unless told otherwise: $HAVEN_DATA, else ~/.local/share/haven. */
export function defaultDataDir(): string {
  return resolve(
    process.env.HAVEN_DATA ?? join(process.env.XDG_DATA_HOME ?? join(homedir(), '.local', 'share'), 'haven'),
  );
}
