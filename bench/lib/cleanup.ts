/**
 * Last-resort cleanup when the run is interrupted (Ctrl-C, SIGTERM): benchmarks register
 * synchronous actions (kill a server, remove a temp folder) and unregister them when their own
 * `finally` has done the work.
 */
const actions = new Set<() => void>();
let installed = false;

function runAll(): void {
  for (const a of [...actions].reverse()) {
    try {
      a();
    } catch {
      // best effort: keep cleaning
    }
  }
  actions.clear();
}

export function onInterrupt(action: () => void): () => void {
  if (!installed) {
    installed = true;
    for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const)
      process.once(sig, () => {
        process.stderr.write(`\n${sig}: stopping servers and removing temporary files\n`);
        runAll();
        process.exit(130);
      });
  }
  actions.add(action);
  return () => actions.delete(action);
}
