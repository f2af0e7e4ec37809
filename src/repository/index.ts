/**
 * Layer 4 — the backup repository: content-addressed chunks, indexes, manifests, verify, retention, garbage collection (issue 6).
 * Nothing is built here yet; the folder holds the place the design gives it (docs/architecture.md).
 */
export {};
