/**
 * Layer 8 — the web console face. Its code is the browser's, in client/ (preact, bundled by
 * scripts/build-console.mjs into dist/console/, which the daemon serves at `/`): a static client
 * of the public REST API and its event stream, holding no logic the API lacks (docs/console.md).
 */
export {};
