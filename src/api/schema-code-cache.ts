import { createHash } from 'node:crypto';
import { closeSync, fstatSync, mkdirSync, openSync, readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { writeFileAtomic } from '../common/index.js';

/**
 * Generated validator and serializer code of the API's schemas, kept per user (like a compiler
 * cache) so that a command with `--data` loads two small functions instead of Ajv and
 * fast-json-stringify (~100 ms). An entry is named by the hash of everything that shaped it
 * (schema, options, compiler versions), so a changed schema or upgrade never reads an old one.
 * Only files of this user that nobody else may write are run; any fault means "not cached".
 */
export interface SchemaCodeCache {
  get(key: string): string | undefined;
  put(key: string, code: string): void;
}

/** $XDG_CACHE_HOME/haven/api-schemas, else ~/.cache/haven/api-schemas. */
export function userSchemaCodeCache(): SchemaCodeCache {
  const base = process.env.XDG_CACHE_HOME || join(homedir(), '.cache');
  return schemaCodeCache(join(base, 'haven', 'api-schemas'));
}

export function schemaCodeCache(dir: string): SchemaCodeCache {
  const file = (key: string) => join(dir, `${key}.cjs`);
  return {
    get(key) {
      let fd: number | undefined;
      try {
        fd = openSync(file(key), 'r');
        const st = fstatSync(fd);
        if (st.uid !== process.getuid?.() || (st.mode & 0o022) !== 0) return undefined;
        return readFileSync(fd, 'utf8');
      } catch {
        return undefined;
      } finally {
        if (fd !== undefined) closeSync(fd);
      }
    },
    put(key, code) {
      try {
        mkdirSync(dir, { recursive: true, mode: 0o700 });
        writeFileAtomic(file(key), code);
      } catch {
        // an unwritable cache only costs the next command the compile again
      }
    },
  };
}

/** The cache key of generated code: a hash of its inputs (JSON values). */
export function codeKey(...parts: unknown[]): string {
  return createHash('sha256').update(JSON.stringify(parts)).digest('hex').slice(0, 40);
}
