import { defaultDataDir } from '../common/index.js';
import { StorageService } from './service.js';

/** Opens a site's storage for one administrative operation (the data directory is locked meanwhile). */
export function openStorage(dataDir = defaultDataDir()): StorageService {
  return StorageService.open(dataDir);
}

/** Runs `fn` on a site's storage opened for it, and closes it afterwards. */
export async function withStorage<T>(
  dataDir: string | undefined,
  fn: (s: StorageService) => T | Promise<T>,
): Promise<T> {
  const s = openStorage(dataDir);
  try {
    return await fn(s);
  } finally {
    s.close();
  }
}
