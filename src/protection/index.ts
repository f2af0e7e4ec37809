/**
 * Layer 5 — backup and restore with transports, instant recovery, live migration, replication (issues 6, 7).
 * Nothing is built here yet; the folder holds the place the design gives it (docs/architecture.md).
 */
export {};
