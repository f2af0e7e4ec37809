/**
 * The layers below the CLI, loaded when a command runs rather than when `haven` starts: they pull
 * in native addons, SQLite, zstd and the HTTP server, which cost a few hundred milliseconds that
 * commands talking to a daemon do not need.
 */
export type Orchestration = typeof import('../orchestration/index.js');
export const orchestration = (): Promise<Orchestration> => import('../orchestration/index.js');
export const apiServer = () => import('../api/daemon.js');
/** Only what `haven nbd serve` needs: the whole orchestration layer would cost it ~10 MiB of RSS. */
export const serveImageTool = () => import('../orchestration/nbd-tools.js');
/** A site opened in this process for a command with --data. */
export const localSiteModule = () => import('../api/local.js');
