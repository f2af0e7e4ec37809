/**
 * Layer 8 — the REST API face: thin, calls the orchestration layer only (issue 5).
 * Nothing is built here yet; the folder holds the place the design gives it (docs/architecture.md).
 */
export {};
