/**
 * Layer 8 — the web console face (later).
 * Nothing is built here yet; the folder holds the place the design gives it (docs/architecture.md).
 */
export {};
